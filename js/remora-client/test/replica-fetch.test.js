import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createFetch } from '../src/fetch.js';
import { ReplicaStore, MemoryStorage } from '../src/replica.js';
import { cometdReplicaExtension, fayeReplicaExtension } from '../src/extensions.js';

// A server that plays the replica protocol: it "knows" a session only after it
// has seen its replica, asks capable clients for it with 409, and hands out a
// new replica whenever a request changes the session.
let server;
let base;
const log = [];
before(async () => {
  server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      log.push({ method: req.method, url: req.url, capable: req.headers['session-replica-capable'], replica: req.headers['session-replica'], body });
      if (req.url === '/change') {
        res.writeHead(200, { 'Session-Replica': `rep${body}`, 'Session-Replica-Seq': body });
        return res.end('changed');
      }
      if (req.url === '/unknown') {
        if (req.headers['session-replica-capable'] && !req.headers['session-replica']) {
          res.writeHead(409, { 'Session-Replica-Wanted': '1' });
          return res.end();
        }
        res.writeHead(200);
        return res.end(`restored from ${req.headers['session-replica'] ?? 'nothing'} with ${body}`);
      }
      res.writeHead(404);
      res.end();
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${server.address().port}/`;
});
after(() => server.close());

test('captures replicas and answers 409 Session-Replica-Wanted by resending once with the body', async () => {
  const store = new ReplicaStore({ origin: 'test', storage: new MemoryStorage() });
  const rfetch = createFetch({ store, base });
  log.length = 0;
  const first = await rfetch('/unknown', { method: 'POST', body: 'x' });
  assert.equal(first.status, 200, 'no replica held: no capable mark, no 409');
  assert.equal(log[0].capable, undefined);

  await rfetch('/change', { method: 'POST', body: '7' });
  assert.deepEqual(store.get(), { replica: 'rep7', seq: 7 });

  log.length = 0;
  const res = await rfetch('/unknown', { method: 'POST', body: '{"sku":"tea"}' });
  assert.equal(res.status, 200);
  assert.equal(await res.text(), 'restored from rep7 with {"sku":"tea"}');
  assert.equal(log.length, 2, 'exactly one resend');
  assert.equal(log[0].capable, '7', 'capable carries the held seq');
  assert.equal(log[1].replica, 'rep7');
  assert.equal(log[1].body, '{"sku":"tea"}', 'the resend carries the same body');
});

test('never sends the replica to another origin', async () => {
  const store = new ReplicaStore({ origin: 'test2', storage: new MemoryStorage() });
  store.offer('secret', 1);
  const seen = [];
  const rfetch = createFetch({ store, base: 'http://app.example/', fetch: async (req) => { seen.push(req); return new Response('ok'); } });
  await rfetch('http://elsewhere.example/x');
  assert.equal(seen[0].headers.get('session-replica-capable'), null);
  await rfetch('/y');
  assert.equal(seen[1].headers.get('session-replica-capable'), '1', 'no seq known: 1');
});

test('CometD and Faye extensions capture pushed replicas and stamp handshakes', async () => {
  const store = new ReplicaStore({ origin: 'ext', storage: new MemoryStorage() });
  const c = cometdReplicaExtension(store);
  assert.deepEqual(c.outgoing({ channel: '/meta/handshake' }), { channel: '/meta/handshake' }, 'nothing held: no ext');
  c.incoming({ channel: '/service/ext/session', data: { replica: 'r9', seq: 9 } });
  assert.deepEqual(c.outgoing({ channel: '/meta/handshake', ext: { ack: true } }).ext, { ack: true, session: 'r9' });
  assert.equal(c.outgoing({ channel: '/meta/connect' }).ext, undefined, 'only handshakes carry it');
  const f = fayeReplicaExtension(store);
  await new Promise((done) => f.incoming({ channel: '/service/ext/session', data: { replica: 'r10', seq: 10 } }, done));
  const out = await new Promise((done) => f.outgoing({ channel: '/meta/handshake' }, done));
  assert.equal(out.ext.session, 'r10');
  c.incoming({ channel: '/service/ext/session', data: { replica: null, seq: 0 } });
  assert.equal(store.get(), null, 'a pushed null replica (session ended) clears it');
});
