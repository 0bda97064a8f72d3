// Interop: the real Faye client (npm `faye`) against `remora bayeux`, over
// long-polling and over WebSocket.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";

import faye from "faye";

import { startServer, until, deferred, within } from "../test-support/server.js";

const TRANSPORTS = ["long-polling", "websocket"];

/** A Faye client forced onto `transport`; records what it sends/receives. */
function client(url, transport) {
    const c = new faye.Client(url, { timeout: 5, retry: 0.1 });
    if (transport === "long-polling") c.disable("websocket");
    c.disable("eventsource");
    const sent = [];
    const received = [];
    c.addExtension({
        outgoing(m, cb) { sent.push(JSON.parse(JSON.stringify(m))); cb(m); },
        incoming(m, cb) { received.push(JSON.parse(JSON.stringify(m))); cb(m); },
    });
    c.sent = sent;
    c.received = received;
    return c;
}

/** Subscribes; resolves with `{ sub }` (a Faye subscription is thenable). */
async function subscribe(c, channel, onMessage) {
    const sub = c.subscribe(channel, onMessage);
    await within(sub, 10000, `subscribe ${channel}`);
    return { sub };
}

const publish = (c, channel, data) => within(c.publish(channel, data), 10000, `publish ${channel}`);

/**
 * Disconnects and waits until the reply came and no request is in flight
 * (Faye retries a failed request forever, which would keep Node alive once
 * the server is gone).
 */
async function close(c) {
    c.disconnect();
    await until(() => c.received.some((m) => m.channel === "/meta/disconnect"), "disconnect reply");
    const envelopes = c._dispatcher?._envelopes;
    await until(() => !(envelopes instanceof Map) || envelopes.size === 0, "no request in flight");
}

function handshake(c) {
    return within(new Promise((resolve) => c.handshake(() => resolve(c._dispatcher.clientId))),
        10000, "handshake");
}

for (const transport of TRANSPORTS) {
    describe(`Faye client over ${transport}`, () => {
        let server;
        before(async () => { server = await startServer(); });
        after(async () => { await server.close(); });

        test("handshake and connect on the transport", async () => {
            const c = client(server.url, transport);
            const id = await handshake(c);
            assert.match(id, /^[0-9a-f]{32,}$/);
            c.connect();
            await until(() => c.sent.some((m) => m.channel === "/meta/connect" && m.connectionType === transport),
                `connect over ${transport}`);
            await close(c);
        });

        test("publish and receive across two clients, wildcards, unsubscribe", async () => {
            const a = client(server.url, transport);
            const b = client(server.url, transport);
            const exact = [];
            const single = [];
            const deep = [];
            const { sub: subExact } = await subscribe(b, "/chat/room", (d) => exact.push(d));
            await subscribe(b, "/chat/*", (d) => single.push(d));
            await subscribe(b, "/chat/**", (d) => deep.push(d));
            await publish(a, "/chat/room", { text: "hello" });
            await publish(a, "/chat/room/deeper", { text: "deep" });
            await until(() => exact.length === 1 && single.length === 1 && deep.length === 2, "deliveries");
            assert.deepEqual(exact, [{ text: "hello" }]);
            assert.deepEqual(single, [{ text: "hello" }]);
            assert.deepEqual(deep.map((d) => d.text).sort(), ["deep", "hello"]);
            subExact.cancel();
            await until(() => b.sent.some((m) => m.channel === "/meta/unsubscribe"), "unsubscribe sent");
            await until(() => b.received.some((m) => m.channel === "/meta/unsubscribe" && m.successful),
                "unsubscribe reply");
            await publish(a, "/chat/room", { text: "again" });
            await until(() => single.length === 2, "delivery after unsubscribe");
            assert.equal(exact.length, 1);
            if (transport === "websocket") {
                assert.ok(a.sent.some((m) => m.channel === "/meta/connect" && m.connectionType === "websocket"));
            }
            await close(a);
            await close(b);
        });

        test("service channel request/response by id", async () => {
            const c = client(server.url, transport);
            const answers = [];
            await subscribe(c, "/service/echo", (d) => answers.push(d));
            await publish(c, "/service/echo", { question: 7 });
            await until(() => answers.length === 1, "echo");
            assert.deepEqual(answers[0], { question: 7 });
            const request = c.sent.find((m) => m.channel === "/service/echo");
            const response = c.received.find((m) => m.channel === "/service/echo" && m.data);
            assert.equal(response.id, request.id, "response carries the request's id");
            await close(c);
        });

        test("disconnect ends the client on the server", async () => {
            const c = client(server.url, transport);
            const id = await handshake(c);
            await close(c);
            await until(() => c.received.some((m) => m.channel === "/meta/disconnect"), "disconnect reply");
            const r = await fetch(server.url, {
                method: "POST",
                headers: { "content-type": "application/json" },
                body: JSON.stringify([{ channel: "/meta/connect", clientId: id, connectionType: "long-polling" }]),
            });
            assert.equal((await r.json())[0].error, "402::session_unknown");
        });
    });

    describe(`Faye client over ${transport}: server restart`, () => {
        test("re-handshakes on 402 and re-runs extensions (ext.session)", async () => {
            const server = await startServer();
            try {
                const c = client(server.url, transport);
                let handshakes = 0;
                const rehandshake = deferred();
                c.addExtension({
                    outgoing(m, cb) {
                        if (m.channel === "/meta/handshake") {
                            handshakes += 1;
                            m.ext = { ...(m.ext || {}), session: `replica-${handshakes}` };
                        }
                        cb(m);
                    },
                    incoming(m, cb) {
                        if (m.channel === "/meta/handshake" && m.successful && handshakes >= 2) {
                            rehandshake.resolve(m);
                        }
                        cb(m);
                    },
                });
                const answers = [];
                await subscribe(c, "/service/handshake-ext", (d) => answers.push(d));
                await publish(c, "/service/handshake-ext", {});
                await until(() => answers.length === 1, "first answer");
                assert.deepEqual(answers[0], { session: "replica-1" });
                await server.restart();
                await within(rehandshake.promise, 20000, "re-handshake after restart");
                // Faye re-subscribes after a re-handshake; ask again.
                await until(() => c.received.filter((m) => m.channel === "/meta/subscribe" && m.successful).length >= 2,
                    "re-subscription");
                await publish(c, "/service/handshake-ext", {});
                await until(() => answers.length === 2, "second answer");
                assert.equal(answers[1].session, `replica-${handshakes}`);
                assert.ok(handshakes >= 2);
                await close(c);
            } finally {
                await server.close();
            }
        });
    });
}
