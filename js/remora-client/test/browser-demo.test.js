// The demo in a real browser: a cart that survives crashed servers, page
// reloads, and a tampered replica (headless Chromium via playwright-core).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, allReady, browserSkipReason, startDemo, serverDown } from './support/demo.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const shots = path.resolve(here, '../../../target/screenshots');
const skip = browserSkipReason() ?? false;
let demo;
let browser;

before(async () => {
  if (skip) return;
  mkdirSync(shots, { recursive: true });
  demo = await startDemo(['--backends', '3']);
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close();
  await demo?.stop();
});

const count = (page) => page.getByTestId('cart-count').textContent();
const server = (page) => page.getByTestId('server').textContent();
async function waitCount(page, n) {
  await page.waitForFunction((want) => document.querySelector('[data-testid=cart-count]').textContent === String(want), n, { timeout: 15000 });
}
async function crash(page) {
  const victim = await server(page);
  await page.getByTestId('crash').click();
  await serverDown(demo.url, victim);
  return victim;
}

test('the cart survives a crashed server, a reload, and a second crash', { skip }, async () => {
  const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${demo.url}/`);
  for (const sku of ['tea', 'coffee', 'cocoa']) {
    const before = Number(await count(page));
    await page.getByTestId(`add-${sku}`).click();
    await waitCount(page, before + 1);
  }
  assert.equal(await count(page), '3');
  await page.locator('#transport').filter({ hasText: 'Bayeux: websocket' }).waitFor({ timeout: 10000 });
  await page.screenshot({ path: path.join(shots, 'demo-before.png') });

  const first = await crash(page);
  await page.getByTestId('add-honey').click();
  await waitCount(page, 4);
  const second = await server(page);
  assert.notEqual(second, first, 'another server answered');
  assert.equal(await page.getByTestId('restored-banner').isVisible(), true, 'the restore banner shows');
  const items = await page.getByTestId('cart').locator('li').allTextContents();
  assert.equal(items.length, 4, items.join('|'));
  await page.screenshot({ path: path.join(shots, 'demo-after.png') });

  await page.reload();
  await waitCount(page, 4);
  assert.equal(await server(page), second, 'affinity holds after the reload');

  await crash(page);
  await page.reload();
  await waitCount(page, 4);
  assert.notEqual(await server(page), second);
  assert.deepEqual(errors, []);
  await page.close();
});

test('a page reload right after the crash lands elsewhere with the cart intact', { skip }, async () => {
  const page = await browser.newPage();
  await page.goto(`${demo.url}/`);
  await page.getByTestId('add-scone').click();
  await waitCount(page, 1);
  await page.getByTestId('add-tea').click();
  await waitCount(page, 2);
  const victim = await crash(page);
  await page.reload();
  await waitCount(page, 2);
  assert.notEqual(await server(page), victim);
  await page.close();
});

test('a tampered replica in sessionStorage leads to a fresh, empty cart and no error', { skip }, async () => {
  const page = await browser.newPage();
  await page.goto(`${demo.url}/`);
  await page.getByTestId('add-cocoa').click();
  await waitCount(page, 1);
  await page.evaluate(() => {
    const key = Object.keys(sessionStorage).find((k) => k.startsWith('remora.replica:'));
    const entry = JSON.parse(sessionStorage.getItem(key));
    const r = entry.replica;
    const i = Math.floor(r.length / 2);
    entry.replica = r.slice(0, i) + (r[i] === 'A' ? 'B' : 'A') + r.slice(i + 1);
    sessionStorage.setItem(key, JSON.stringify(entry));
  });
  await crash(page);
  await page.reload();
  await page.waitForFunction(() => document.querySelector('[data-testid=server]').textContent !== '…');
  assert.equal(await count(page), '0', 'fresh, empty cart');
  assert.equal(await page.locator('#error').isVisible(), false, 'no error shown');
  await page.close();
});

test('drain: this client stays on its server, the chart shows the drain', { skip }, async () => {
  await allReady(demo.url);
  const page = await browser.newPage();
  await page.goto(`${demo.url}/`);
  await page.getByTestId('add-tea').click();
  await waitCount(page, 1);
  const mine = await server(page);
  await page.getByRole('button', { name: 'Drain this server' }).click();
  await page.waitForFunction((name) => [...document.querySelectorAll('.bar.drain .name')].some((n) => n.textContent === name), mine, { timeout: 10000 });
  await page.getByTestId('add-coffee').click();
  await waitCount(page, 2);
  assert.equal(await server(page), mine, 'a pinned client keeps its drained server');
  const res = await fetch(`${demo.url}/api/cluster`);
  assert.ok((await res.json()).servers.some((s) => s.name === mine && s.state === 'drain'));
  await page.getByRole('button', { name: 'Resume this server' }).click();
  await allReady(demo.url);
  await page.close();
});

test('looks clean at phone width: no horizontal scrolling', { skip }, async () => {
  await allReady(demo.url);
  const page = await browser.newPage({ viewport: { width: 375, height: 740 }, deviceScaleFactor: 1 });
  await page.goto(`${demo.url}/`);
  await page.getByTestId('add-honey').click();
  await waitCount(page, 1);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `page is ${overflow}px wider than the phone`);
  await page.screenshot({ path: path.join(shots, 'demo-phone.png'), fullPage: true });
  await page.close();
});

test('warns before the idle timeout and "stay signed in" keeps the session', { skip }, async () => {
  const short = await startDemo(['--backends', '1', '--idle-timeout', '62s']);
  try {
    const page = await browser.newPage();
    await page.goto(`${short.url}/`);
    await page.getByTestId('add-tea').click();
    await waitCount(page, 1);
    // 62 s of idle time: the warning is due one minute before, about 2 s from now.
    await page.getByTestId('idle-warning').waitFor({ state: 'visible', timeout: 10000 });
    const left = Number(await page.locator('#idle-seconds').textContent());
    assert.ok(left > 0 && left <= 60, `seconds left: ${left}`);
    await page.getByRole('button', { name: 'Stay signed in' }).click();
    await page.getByTestId('idle-warning').waitFor({ state: 'hidden', timeout: 5000 });
    assert.equal(await count(page), '1', 'the session is still there');
    await page.close();
  } finally {
    await short.stop();
  }
});

test('sign-in survives a crash; checkout needs CSRF and cannot be replayed', { skip }, async () => {
  await allReady(demo.url);
  const page = await browser.newPage();
  await page.goto(`${demo.url}/`);
  await page.locator('#user').fill('ann');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#who').filter({ hasText: 'ann' }).waitFor();
  await page.getByTestId('add-cake').or(page.getByTestId('add-scone')).first().click();
  await waitCount(page, 1);
  await crash(page);
  await page.reload();
  await waitCount(page, 1);
  assert.equal(await page.locator('#who').textContent(), 'ann', 'still signed in on another server');
  // Without the CSRF token: refused.
  const noCsrf = await page.evaluate(async () => (await fetch('/api/checkout', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' })).status);
  assert.equal(noCsrf, 403);
  // Capture the order token the page will use, then check out through the page.
  const token = await page.evaluate(async () => (await (await fetch('/api/cart')).json()).order_token);
  await page.getByRole('button', { name: 'Check out' }).click();
  await page.locator('#order').filter({ hasText: 'placed' }).waitFor();
  await waitCount(page, 0);
  // Replaying the same order (same token, valid CSRF): refused.
  const replay = await page.evaluate(async (orderToken) => {
    const csrf = (await (await fetch('/api/csrf')).json()).token;
    await fetch('/api/cart/items', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"sku":"tea","qty":1}' });
    const r = await fetch('/api/checkout', { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf }, body: JSON.stringify({ order_token: orderToken }) });
    return r.status;
  }, token);
  assert.equal(replay, 409, 'a replayed checkout is refused');
  await page.close();
});
