// Helpers for tests that run `remora demo` and drive it in Chromium.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { existsSync } from 'node:fs';

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync',
];

/** The remora binary, from REMORA_BIN (set by scripts/test-all). */
export function remoraBin() {
  const bin = process.env.REMORA_BIN;
  if (!bin || !existsSync(bin)) throw new Error('REMORA_BIN is not set to a built remora binary (run scripts/test-all, or cargo build -p remora and export REMORA_BIN)');
  return bin;
}

/** Why browser tests cannot run here, or null. Fails instead when services are required. */
export function browserSkipReason() {
  if (existsSync(CHROMIUM)) return null;
  const reason = `no Chromium at ${CHROMIUM} (apt-get install chromium)`;
  if (process.env.REMORA_REQUIRE_SERVICES === '1') throw new Error(`REMORA_REQUIRE_SERVICES=1 but ${reason}`);
  console.log(`# skipping browser tests: ${reason}`);
  return reason;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Polls `check` until it returns truthy, at most `ms`. */
export async function until(check, ms, what) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

/** Starts `remora demo` on a free port; resolves when every shop is healthy. */
export async function startDemo(extra = []) {
  const port = await freePort();
  const child = spawn(remoraBin(), ['demo', '--port', String(port), ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.on('data', (d) => { log += d; if (log.length > 200000) log = log.slice(-100000); });
  const url = `http://127.0.0.1:${port}`;
  const stop = () => new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once('exit', resolve);
    child.kill('SIGTERM');
  });
  try {
    await until(async () => {
      const res = await fetch(`${url}/api/cluster`);
      const c = await res.json();
      return c.servers.length > 0 && c.servers.every((s) => s.healthy);
    }, 20000, 'the demo to start');
  } catch (e) {
    await stop();
    throw new Error(`${e.message}\n${log}`);
  }
  return { url, child, stop, log: () => log };
}

/** Resolves when the balancer reports server `name` down. */
export function serverDown(url, name) {
  return until(async () => {
    const c = await (await fetch(`${url}/api/cluster`)).json();
    return c.servers.some((s) => s.name === name && !s.healthy);
  }, 10000, `${name} to be reported down`);
}

/** Resolves when every server of the demo is healthy and ready. */
export function allReady(url) {
  return until(async () => {
    const c = await (await fetch(`${url}/api/cluster`)).json();
    return c.servers.length > 0 && c.servers.every((s) => s.healthy && s.state === 'ready');
  }, 15000, 'every server healthy and ready');
}
