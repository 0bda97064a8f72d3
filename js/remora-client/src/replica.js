// Remora replica store: keeps the newest sealed session replica the server
// handed to this page, so a later request or Bayeux re-handshake that lands on
// another server can present it. The replica is opaque to the client: sealed
// (encrypted and authenticated) by the server; the client only stores it.
//
// Ordering: the server sends with each replica a sequence number `seq` that is
// monotonic per session (milliseconds, never lower than the replica it was
// restored from). The store keeps the replica with the highest `seq`, so a
// response that arrives late never overwrites a newer replica. A replica with
// no `seq` replaces whatever is held.

/** Response and request header that carries a replica. */
export const REPLICA_HEADER = 'Session-Replica';
/** Response header with the replica's ordering sequence. */
export const SEQ_HEADER = 'Session-Replica-Seq';
/** Request header: this client can resend the request with its replica. */
export const CAPABLE_HEADER = 'Session-Replica-Capable';
/** Response header on a 409: the server wants the replica; resend once with it. */
export const WANTED_HEADER = 'Session-Replica-Wanted';
/** Response header: the session ended (logout); drop the replica. */
export const DROP_HEADER = 'Session-Replica-Drop';
/** Cookie that tells the server, on page navigations, that this browser holds a replica (value: its seq). */
export const HELD_COOKIE = 'remora_replica_held';
/** The Bayeux channel on which the server pushes replicas. */
export const REPLICA_CHANNEL = '/service/ext/session';

const DEFAULT_MAX_LENGTH = 131072; // characters; the server refuses more than 96 KiB anyway

/** A Storage-like object kept in memory (Node, tests, or no Web Storage). */
export class MemoryStorage {
  #map = new Map();
  getItem(key) { return this.#map.has(key) ? this.#map.get(key) : null; }
  setItem(key, value) { this.#map.set(key, String(value)); }
  removeItem(key) { this.#map.delete(key); }
}

function defaultStorage(name) {
  try {
    const s = globalThis[name];
    if (s && typeof s.getItem === 'function') return s;
  } catch {
    // Access to Web Storage can throw (disabled cookies, sandboxed iframes).
  }
  return null;
}

function parseSeq(seq) {
  if (seq === undefined || seq === null || seq === '') return null;
  const n = Number(seq);
  return Number.isSafeInteger(n) && n >= 0 ? n : null;
}

/**
 * The newest replica for one origin, kept in `sessionStorage` (survives page
 * reloads) and optionally also in `localStorage` (survives closing the tab).
 */
export class ReplicaStore {
  #storages;
  #key;
  #maxLength;
  #listeners = new Set();
  #memory = null;
  #heldCookie;
  #document;

  /**
   * @param {object} [options]
   * @param {string} [options.origin] whose replica this is (default: location.origin)
   * @param {Storage} [options.storage] primary storage (default: sessionStorage, else memory)
   * @param {boolean|Storage} [options.persistent] also keep it in localStorage (or the given storage)
   * @param {number} [options.maxLength] longest replica accepted, in characters
   * @param {string|false} [options.heldCookie] name of the hint cookie set while a replica is
   *   held, so the server parks a page navigation for an unknown session until the replica
   *   arrives (default `remora_replica_held`; false: none)
   * @param {{cookie: string}} [options.document] where the hint cookie is written (default: document)
   */
  constructor(options = {}) {
    const origin = options.origin ?? globalThis.location?.origin ?? 'default';
    this.#key = `remora.replica:${origin}`;
    const primary = options.storage ?? defaultStorage('sessionStorage') ?? new MemoryStorage();
    this.#storages = [primary];
    if (options.persistent) {
      const extra = options.persistent === true ? defaultStorage('localStorage') : options.persistent;
      if (extra && extra !== primary) this.#storages.push(extra);
    }
    this.#maxLength = options.maxLength ?? DEFAULT_MAX_LENGTH;
    this.#heldCookie = options.heldCookie === undefined ? HELD_COOKIE : options.heldCookie;
    this.#document = options.document ?? globalThis.document ?? null;
  }

  /** The held replica as `{replica, seq}`, or null. */
  get() {
    for (const storage of this.#storages) {
      const entry = this.#read(storage);
      if (entry) return entry;
    }
    return this.#memory;
  }

  /**
   * Offers a replica received from the server. Returns true when it is now
   * the held one; false when it was ignored (older, malformed or too long).
   */
  offer(replica, seq) {
    if (typeof replica !== 'string' || replica.length === 0 || replica.length > this.#maxLength) return false;
    if (!/^[A-Za-z0-9_-]+$/.test(replica)) return false;
    const entry = { replica, seq: parseSeq(seq) };
    const held = this.get();
    if (held && held.seq !== null && entry.seq !== null && entry.seq < held.seq) return false;
    if (held && held.replica === replica) return false;
    this.#write(entry);
    for (const listener of this.#listeners) {
      try { listener(entry); } catch { /* a listener's error is its own */ }
    }
    return true;
  }

  /** Forgets the replica (e.g. on logout). */
  clear() {
    this.#memory = null;
    this.#hint(null);
    for (const storage of this.#storages) {
      try { storage.removeItem(this.#key); } catch { /* storage gone: nothing held */ }
    }
  }

  /** Calls `listener({replica, seq})` whenever a new replica is held; returns an unsubscribe function. */
  onChange(listener) {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Takes a replica from a fetch `Response` (or anything with `headers.get`). */
  captureFrom(response) {
    if (response?.headers?.get?.(DROP_HEADER) === '1') {
      this.clear();
      return false;
    }
    const replica = response?.headers?.get?.(REPLICA_HEADER);
    if (!replica) return false;
    return this.offer(replica, response.headers.get(SEQ_HEADER));
  }

  #read(storage) {
    let text;
    try { text = storage.getItem(this.#key); } catch { return null; }
    if (!text) return null;
    try {
      const entry = JSON.parse(text);
      if (entry && typeof entry.replica === 'string') return { replica: entry.replica, seq: parseSeq(entry.seq) };
    } catch { /* unreadable: treated as nothing held */ }
    try { storage.removeItem(this.#key); } catch { /* ignore */ }
    return null;
  }

  #write(entry) {
    const text = JSON.stringify(entry);
    let stored = false;
    for (const storage of this.#storages) {
      try { storage.setItem(this.#key, text); stored = true; } catch { /* quota or disabled storage */ }
    }
    this.#memory = stored ? null : entry;
    this.#hint(entry);
  }

  #hint(entry) {
    if (!this.#heldCookie || !this.#document) return;
    const value = entry ? String(entry.seq ?? 1) : '';
    const age = entry ? '' : '; Max-Age=0';
    try { this.#document.cookie = `${this.#heldCookie}=${value}; Path=/; SameSite=Lax${age}`; } catch { /* no cookies */ }
  }
}
