// The shop page's Bayeux connection (our own client from js/remora-client):
// live cluster updates on /demo/cluster, and session replicas pushed on
// /service/ext/session (kept by the replica extension the client has built
// in, and presented as ext.session when a failover forces a re-handshake).
import { BayeuxClient } from '/assets/remora-client/bayeux.js';

export async function connectShopBayeux({ store, onCluster, onTransport }) {
  const bayeux = new BayeuxClient('/cometd', { replicas: store });
  bayeux.addListener('transport', (t) => onTransport?.(t));
  await bayeux.connect();
  await bayeux.subscribe('/demo/cluster', (m) => onCluster(m.data));
  globalThis.remoraBayeux = bayeux; // for the curious, in the console
  return true;
}
