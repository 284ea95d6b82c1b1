// The feed's browser client (src/feed/client.js) under Node, against a live `ringws serve --mode
// feed`, with the `ws` package standing in for the browser's WebSocket: the client's own logic
// (reconnect, resume with `since`, onRecovered / onSnapshot / onGap) on a real server.
//
// Usage: node feed_client.mjs HOST:PORT CLIENT_JS SYMBOL. Subscribes to SYMBOL, reads 20 quotes,
// destroys the TCP connection, waits until the client has reconnected and read 20 more quotes (after
// the 5th of them it subscribes to SYMBOL again, which the server answers `already_subscribed`:
// the subscription goes on, no snapshot), then prints one JSON line: {"states": [...], "recovered": [...], "snapshots": [...], "gaps":
// [...], "seqs": [...], "stats": {...}}. Bounded by a 30 s global timeout.

import WebSocket from 'ws';

const [addr, clientJs, symbol] = process.argv.slice(2);
setTimeout(() => {
  console.error('feed_client run exceeded 30 s');
  process.exit(1);
}, 30_000).unref();

globalThis.WebSocket = WebSocket;
globalThis.location = { protocol: 'http:', host: addr };
const { FeedClient } = await import(clientJs);

const out = { states: [], recovered: [], snapshots: [], gaps: [], seqs: [] };
let dropped = false;
let after = 0;
await new Promise((resolve) => {
  const feed = new FeedClient({
    symbols: [symbol],
    minDelay: 50,
    maxDelay: 200,
    onState: (state) => out.states.push(state),
    onRecovered: (r) => out.recovered.push(r),
    onSnapshot: (s) => out.snapshots.push({ symbol: s.symbol, reason: s.reason }),
    onGap: (g) => out.gaps.push(g),
    onQuote: (q) => {
      out.seqs.push(q.seq);
      if (!dropped && out.seqs.length === 20) {
        dropped = true;
        feed.ws._socket.destroy(); // the network goes away: no close frame
      } else if (dropped && ++after === 5) {
        feed.sendSubscribe([symbol]);
      } else if (dropped && after === 20) {
        out.stats = feed.stats;
        feed.close();
        resolve();
      }
    },
  });
});
console.log(JSON.stringify(out));
process.exit(0);
