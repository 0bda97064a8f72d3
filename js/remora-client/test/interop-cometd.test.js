// Interop: the real CometD JavaScript client (npm `cometd` + `cometd-nodejs-client`)
// against `remora bayeux`, over long-polling and over WebSocket.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";

import { adapt } from "cometd-nodejs-client";
import { CometD, AckExtension } from "cometd";

import { startServer, until, deferred, within } from "../test-support/server.js";

adapt();

const TRANSPORTS = ["long-polling", "websocket"];

/** A CometD client forced onto `transport`; records what it sends/receives. */
function client(url, transport) {
    const c = new CometD();
    for (const t of c.getTransportTypes()) {
        if (t !== transport) c.unregisterTransport(t);
    }
    c.configure({ url, logLevel: "warn", backoffIncrement: 50, maxBackoff: 500, maxNetworkDelay: 5000 });
    const sent = [];
    const received = [];
    c.registerExtension("recorder", {
        outgoing(m) { sent.push(structuredClone(m)); return m; },
        incoming(m) { received.push(structuredClone(m)); return m; },
    });
    c.sent = sent;
    c.received = received;
    return c;
}

function handshake(c, props) {
    return within(new Promise((resolve, reject) => {
        const cb = (reply) => (reply.successful ? resolve(reply) : reject(new Error(JSON.stringify(reply))));
        if (props) c.handshake(props, cb); else c.handshake(cb);
    }), 10000, "handshake");
}

/** Subscribes; resolves with the subscription handle (for unsubscribe). */
function subscribe(c, channel, onMessage) {
    return within(new Promise((resolve, reject) => {
        const handle = c.subscribe(channel, onMessage, (reply) =>
            reply.successful ? resolve(handle) : reject(new Error(JSON.stringify(reply))));
    }), 10000, `subscribe ${channel}`);
}

function publish(c, channel, data) {
    return within(new Promise((resolve, reject) => {
        c.publish(channel, data, (reply) =>
            reply.successful ? resolve(reply) : reject(new Error(JSON.stringify(reply))));
    }), 10000, `publish ${channel}`);
}

function remoteCall(c, target, data) {
    return within(new Promise((resolve, reject) => {
        c.remoteCall(target, data, 5000, (reply) =>
            reply.successful ? resolve(reply) : reject(new Error(JSON.stringify(reply))));
    }), 10000, `remoteCall ${target}`);
}

function disconnect(c) {
    return within(new Promise((resolve) => c.disconnect(resolve)), 10000, "disconnect");
}

for (const transport of TRANSPORTS) {
    describe(`CometD client over ${transport}`, () => {
        let server;
        before(async () => { server = await startServer(); });
        after(async () => { await server.close(); });

        test("handshake negotiates the transport", async () => {
            const c = client(server.url, transport);
            const reply = await handshake(c);
            assert.match(reply.clientId, /^[0-9a-f]{32,}$/);
            await until(() => c.sent.some((m) => m.channel === "/meta/connect"), "first connect");
            assert.equal(c.sent.find((m) => m.channel === "/meta/connect").connectionType, transport);
            await disconnect(c);
        });

        test("publish and receive across two clients, wildcards, unsubscribe", async () => {
            const a = client(server.url, transport);
            const b = client(server.url, transport);
            await handshake(a);
            await handshake(b);
            const exact = [];
            const single = [];
            const deep = [];
            const subExact = await subscribe(b, "/chat/room", (m) => exact.push(m.data));
            await subscribe(b, "/chat/*", (m) => single.push(m.data));
            await subscribe(b, "/chat/**", (m) => deep.push(m.data));
            await publish(a, "/chat/room", { text: "hello" });
            await publish(a, "/chat/room/deeper", { text: "deep" });
            await until(() => exact.length === 1 && single.length === 1 && deep.length === 2, "deliveries");
            assert.deepEqual(exact, [{ text: "hello" }]);
            assert.deepEqual(single, [{ text: "hello" }]);
            assert.deepEqual(deep.map((d) => d.text).sort(), ["deep", "hello"]);

            await within(new Promise((resolve, reject) => b.unsubscribe(subExact, (r) =>
                r.successful ? resolve() : reject(new Error(JSON.stringify(r))))), 10000, "unsubscribe");
            await publish(a, "/chat/room", { text: "again" });
            await until(() => single.length === 2, "delivery after unsubscribe");
            assert.equal(exact.length, 1, "unsubscribed listener got nothing more");
            await disconnect(a);
            await disconnect(b);
        });

        test("service channel request/response by id (remoteCall)", async () => {
            const c = client(server.url, transport);
            await handshake(c);
            const reply = await remoteCall(c, "echo", { question: 42 });
            assert.deepEqual(reply.data, { question: 42 });
            const request = c.sent.find((m) => m.channel === "/service/echo");
            assert.ok(request.id, "request has an id");
            assert.equal(reply.id, request.id);
            await disconnect(c);
        });

        test("disconnect ends the client on the server", async () => {
            const c = client(server.url, transport);
            const { clientId } = await handshake(c);
            await disconnect(c);
            assert.ok(c.isDisconnected());
            const r = await fetch(server.url, {
                method: "POST",
                headers: { "content-type": "application/json" },
                body: JSON.stringify([{ channel: "/meta/connect", clientId, connectionType: "long-polling" }]),
            });
            const [reply] = await r.json();
            assert.equal(reply.error, "402::session_unknown");
        });

        test("ack extension: batches acknowledged on connect", async () => {
            const c = client(server.url, transport);
            c.registerExtension("ack", new AckExtension());
            const got = [];
            const hs = await handshake(c);
            assert.equal(hs.ext?.ack, true, "server supports acks");
            await subscribe(c, "/acked", (m) => got.push(m.data));
            const other = client(server.url, transport);
            await handshake(other);
            for (let i = 0; i < 3; i++) await publish(other, "/acked", i);
            await until(() => got.length === 3, "acked deliveries");
            assert.deepEqual(got, [0, 1, 2]);
            // The server numbered a batch, and the client acknowledged it.
            await until(() => c.sent.some((m) => m.channel === "/meta/connect" && m.ext?.ack >= 1),
                "connect acknowledging a batch");
            assert.ok(c.received.some((m) => m.channel === "/meta/connect" && m.ext?.ack >= 1));
            await disconnect(c);
            await disconnect(other);
        });
    });

    describe(`CometD client over ${transport}: server restart`, () => {
        test("re-handshakes on 402 and re-runs extensions (ext.session)", async () => {
            const server = await startServer();
            try {
                const c = client(server.url, transport);
                let handshakes = 0;
                c.registerExtension("session", {
                    outgoing(m) {
                        if (m.channel === "/meta/handshake") {
                            handshakes += 1;
                            m.ext = { ...(m.ext || {}), session: `replica-${handshakes}` };
                        }
                        return m;
                    },
                });
                const rehandshake = deferred();
                let successes = 0;
                c.addListener("/meta/handshake", (m) => {
                    if (m.successful && ++successes === 2) rehandshake.resolve(m);
                });
                const first = await handshake(c);
                assert.deepEqual((await remoteCall(c, "handshake-ext", {})).data, { session: "replica-1" });
                await server.restart();
                const second = await within(rehandshake.promise, 20000, "re-handshake after restart");
                assert.notEqual(second.clientId, first.clientId);
                const seen = await remoteCall(c, "handshake-ext", {});
                assert.equal(seen.data.session, `replica-${handshakes}`);
                assert.ok(handshakes >= 2, "the extension ran again");
                await disconnect(c);
            } finally {
                await server.close();
            }
        });
    });
}
