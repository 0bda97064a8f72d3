// Our Bayeux client (src/bayeux.js) against the real `remora bayeux` server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import { BayeuxClient, channelMatches } from '../src/bayeux.js';
import { ReplicaStore, MemoryStorage } from '../src/replica.js';
import { freePort, remoraBin, until } from './support/demo.js';

let port;
let server;
const dir = mkdtempSync(path.join(tmpdir(), 'remora-bayeux-client-'));
const config = path.join(dir, 'bayeux.toml');
writeFileSync(config, '[services]\necho = true\nhandshake_ext = true\n');

async function startServer() {
  const child = spawn(remoraBin(), ['bayeux', '--listen', `127.0.0.1:${port}`, '--config', config], { stdio: 'ignore' });
  await until(async () => (await fetch(`http://127.0.0.1:${port}/health`)).ok, 10000, 'remora bayeux to listen');
  return child;
}

function stop(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', resolve);
    child.kill('SIGKILL');
  });
}

before(async () => {
  port = await freePort();
  server = await startServer();
});
after(async () => { await stop(server); });

const url = () => `http://127.0.0.1:${port}/cometd`;

test('channel patterns: * is one segment, ** any depth', () => {
  assert.ok(channelMatches('/a/*', '/a/b'));
  assert.ok(!channelMatches('/a/*', '/a/b/c'));
  assert.ok(channelMatches('/a/**', '/a/b/c'));
  assert.ok(!channelMatches('/a/**', '/b/c'));
  assert.ok(channelMatches('/a/b', '/a/b'));
});

for (const transport of ['long-polling', 'websocket']) {
  test(`publish and receive across two clients, with wildcards (${transport})`, async () => {
    const opts = { transports: [transport], WebSocket };
    const a = new BayeuxClient(url(), opts);
    const b = new BayeuxClient(url(), opts);
    await a.connect();
    await b.connect();
    assert.equal(a.transport, transport);
    const got = [];
    const deep = [];
    await a.subscribe('/chat/*', (m) => got.push(m.data.text));
    await a.subscribe('/chat/**', (m) => deep.push(m.channel));
    await until(() => a.state === 'connected', 5000, 'connected');
    await b.publish('/chat/room', { text: 'hello' });
    await b.publish('/chat/room/sub', { text: 'deeper' });
    await until(() => got.length === 1 && deep.length === 2, 5000, 'delivery');
    assert.deepEqual(got, ['hello']);
    assert.deepEqual(deep.sort(), ['/chat/room', '/chat/room/sub']);
    const echo = await b.request('/service/echo', { n: 42 });
    assert.deepEqual(echo.data, { n: 42 });
    await a.disconnect();
    await b.disconnect();
  });
}

test('re-handshakes after a server restart and presents the replica in ext.session', async () => {
  const replicas = new ReplicaStore({ origin: 'bayeux-test', storage: new MemoryStorage() });
  replicas.offer('sealed-replica-blob', 7);
  const client = new BayeuxClient(url(), { transports: ['long-polling'], replicas, maxBackoff: 300 });
  const handshakes = [];
  client.addListener('/meta/handshake', (m) => handshakes.push(m.successful));
  await client.connect();
  const first = client.clientId;
  const seen = await client.request('/service/handshake-ext', {});
  assert.equal(seen.data.session ?? seen.data.ext?.session, 'sealed-replica-blob', JSON.stringify(seen.data));
  // The server restarts: it no longer knows this client.
  await stop(server);
  server = await startServer();
  await until(() => client.clientId && client.clientId !== first && client.state === 'connected', 15000, 're-handshake');
  const again = await client.request('/service/handshake-ext', {});
  assert.equal(again.data.session ?? again.data.ext?.session, 'sealed-replica-blob', 'the extension re-ran on the new handshake');
  assert.ok(handshakes.filter(Boolean).length >= 2);
  await client.disconnect();
});
