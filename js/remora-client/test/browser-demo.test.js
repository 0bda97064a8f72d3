// The demo in a real browser: a cart that survives crashed servers, page
// reloads, and a tampered replica (headless Chromium via playwright-core).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, browserSkipReason, startDemo, serverDown } from './support/demo.js';

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
