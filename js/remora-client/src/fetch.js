// A `fetch` wrapper that carries session replicas over HTTP:
// - captures `Session-Replica` from every same-origin response into the store;
// - marks same-origin requests `Session-Replica-Capable: <seq>` when it holds a
//   replica (`1` when the seq is unknown), so a server that does not know the
//   session, or knows an older copy, answers
//   `409` + `Session-Replica-Wanted: 1` (with no side effect) instead of
//   running the request on an empty session;
// - answers such a 409 by resending the request once, with the replica.
// Replicas are never sent to another origin than the allowed ones.

import { ReplicaStore, REPLICA_HEADER, CAPABLE_HEADER, WANTED_HEADER } from './replica.js';

function originOf(url, base) {
  try { return new URL(url, base).origin; } catch { return null; }
}

/**
 * Creates a replica-carrying fetch.
 * @param {object} [options]
 * @param {ReplicaStore} [options.store] where replicas are kept (default: a new ReplicaStore)
 * @param {typeof fetch} [options.fetch] the underlying fetch (default: globalThis.fetch)
 * @param {string} [options.base] base URL for relative requests (default: location.href)
 * @param {string[]} [options.origins] origins that may receive the replica (default: the base's origin)
 * @returns {typeof fetch & {store: ReplicaStore}}
 */
export function createFetch(options = {}) {
  const store = options.store ?? new ReplicaStore();
  const inner = options.fetch ?? globalThis.fetch.bind(globalThis);
  const base = options.base ?? globalThis.location?.href;
  const allowed = new Set(options.origins ?? [originOf(base ?? 'http://invalid/', undefined)].filter(Boolean));

  async function remoraFetch(input, init) {
    const request = new Request(input instanceof Request ? input : new URL(String(input), base), init);
    if (!allowed.has(originOf(request.url))) return inner(request);
    const held = store.get();
    // Keep a copy for the one resend before the body is consumed.
    const spare = held ? request.clone() : null;
    // The value tells the server how new our replica is, so a server whose
    // store holds an older copy of the session asks for ours too.
    if (held) request.headers.set(CAPABLE_HEADER, held.seq !== null ? String(held.seq) : '1');
    const response = await inner(request);
    store.captureFrom(response);
    if (response.status !== 409 || response.headers.get(WANTED_HEADER) !== '1' || !spare) return response;
    const latest = store.get() ?? held;
    spare.headers.set(REPLICA_HEADER, latest.replica);
    spare.headers.delete(CAPABLE_HEADER);
    const retried = await inner(spare);
    store.captureFrom(retried);
    return retried;
  }
  remoraFetch.store = store;
  return remoraFetch;
}
