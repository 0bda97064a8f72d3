// The demo shop's page. It talks to the shop through the replica-carrying
// fetch wrapper of js/remora-client, and keeps a Bayeux client connected for
// live cluster updates and for replicas pushed on /service/ext/session.
import { ReplicaStore } from '/assets/remora-client/replica.js';
import { createFetch } from '/assets/remora-client/fetch.js';

const CATALOG = [
  { sku: 'tea', name: 'Green tea', price: '4.50' },
  { sku: 'coffee', name: 'Coffee beans', price: '9.90' },
  { sku: 'cocoa', name: 'Cocoa', price: '6.20' },
  { sku: 'scone', name: 'Scone', price: '2.80' },
  { sku: 'honey', name: 'Honey', price: '7.40' },
];

const $ = (id) => document.getElementById(id);
const store = new ReplicaStore();
const rfetch = createFetch({ store });
let lastServer = null;
let idleTimer = null;
let csrfToken = null;
let orderToken = null;

async function api(path, { method = 'GET', body, headers = {} } = {}) {
  const init = { method, headers: { ...headers }, credentials: 'same-origin' };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  const res = await rfetch(path, init);
  scheduleIdleWarning(res.headers.get('Session-Expires'));
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: text }; }
  if (!res.ok) throw Object.assign(new Error(data?.error ?? `HTTP ${res.status}`), { status: res.status, data });
  return data;
}

function showError(err) {
  const el = $('error');
  if (!err) { el.hidden = true; return; }
  el.textContent = err.message ?? String(err);
  el.hidden = false;
}

function render(cart) {
  if (!cart) return;
  const server = $('server');
  server.textContent = cart.server;
  if (lastServer && lastServer !== cart.server) {
    server.classList.add('changed');
    setTimeout(() => server.classList.remove('changed'), 2500);
  }
  lastServer = cart.server;
  if (cart.restored) {
    $('restored-server').textContent = cart.server;
    $('restored').hidden = false;
  }
  const list = $('cart');
  list.replaceChildren(...cart.items.map((item) => {
    const li = document.createElement('li');
    li.dataset.sku = item.sku;
    const label = document.createElement('span');
    const product = CATALOG.find((p) => p.sku === item.sku);
    label.textContent = `${product ? product.name : item.sku} × ${item.qty}`;
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.textContent = 'Remove';
    remove.addEventListener('click', () => act(() => api(`/api/cart/items/${encodeURIComponent(item.sku)}`, { method: 'DELETE' })));
    li.append(label, remove);
    return li;
  }));
  const count = cart.items.reduce((n, i) => n + i.qty, 0);
  $('cart-count').textContent = String(count);
  $('cart-empty').hidden = cart.items.length > 0;
  $('checkout').disabled = cart.items.length === 0;
  orderToken = cart.order_token ?? null;
  $('login').hidden = Boolean(cart.user);
  $('signed-in').hidden = !cart.user;
  $('who').textContent = cart.user ?? '';
}

async function act(fn) {
  try {
    showError(null);
    render(await fn());
    pollCluster();
  } catch (err) {
    showError(err);
  }
}

function scheduleIdleWarning(header) {
  const secs = Number(header);
  if (!header || !Number.isFinite(secs)) return;
  clearTimeout(idleTimer);
  $('idle-warning').hidden = true;
  const warnIn = Math.max(0, secs - 60) * 1000;
  idleTimer = setTimeout(() => {
    let left = Math.min(60, secs);
    $('idle-seconds').textContent = String(left);
    $('idle-warning').hidden = false;
    const tick = setInterval(() => {
      left -= 1;
      $('idle-seconds').textContent = String(Math.max(0, left));
      if (left <= 0 || $('idle-warning').hidden) clearInterval(tick);
    }, 1000);
  }, warnIn);
}

function renderCluster(cluster) {
  if (!cluster || !Array.isArray(cluster.servers)) return;
  const mine = cluster.servers.find((s) => s.name === lastServer);
  const draining = mine?.state === 'drain';
  $('drain').dataset.mode = draining ? 'resume' : 'drain';
  $('drain').textContent = draining ? 'Resume this server' : 'Drain this server';
  const max = Math.max(1, ...cluster.servers.map((s) => s.pinned ?? 0));
  $('chart').replaceChildren(...cluster.servers.map((s) => {
    const row = document.createElement('div');
    row.className = `bar ${s.healthy ? '' : 'down'} ${s.state === 'drain' ? 'drain' : ''} ${s.name === lastServer ? 'me' : ''}`;
    row.title = `${s.name}: ${s.state}${s.healthy ? '' : ', down'}, ${s.pinned ?? 0} pinned clients`;
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = s.name;
    const track = document.createElement('div');
    track.className = 'track';
    const fill = document.createElement('div');
    fill.className = 'fill';
    fill.style.width = `${Math.round(((s.pinned ?? 0) / max) * 100)}%`;
    track.append(fill);
    const n = document.createElement('span');
    n.textContent = s.healthy ? String(s.pinned ?? 0) : 'down';
    row.append(name, track, n);
    return row;
  }));
}

async function pollCluster() {
  try { renderCluster(await api('/api/cluster')); } catch { /* the chart is best effort */ }
}

async function connectBayeux() {
  // Live cluster updates and replica pushes; without Bayeux the page polls.
  try {
    const { connectShopBayeux } = await import('/assets/shop-bayeux.js');
    const ok = await connectShopBayeux({ store, onCluster: renderCluster, onTransport: (t) => { $('transport').textContent = `Bayeux: ${t}`; } });
    if (ok) return;
  } catch { /* fall back to polling */ }
  setInterval(pollCluster, 2000);
}

for (const p of CATALOG) {
  const li = document.createElement('li');
  const label = document.createElement('span');
  label.innerHTML = `${p.name}<span class="price">€${p.price}</span>`;
  const add = document.createElement('button');
  add.type = 'button';
  add.textContent = 'Add';
  add.dataset.testid = `add-${p.sku}`;
  add.setAttribute('data-testid', `add-${p.sku}`);
  add.addEventListener('click', () => act(() => api('/api/cart/items', { method: 'POST', body: { sku: p.sku, qty: 1 } })));
  li.append(label, add);
  $('catalog').append(li);
}

$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  act(() => api('/api/login', { method: 'POST', body: { user: $('user').value } }));
});
$('logout').addEventListener('click', () => act(() => api('/api/logout', { method: 'POST' })));
$('stay').addEventListener('click', () => { $('idle-warning').hidden = true; act(() => api('/api/keepalive', { method: 'POST' })); });
$('checkout').addEventListener('click', () => act(async () => {
  if (!csrfToken) csrfToken = (await api('/api/csrf')).token;
  const done = await api('/api/checkout', { method: 'POST', body: { order_token: orderToken }, headers: { 'X-CSRF-Token': csrfToken } });
  $('order').textContent = `Order ${done.order} placed by ${done.server}.`;
  return done.cart;
}));
$('crash').addEventListener('click', async () => {
  try { await rfetch('/api/crash', { method: 'POST' }); } catch { /* the server died mid-answer: expected */ }
  $('order').textContent = `Server ${lastServer} crashed. Keep shopping.`;
  pollCluster();
});
$('drain').addEventListener('click', () => act(async () => {
  const resume = $('drain').dataset.mode === 'resume';
  await api(resume ? '/api/resume' : '/api/drain', { method: 'POST' });
  return null;
}));

act(() => api('/api/cart'));
pollCluster();
connectBayeux();
