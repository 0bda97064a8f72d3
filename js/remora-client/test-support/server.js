// Starts `remora bayeux` (the binary named by REMORA_BIN) on a free port for
// interop tests, and stops it. Every child is killed when the process exits.
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

const children = new Set();
process.on("exit", () => {
    for (const c of children) c.kill("SIGKILL");
});

/** The remora binary, or a clear error. */
export function remoraBin() {
    const bin = process.env.REMORA_BIN;
    if (!bin) {
        throw new Error(
            "REMORA_BIN is not set: build with `cargo build -p remora` and run " +
            "`REMORA_BIN=$CARGO_TARGET_DIR/debug/remora npm test` (scripts/test-all sets it)");
    }
    return bin;
}

/** A TCP port free right now on 127.0.0.1. */
export function freePort() {
    return new Promise((resolve, reject) => {
        const s = createServer();
        s.unref();
        s.on("error", reject);
        s.listen(0, "127.0.0.1", () => {
            const { port } = s.address();
            s.close(() => resolve(port));
        });
    });
}

function toml(bayeux) {
    const lines = ["[bayeux]"];
    for (const [k, v] of Object.entries(bayeux)) lines.push(`${k} = ${JSON.stringify(v)}`);
    lines.push("[services]", "echo = true", "handshake_ext = true");
    return lines.join("\n") + "\n";
}

/**
 * Starts a server. `bayeux` holds `[bayeux]` options (docs/bayeux.md).
 * Returns { url, port, stop(), restart(), stderr() }.
 */
export async function startServer(bayeux = {}) {
    const bin = remoraBin();
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), "remora-bayeux-"));
    const config = join(dir, "bayeux.toml");
    writeFileSync(config, toml({
        timeout_ms: 2000,
        max_sessions_per_browser: 100,
        ...bayeux,
    }));
    let child = null;
    let stderr = "";

    async function launch() {
        stderr = "";
        child = spawn(bin, ["bayeux", "--listen", `127.0.0.1:${port}`, "--config", config], {
            stdio: ["ignore", "ignore", "pipe"],
            env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" },
        });
        children.add(child);
        child.stderr.on("data", (d) => { stderr += d; });
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.exited = exited;
        const deadline = Date.now() + 20000;
        for (;;) {
            if (child.exitCode !== null) {
                throw new Error(`remora bayeux exited with ${child.exitCode}: ${stderr}`);
            }
            try {
                const r = await fetch(`http://127.0.0.1:${port}/health`);
                if (r.ok) return;
            } catch {
                // not listening yet
            }
            if (Date.now() > deadline) throw new Error(`remora bayeux did not start: ${stderr}`);
            await new Promise((r) => setTimeout(r, 25));
        }
    }

    async function stop() {
        if (!child) return;
        const c = child;
        child = null;
        if (c.exitCode === null) {
            c.kill("SIGKILL");
            await c.exited;
        }
        children.delete(c);
    }

    await launch();
    return {
        url: `http://127.0.0.1:${port}/cometd`,
        port,
        stop,
        async restart() {
            await stop();
            await launch();
        },
        async close() {
            await stop();
            rmSync(dir, { recursive: true, force: true });
        },
        stderr: () => stderr,
    };
}

/** Resolves when `predicate()` is true; fails after `ms`. */
export async function until(predicate, what, ms = 10000) {
    const deadline = Date.now() + ms;
    while (!predicate()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 10));
    }
}

/** A promise with its resolve/reject exposed. */
export function deferred() {
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    return { promise, resolve, reject };
}

/** Rejects if `promise` does not settle within `ms`. */
export function within(promise, ms, what) {
    let timer;
    return Promise.race([
        promise,
        new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
        }),
    ]).finally(() => clearTimeout(timer));
}
