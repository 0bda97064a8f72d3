// A small Bayeux 1.0 client: long-polling and WebSocket, re-handshake when
// the server says so (`advice.reconnect = "handshake"`, e.g. a server that
// does not know this client after a failover), automatic resubscription,
// channel listeners with `*` and `**` wildcards, publish, extensions, and the
// replica extension built in (pass a ReplicaStore as `replicas`).
//
//   import { BayeuxClient } from './bayeux.js';
//   const bayeux = new BayeuxClient('/cometd', { replicas: store });
//   await bayeux.connect();
//   await bayeux.subscribe('/chat/room', (message) => show(message.data));
//   await bayeux.publish('/chat/room', { text: 'hi' });

import { cometdReplicaExtension } from './extensions.js';

const META = {
  handshake: '/meta/handshake',
  connect: '/meta/connect',
  subscribe: '/meta/subscribe',
  unsubscribe: '/meta/unsubscribe',
  disconnect: '/meta/disconnect',
};

/** Whether `channel` matches subscription `pattern` (`*`: one segment, `**`: any below). */
export function channelMatches(pattern, channel) {
  if (pattern === channel) return true;
  const p = pattern.split('/');
  const c = channel.split('/');
  const last = p[p.length - 1];
  if (last === '**') return c.length >= p.length && p.slice(0, -1).every((s, i) => s === c[i]);
  if (last === '*') return c.length === p.length && p.slice(0, -1).every((s, i) => s === c[i]);
  return false;
}

function absolute(url, base) {
  try { return new URL(url, base ?? globalThis.location?.href).href; } catch { return url; }
}

/**
 * A Bayeux client. Events: `state` listeners get 'connecting' | 'connected'
 * | 'disconnected' | 'rehandshake'; `transport` listeners get the
 * connection type in use.
 */
export class BayeuxClient {
  #url;
  #opts;
  #fetch;
  #WebSocket;
  #extensions = [];
  #subs = new Map(); // channel pattern -> Set(listener)
  #pending = new Map(); // message id -> {resolve, reject, timer}
  #metaListeners = new Map();
  #nextId = 1;
  #clientId = null;
  #transport = null;
  #ws = null;
  #state = 'disconnected';
  #stopped = true;
  #backoff = 0;
  #advice = { reconnect: 'retry', interval: 0, timeout: 30000 };
  #connectLoop = null;

  /**
   * @param {string} url the Bayeux endpoint, e.g. '/cometd'
   * @param {object} [options]
   * @param {string[]} [options.transports] preference order (default ['websocket', 'long-polling'])
   * @param {import('./replica.js').ReplicaStore} [options.replicas] carry session replicas
   * @param {typeof fetch} [options.fetch] fetch to use (default globalThis.fetch)
   * @param {typeof WebSocket} [options.WebSocket] WebSocket class (default globalThis.WebSocket)
   * @param {number} [options.maxBackoff] longest wait between failed attempts, ms (default 10000)
   * @param {number} [options.requestTimeout] a reply's deadline beyond the server's connect timeout, ms (default 10000)
   * @param {object} [options.headers] extra HTTP headers for long-polling requests
   */
  constructor(url, options = {}) {
    this.#url = absolute(url, options.base);
    this.#opts = { transports: ['websocket', 'long-polling'], maxBackoff: 10000, requestTimeout: 10000, headers: {}, ...options };
    this.#fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (options.replicas) this.addExtension(cometdReplicaExtension(options.replicas));
  }

  /** The Bayeux client id, once handshaken. */
  get clientId() { return this.#clientId; }
  /** The connection type in use. */
  get transport() { return this.#transport; }
  /** 'disconnected' | 'connecting' | 'connected'. */
  get state() { return this.#state; }

  /** Adds an extension `{incoming(message), outgoing(message)}`; returning null drops the message. */
  addExtension(ext) { this.#extensions.push(ext); }

  /** Listens to a meta channel ('/meta/handshake', …) or 'state' / 'transport'. */
  addListener(channel, listener) {
    if (!this.#metaListeners.has(channel)) this.#metaListeners.set(channel, new Set());
    this.#metaListeners.get(channel).add(listener);
    return () => this.#metaListeners.get(channel)?.delete(listener);
  }

  /** Handshakes and keeps connected until `disconnect()`. Resolves after the first handshake. */
  async connect() {
    this.#stopped = false;
    await this.#handshake();
    this.#connectLoop ??= this.#runConnectLoop().finally(() => { this.#connectLoop = null; });
  }

  /** Subscribes `listener` to `channel`; resolves when the server confirms. Returns an unsubscribe function. */
  async subscribe(channel, listener) {
    const first = !this.#subs.has(channel);
    if (first) this.#subs.set(channel, new Set());
    this.#subs.get(channel).add(listener);
    if (first && this.#clientId) {
      const reply = await this.#call({ channel: META.subscribe, subscription: channel });
      if (!reply.successful) {
        this.#subs.delete(channel);
        throw new Error(`subscribe ${channel}: ${reply.error ?? 'refused'}`);
      }
    }
    return () => this.unsubscribe(channel, listener);
  }

  /** Removes `listener` (or every listener) from `channel`; unsubscribes when none is left. */
  async unsubscribe(channel, listener) {
    const set = this.#subs.get(channel);
    if (!set) return;
    if (listener) set.delete(listener); else set.clear();
    if (set.size === 0) {
      this.#subs.delete(channel);
      if (this.#clientId) await this.#call({ channel: META.unsubscribe, subscription: channel });
    }
  }

  /** Publishes `data` on `channel`; resolves with the server's reply (for /service channels, see `request`). */
  publish(channel, data) {
    return this.#call({ channel, data });
  }

  /** Sends `data` to a service channel and resolves with the first message the server sends back on it. */
  request(channel, data, timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
      const listener = (message) => { clearTimeout(timer); off(); resolve(message); };
      const pattern = channel;
      if (!this.#subs.has(pattern)) this.#subs.set(pattern, new Set());
      this.#subs.get(pattern).add(listener);
      const off = () => this.#subs.get(pattern)?.delete(listener);
      const timer = setTimeout(() => { off(); reject(new Error(`no answer on ${channel}`)); }, timeoutMs);
      this.publish(channel, data).catch((e) => { clearTimeout(timer); off(); reject(e); });
    });
  }

  /** Disconnects and stops reconnecting. */
  async disconnect() {
    this.#stopped = true;
    const id = this.#clientId;
    if (id) {
      try { await this.#call({ channel: META.disconnect }); } catch { /* already gone */ }
    }
    this.#clientId = null;
    this.#ws?.close();
    this.#ws = null;
    this.#setState('disconnected');
    for (const [, p] of this.#pending) { clearTimeout(p.timer); p.reject(new Error('disconnected')); }
    this.#pending.clear();
  }

  // -- protocol ----------------------------------------------------------

  #emit(channel, value) {
    for (const l of this.#metaListeners.get(channel) ?? []) {
      try { l(value); } catch { /* a listener's error is its own */ }
    }
  }

  #setState(s) {
    if (this.#state !== s) { this.#state = s; this.#emit('state', s); }
  }

  #outgoing(message) {
    let m = message;
    for (const ext of this.#extensions) {
      if (!m) return null;
      m = ext.outgoing ? ext.outgoing(m) : m;
    }
    return m;
  }

  #incoming(message) {
    let m = message;
    for (const ext of this.#extensions) {
      if (!m) return null;
      m = ext.incoming ? ext.incoming(m) : m;
    }
    return m;
  }

  async #handshake() {
    this.#setState('connecting');
    this.#ws?.close();
    this.#ws = null;
    this.#clientId = null;
    const types = this.#opts.transports.filter((t) => t !== 'websocket' || this.#WebSocket);
    for (;;) {
      try {
        // A handshake always goes over HTTP; the transport is chosen from its reply.
        const reply = await this.#post([{ channel: META.handshake, version: '1.0', minimumVersion: '1.0', supportedConnectionTypes: types }]);
        if (reply?.successful) {
          this.#clientId = reply.clientId;
          const offered = reply.supportedConnectionTypes ?? ['long-polling'];
          this.#transport = types.find((t) => offered.includes(t)) ?? 'long-polling';
          if (this.#transport === 'websocket') await this.#openWebSocket();
          this.#backoff = 0;
          this.#emit('transport', this.#transport);
          // Resubscribe everything after a (re-)handshake.
          for (const channel of this.#subs.keys()) {
            this.#call({ channel: META.subscribe, subscription: channel }).catch(() => {});
          }
          return;
        }
      } catch (e) {
        if (this.#transport === 'websocket') this.#transport = 'long-polling';
        this.#lastError = e;
      }
      if (this.#stopped) throw new Error('disconnected');
      await this.#wait();
    }
  }

  #lastError = null;

  async #wait() {
    this.#backoff = Math.min(this.#opts.maxBackoff, this.#backoff ? this.#backoff * 2 : 250);
    await new Promise((r) => setTimeout(r, this.#backoff));
  }

  async #runConnectLoop() {
    let first = true;
    while (!this.#stopped) {
      try {
        const connect = { channel: META.connect, connectionType: this.#transport };
        if (first) connect.advice = { timeout: 0 };
        const reply = await this.#call(connect, this.#advice.timeout + this.#opts.requestTimeout);
        first = false;
        if (reply.advice) this.#advice = { ...this.#advice, ...reply.advice };
        if (reply.successful) {
          this.#setState('connected');
          this.#backoff = 0;
          if (this.#advice.interval > 0) await new Promise((r) => setTimeout(r, this.#advice.interval));
          continue;
        }
        const reconnect = reply.advice?.reconnect ?? this.#advice.reconnect;
        if (reconnect === 'none') { this.#stopped = true; break; }
        if (reconnect === 'handshake' || String(reply.error ?? '').startsWith('402')) {
          this.#emit('state', 'rehandshake');
          await this.#handshake();
          first = true;
          continue;
        }
        await this.#wait();
      } catch (e) {
        if (this.#stopped) break;
        this.#lastError = e;
        this.#setState('connecting');
        await this.#wait();
        // After a transport failure the server may not know us any more.
        if (this.#transport === 'websocket' && (!this.#ws || this.#ws.readyState !== 1)) {
          try { await this.#openWebSocket(); } catch { await this.#handshake().catch(() => {}); first = true; }
        }
      }
    }
    this.#setState('disconnected');
  }

  /** Sends one message and resolves with its reply (matched by id). */
  #call(message, timeoutMs = this.#opts.requestTimeout) {
    const id = String(this.#nextId++);
    const m = this.#outgoing({ ...message, id, clientId: this.#clientId ?? undefined });
    if (!m) return Promise.reject(new Error('dropped by an extension'));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.#pending.delete(id); reject(new Error(`no reply to ${message.channel}`)); }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      const sent = this.#transport === 'websocket' && this.#ws?.readyState === 1
        ? this.#sendWs([m])
        : this.#post([m], true).then(() => {});
      Promise.resolve(sent).catch((e) => {
        const p = this.#pending.get(id);
        if (p) { clearTimeout(p.timer); this.#pending.delete(id); p.reject(e); }
      });
    });
  }

  /** POSTs messages (long-polling); dispatches everything that comes back. */
  async #post(messages, alreadyExtended = false) {
    const out = alreadyExtended ? messages : messages.map((m) => this.#outgoing({ ...m, id: String(this.#nextId++) })).filter(Boolean);
    const res = await this.#fetch(this.#url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json;charset=UTF-8', ...this.#opts.headers },
      body: JSON.stringify(out),
      credentials: 'include',
    });
    if (!res.ok) throw new Error(`Bayeux HTTP ${res.status}`);
    const replies = await res.json();
    if (!Array.isArray(replies)) throw new Error('Bayeux reply is not an array');
    let handshakeReply = null;
    for (const raw of replies) {
      const m = this.#incoming(raw);
      if (!m) continue;
      if (m.channel === META.handshake) handshakeReply = m;
      this.#dispatch(m);
    }
    return handshakeReply;
  }

  #openWebSocket() {
    return new Promise((resolve, reject) => {
      const url = this.#url.replace(/^http/, 'ws');
      let ws;
      try { ws = new this.#WebSocket(url); } catch (e) { reject(e); return; }
      const timer = setTimeout(() => { ws.close(); reject(new Error('WebSocket did not open')); }, this.#opts.requestTimeout);
      ws.onopen = () => { clearTimeout(timer); this.#ws = ws; resolve(); };
      ws.onerror = (e) => { clearTimeout(timer); reject(e?.error ?? new Error('WebSocket error')); };
      ws.onclose = () => {
        if (this.#ws === ws) this.#ws = null;
        // Fail what waits on this socket; the connect loop reconnects.
        for (const [id, p] of this.#pending) { clearTimeout(p.timer); p.reject(new Error('WebSocket closed')); this.#pending.delete(id); }
      };
      ws.onmessage = (event) => {
        let replies;
        try { replies = JSON.parse(typeof event.data === 'string' ? event.data : String(event.data)); } catch { return; }
        for (const raw of Array.isArray(replies) ? replies : [replies]) {
          const m = this.#incoming(raw);
          if (m) this.#dispatch(m);
        }
      };
    });
  }

  #sendWs(messages) {
    this.#ws.send(JSON.stringify(messages));
  }

  #dispatch(m) {
    if (m.id !== undefined && this.#pending.has(String(m.id)) && (m.channel?.startsWith('/meta/') || m.successful !== undefined)) {
      const p = this.#pending.get(String(m.id));
      this.#pending.delete(String(m.id));
      clearTimeout(p.timer);
      p.resolve(m);
    }
    if (m.channel?.startsWith('/meta/')) {
      this.#emit(m.channel, m);
      return;
    }
    if (m.data === undefined) return; // a publish acknowledgement
    for (const [pattern, listeners] of this.#subs) {
      if (!channelMatches(pattern, m.channel)) continue;
      for (const l of [...listeners]) {
        try { l(m); } catch { /* a listener's error is its own */ }
      }
    }
  }
}
