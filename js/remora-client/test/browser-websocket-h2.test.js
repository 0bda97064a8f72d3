// WebSocket over HTTP/2 in a real browser: Chromium, holding an h2
// connection to `remora serve` over TLS, opens its WebSocket as a stream of
// that connection (RFC 8441 extended CONNECT, which Remora advertises), and
// the echo comes back from the server the affinity cookie pins.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, browserSkipReason, freePort, remoraBin, until } from './support/demo.js';

const skip = browserSkipReason() ?? false;
const children = [];
let dir;
let port;
let log = '';
let browser;

function run(args, onStderr) {
  const child = spawn(remoraBin(), args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, REMORA_LOG: 'info' } });
  child.stderr.on('data', (d) => onStderr?.(d));
  children.push(child);
  return child;
}

function listening(p) {
  return new Promise((resolve) => {
    const s = net.connect(p, '127.0.0.1', () => { s.destroy(); resolve(true); });
    s.on('error', () => resolve(false));
  });
}

/** GET `path` over TLS without checking the (self-signed) certificate. */
function get(p) {
  return new Promise((resolve, reject) => {
    https.get({ host: '127.0.0.1', port, path: p, servername: 'localhost', rejectUnauthorized: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    }).on('error', reject);
  });
}

before(async () => {
  if (skip) return;
  dir = mkdtempSync(path.join(os.tmpdir(), 'remora-ws-h2-'));
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'), '-days', '1',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost',
  ], { stdio: 'ignore' });
  const backends = [];
  for (const name of ['b1', 'b2']) {
    const p = await freePort();
    run(['test-backend', '--name', name, '--listen', `127.0.0.1:${p}`]);
    backends.push({ name, p });
  }
  port = await freePort();
  const admin = await freePort();
  writeFileSync(path.join(dir, 'remora.toml'), `[admin]
listen = "127.0.0.1:${admin}"
token = "t"

[[listener]]
name = "web"
listen = "127.0.0.1:${port}"
pool = "app"
tls = { cert = "cert.pem", key = "key.pem" }

[[pool]]
name = "app"
[pool.affinity]
mode = "cookie"
[pool.health]
path = "/health"
interval = "200ms"
rise = 1
${backends.map((b) => `[[pool.server]]\nname = "${b.name}"\naddress = "127.0.0.1:${b.p}"\n`).join('')}`);
  for (const b of backends) await until(() => listening(b.p), 10000, `backend ${b.name}`);
  run(['serve', '--config', path.join(dir, 'remora.toml')], (d) => { log += d; });
  await until(async () => (await get('/whoami')) === 200, 20000, 'remora serve over TLS');
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: [...CHROMIUM_ARGS, '--ignore-certificate-errors'] });
});

after(async () => {
  await browser?.close();
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('Chromium opens a WebSocket over HTTP/2 through remora, pinned by the affinity cookie', { skip }, async () => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const resp = await page.goto(`https://localhost:${port}/whoami`);
  assert.equal(resp.status(), 200);
  const pinned = (await page.textContent('body')).trim();
  assert.ok(['b1', 'b2'].includes(pinned), pinned);
  const replies = await page.evaluate(() => new Promise((resolve, reject) => {
    const ws = new WebSocket(`wss://${location.host}/ws`);
    const got = [];
    ws.onopen = () => { ws.send('one'); ws.send('two'); };
    ws.onmessage = (e) => { got.push(e.data); if (got.length === 2) { ws.close(); resolve(got); } };
    ws.onerror = () => reject(new Error('WebSocket failed'));
  }));
  assert.deepEqual(replies, [`${pinned}:one`, `${pinned}:two`]);
  // The handshake came as an HTTP/2 extended CONNECT, not an HTTP/1.1
  // upgrade on a connection of its own.
  const plain = () => log.replace(/\x1b\[[0-9;]*m/g, '');
  await until(() => /method=CONNECT path="\/ws" .*status=200/.test(plain()), 5000, 'the CONNECT in the access log');
  assert.doesNotMatch(plain(), /method=GET path="\/ws"/);
  await context.close();
});
