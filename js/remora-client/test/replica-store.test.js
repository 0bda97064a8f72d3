import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ReplicaStore, MemoryStorage } from '../src/replica.js';

test('keeps the newest replica by seq and ignores late older ones', () => {
  const store = new ReplicaStore({ origin: 'http://a', storage: new MemoryStorage() });
  assert.equal(store.get(), null);
  assert.equal(store.offer('bbb', 20), true);
  assert.equal(store.offer('aaa', 10), false, 'an older replica arriving late is ignored');
  assert.deepEqual(store.get(), { replica: 'bbb', seq: 20 });
  assert.equal(store.offer('ccc', '30'), true, 'seq may come as header text');
  assert.deepEqual(store.get(), { replica: 'ccc', seq: 30 });
  assert.equal(store.offer('ddd'), true, 'a replica without seq replaces');
  assert.equal(store.get().replica, 'ddd');
});

test('refuses malformed and oversize replicas', () => {
  const store = new ReplicaStore({ origin: 'http://a', storage: new MemoryStorage(), maxLength: 8 });
  assert.equal(store.offer('', 1), false);
  assert.equal(store.offer('has space', 1), false);
  assert.equal(store.offer('abc+/=', 1), false, 'only base64url');
  assert.equal(store.offer('123456789', 1), false, 'over maxLength');
  assert.equal(store.offer({}, 1), false);
  assert.equal(store.get(), null);
});

test('survives a reload: a new store on the same storage sees the replica', () => {
  const storage = new MemoryStorage();
  new ReplicaStore({ origin: 'http://a', storage }).offer('r1', 5);
  assert.deepEqual(new ReplicaStore({ origin: 'http://a', storage }).get(), { replica: 'r1', seq: 5 });
  assert.equal(new ReplicaStore({ origin: 'http://b', storage }).get(), null, 'per origin');
});

test('persistent mode writes both storages; corrupt entries are dropped', () => {
  const session = new MemoryStorage();
  const local = new MemoryStorage();
  const store = new ReplicaStore({ origin: 'o', storage: session, persistent: local });
  store.offer('r2', 1);
  assert.deepEqual(new ReplicaStore({ origin: 'o', storage: new MemoryStorage(), persistent: local }).get(), { replica: 'r2', seq: 1 });
  session.setItem('remora.replica:o', '{not json');
  local.setItem('remora.replica:o', '{not json');
  assert.equal(store.get(), null);
  assert.equal(session.getItem('remora.replica:o'), null, 'corrupt entry removed');
  store.offer('r3', 2);
  store.clear();
  assert.equal(store.get(), null);
});

test('falls back to memory when storage throws (quota, disabled)', () => {
  const broken = { getItem() { throw new Error('denied'); }, setItem() { throw new Error('quota'); }, removeItem() { throw new Error('denied'); } };
  const store = new ReplicaStore({ origin: 'o', storage: broken });
  assert.equal(store.offer('r4', 1), true);
  assert.equal(store.get().replica, 'r4');
});

test('onChange fires for accepted replicas only', () => {
  const store = new ReplicaStore({ origin: 'o', storage: new MemoryStorage() });
  const seen = [];
  const off = store.onChange((e) => seen.push(e.replica));
  store.offer('x1', 2);
  store.offer('x0', 1);
  off();
  store.offer('x2', 3);
  assert.deepEqual(seen, ['x1']);
});

test('sets and clears the held hint cookie for page navigations', () => {
  const doc = { cookie: '' };
  const store = new ReplicaStore({ origin: 'o', storage: new MemoryStorage(), document: doc });
  store.offer('h1', 42);
  assert.equal(doc.cookie, 'remora_replica_held=42; Path=/; SameSite=Lax');
  store.clear();
  assert.match(doc.cookie, /^remora_replica_held=; Path=\/; SameSite=Lax; Max-Age=0$/);
  const none = new ReplicaStore({ origin: 'o', storage: new MemoryStorage(), document: doc, heldCookie: false });
  doc.cookie = '';
  none.offer('h2', 1);
  assert.equal(doc.cookie, '');
});

test('a Session-Replica-Drop response clears the replica (logout cannot be undone by a restore)', () => {
  const store = new ReplicaStore({ origin: 'o', storage: new MemoryStorage() });
  store.offer('r1', 1);
  const headers = new Headers({ 'Session-Replica-Drop': '1' });
  assert.equal(store.captureFrom({ headers }), false);
  assert.equal(store.get(), null);
});
