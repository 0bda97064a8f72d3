// Faye 1.4 Bayeux server for `cargo run --release -p remora-bench -- bayeux`.
// Usage: node server.mjs PORT   (serves Bayeux at /cometd on 127.0.0.1:PORT)
import http from 'node:http';
import faye from 'faye';

const port = Number(process.argv[2] || 8000);
// timeout: seconds a /meta/connect is held (Faye defaults to 45; 30 is
// remora bayeux's default timeout_ms).
const bayeux = new faye.NodeAdapter({ mount: '/cometd', timeout: 30 });
const server = http.createServer((req, res) => {
  res.writeHead(404, { 'content-type': 'text/plain' });
  res.end('not found\n');
});
bayeux.attach(server);
server.listen(port, '127.0.0.1', () => {
  console.log(`faye listening on 127.0.0.1:${port}/cometd`);
});
const stop = () => process.exit(0);
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
