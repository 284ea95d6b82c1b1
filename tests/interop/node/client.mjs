// Interop client: Node `ws` against a live `ringws serve`.
//
// Usage: node client.mjs HOST:PORT [CA_FILE]. With CA_FILE the checks run over wss:// (TLS, the
// server's certificate verified against that CA). Exits 0 when every check passes; on failure prints which check
// failed and exits 1. Every wait is bounded by a timeout, and the whole run by a global one.

import { readFileSync } from 'node:fs';
import WebSocket from 'ws';

const TIMEOUT_MS = 20_000;
const addr = process.argv[2];
if (!addr) {
  console.error('usage: node client.mjs HOST:PORT');
  process.exit(2);
}
const caFile = process.argv[3];
const url = `${caFile ? 'wss' : 'ws'}://${addr}/interop`;
const tls = caFile ? { ca: readFileSync(caFile) } : {};
setTimeout(() => {
  console.error('interop run exceeded 60 s');
  process.exit(1);
}, 60_000).unref();

function assert(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

/** Resolves with the first `event` on `ws` (its arguments as an array), rejects after the timeout. */
function once(ws, event, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: no '${event}' within ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
    ws.once(event, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
    ws.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`${what}: ${err.message}`));
    });
  });
}

async function open() {
  // The client offers permessage-deflate by default: the server must decline it.
  const ws = new WebSocket(url, { maxPayload: 4 << 20, handshakeTimeout: TIMEOUT_MS, ...tls });
  await once(ws, 'open', 'open');
  assert(ws.extensions === '', `server accepted extensions '${ws.extensions}'`);
  return ws;
}

async function echoChecks() {
  const ws = await open();
  for (const text of ['', 'hello', 'κόσμε 😀', 'x'.repeat(65536), 't'.repeat(1 << 20)]) {
    ws.send(text);
    const [data, isBinary] = await once(ws, 'message', `text echo of ${text.length}`);
    assert(!isBinary, 'text echoed as binary');
    assert(data.toString('utf8') === text, `text echo of ${text.length} chars differs`);
  }
  for (const len of [0, 3, 65536, 1 << 20]) {
    const bin = Buffer.alloc(len, 0).map((_, i) => (i * 31 + 7) & 0xff);
    ws.send(bin);
    const [data, isBinary] = await once(ws, 'message', `binary echo of ${len}`);
    assert(isBinary, 'binary echoed as text');
    assert(Buffer.compare(data, bin) === 0, `binary echo of ${len} bytes differs`);
  }
  // A fragmented message: ws sends each send() with fin=false as one fragment.
  ws.send('frag', { fin: false });
  ws.send('mented', { fin: false });
  ws.send(' text', { fin: true });
  const [frag] = await once(ws, 'message', 'fragmented echo');
  assert(frag.toString() === 'fragmented text', `fragmented echo '${frag}'`);
  ws.ping(Buffer.from('interop ping'));
  const [pong] = await once(ws, 'pong', 'pong');
  assert(pong.toString() === 'interop ping', `pong payload '${pong}'`);
  ws.close(1000, 'bye');
  const [code] = await once(ws, 'close', 'close 1000');
  assert(code === 1000, `close code ${code}, want 1000`);
  console.log('ok: echo (text, binary up to 1 MiB, fragmented), ping/pong, close 1000');
}

async function unmaskedCheck() {
  const ws = await open();
  // `mask: false` makes ws send an unmasked client frame: a protocol error the server must fail.
  ws.send('unmasked', { mask: false });
  const [code] = await once(ws, 'close', 'close 1002');
  assert(code === 1002, `close code ${code}, want 1002`);
  console.log('ok: unmasked client frame -> 1002');
}

try {
  await echoChecks();
  await unmaskedCheck();
} catch (err) {
  console.error(err.message);
  process.exit(1);
}
