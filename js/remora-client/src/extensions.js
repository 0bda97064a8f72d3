// Bayeux extensions that carry replicas for the CometD and Faye JavaScript
// clients: they keep what the server pushes on `/service/ext/session` and put
// the held replica in `ext.session` of every `/meta/handshake`, so a client
// that the protocol sends back to handshake (a server that does not know it,
// after failover) restores its session there.

import { REPLICA_CHANNEL } from './replica.js';

function take(store, message) {
  if (!message || message.channel !== REPLICA_CHANNEL || !message.data) return;
  if (typeof message.data.replica === 'string') store.offer(message.data.replica, message.data.seq);
  else if (message.data.replica === null) store.clear(); // the session ended
}

function stamp(store, message) {
  if (message && message.channel === '/meta/handshake') {
    const held = store.get();
    if (held) message.ext = Object.assign({}, message.ext, { session: held.replica });
  }
}

/**
 * The extension for the CometD client:
 * `cometd.registerExtension('remora-replica', cometdReplicaExtension(store))`.
 */
export function cometdReplicaExtension(store) {
  return {
    incoming(message) { take(store, message); return message; },
    outgoing(message) { stamp(store, message); return message; },
  };
}

/** The extension for Faye: `client.addExtension(fayeReplicaExtension(store))`. */
export function fayeReplicaExtension(store) {
  return {
    incoming(message, callback) { take(store, message); callback(message); },
    outgoing(message, callback) { stamp(store, message); callback(message); },
  };
}
