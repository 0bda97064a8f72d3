// Our replica extensions with the real npm clients (`cometd` +
// `cometd-nodejs-client`, and `faye`) against two `remora demo-app` shops
// with separate memory stores: the client receives its session's replicas on
// /service/ext/session, and a new handshake on the other shop presents the
// newest one as ext.session, which restores the session there.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { adapt } from 'cometd-nodejs-client';
import { CometD } from 'cometd';
import faye from 'faye';
import { ReplicaStore, MemoryStorage } from '../src/replica.js';
import { cometdReplicaExtension, fayeReplicaExtension } from '../src/extensions.js';
import { freePort, remoraBin, until } from './support/demo.js';

adapt();

const shops = [];
let keys;

async function startShop(name) {
  const port = await freePort();
  const child = spawn(remoraBin(), ['demo-app', '--name', name, '--port', String(port), '--keys', keys], { stdio: 'ignore' });
  const url = `http://127.0.0.1:${port}`;
  await until(async () => (await fetch(`${url}/health`)).ok, 10000, `${name} to listen`);
  const shop = { name, url, child };
  shops.push(shop);
  return shop;
}

before(() => {
  const dir = mkdtempSync(path.join(tmpdir(), 'remora-replica-interop-'));
  keys = path.join(dir, 'remora.keys');
  writeFileSync(keys, execFileSync(remoraBin(), ['keygen']));
});
after(() => { for (const s of shops) s.child.kill('SIGKILL'); });

/** Adds an item over HTTP; returns {cookie, seq, items}. */
async function add(shop, sku, cookie) {
  const res = await fetch(`${shop.url}/api/cart/items`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...(cookie ? { Cookie: cookie } : {}) },
    body: JSON.stringify({ sku, qty: 1 }),
  });
  assert.equal(res.status, 200);
  const set = res.headers.get('set-cookie');
  return {
    cookie: cookie ?? set.split(';')[0],
    seq: Number(res.headers.get('session-replica-seq')),
    items: (await res.json()).items.map((i) => i.sku),
  };
}

async function cartOn(shop, cookie) {
  const res = await fetch(`${shop.url}/api/cart`, { headers: { Cookie: cookie } });
  return res.json();
}

function cometd(url, cookie, store) {
  const c = new CometD();
  for (const t of c.getTransportTypes()) if (t !== 'long-polling') c.unregisterTransport(t);
  c.configure({ url: `${url}/cometd`, logLevel: 'warn', requestHeaders: { Cookie: cookie }, maxBackoff: 500 });
  c.registerExtension('remora-replica', cometdReplicaExtension(store));
  return c;
}

test('CometD client: receives replicas, and its handshake restores the session on another shop', async () => {
  const [a, b] = [await startShop('cometd-a'), await startShop('cometd-b')];
  const store = new ReplicaStore({ origin: 'cometd', storage: new MemoryStorage() });
  const first = await add(a, 'tea');
  const ca = cometd(a.url, first.cookie, store);
  await new Promise((resolve, reject) => ca.handshake((r) => (r.successful ? resolve() : reject(new Error(JSON.stringify(r))))));
  // A change over HTTP is pushed to this session's Bayeux client.
  const second = await add(a, 'coffee', first.cookie);
  await until(() => store.get()?.seq === second.seq, 10000, 'the replica pushed on /service/ext/session');
  await new Promise((r) => ca.disconnect(r));
  // Shop A is gone; a handshake on B presents the replica.
  a.child.kill('SIGKILL');
  const cb = cometd(b.url, first.cookie, store);
  await new Promise((resolve, reject) => cb.handshake((r) => (r.successful ? resolve() : reject(new Error(JSON.stringify(r))))));
  const cart = await until(async () => {
    const c = await cartOn(b, first.cookie);
    return c.items.length === 2 ? c : null;
  }, 10000, 'the session restored on B from the handshake');
  assert.deepEqual(cart.items.map((i) => i.sku), ['tea', 'coffee']);
  assert.equal(cart.restored, true);
  await new Promise((r) => cb.disconnect(r));
});

test('Faye client: receives replicas, and its handshake restores the session on another shop', async () => {
  const [a, b] = [await startShop('faye-a'), await startShop('faye-b')];
  const store = new ReplicaStore({ origin: 'faye', storage: new MemoryStorage() });
  const first = await add(a, 'tea');
  const client = (url) => {
    const c = new faye.Client(`${url}/cometd`, { timeout: 5, retry: 0.2 });
    c.disable('websocket');
    c.disable('eventsource');
    c.setHeader('Cookie', first.cookie);
    c.addExtension(fayeReplicaExtension(store));
    return c;
  };
  const fa = client(a.url);
  // Faye handshakes lazily: a subscription starts it.
  await fa.subscribe('/demo/cluster', () => {});
  const second = await add(a, 'cocoa', first.cookie);
  await until(() => store.get()?.seq === second.seq, 10000, 'the replica pushed on /service/ext/session');
  await fa.disconnect();
  a.child.kill('SIGKILL');
  const fb = client(b.url);
  await fb.subscribe('/demo/cluster', () => {});
  const cart = await until(async () => {
    const c = await cartOn(b, first.cookie);
    return c.items.length === 2 ? c : null;
  }, 10000, 'the session restored on B from the handshake');
  assert.deepEqual(cart.items.map((i) => i.sku), ['tea', 'cocoa']);
  await fb.disconnect();
});
