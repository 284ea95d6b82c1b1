// ringws market feed: the browser client, served at /client.js. Plain modern JavaScript (an ES
// module), no build step, no dependencies.
//
//   import { FeedClient } from "/client.js";
//   const feed = new FeedClient({
//     symbols: ["BTC-USD", "ETH-USD"],
//     onQuote: (q) => console.log(q.symbol, q.bid, q.ask, q.seq),
//     onGap: (g) => console.warn("missed", g.symbol, g.from, "to", g.to, g.conflated ? "(conflated)" : ""),
//     onSnapshot: (s) => console.info("resnapshot", s.symbol, s.reason),
//     onState: (state, info) => console.log(state, info),
//   });
//
// It connects, subscribes, and when the connection drops it reconnects with exponential backoff
// and jitter, then subscribes again with `since`: the position (epoch, seq) of the last quote it
// got of each symbol. The feed answers per symbol whether it could replay what was missed
// (`recovered`): if so, the quotes after that position follow with no gap and no duplicate;
// if not (too old for the history, a restarted ticker's new epoch, no history), the symbol's last
// quote follows as a snapshot (`onSnapshot`), then live ones. A gap in `seq` within an epoch
// outside those two cases calls `onGap` (`conflated: true` when the quote says it replaced others
// because this client was reading too slowly).

/** Quotes as the feed sends them: JSON text, or binary frames (`--binary`), little-endian:
 *  ts u64 | seq u64 | epoch u64 | bid f64 | ask f64 | n u8 (bit 7: conflated) | symbol (n bytes). */
export function decodeQuote(data) {
  if (typeof data === "string") return JSON.parse(data);
  const v = new DataView(data);
  const n = v.getUint8(40) & 0x7f;
  return {
    conflated: (v.getUint8(40) & 0x80) !== 0,
    type: "quote",
    ts: Number(v.getBigUint64(0, true)),
    seq: Number(v.getBigUint64(8, true)),
    epoch: v.getBigUint64(16, true).toString(16).padStart(16, "0"),
    bid: v.getFloat64(24, true),
    ask: v.getFloat64(32, true),
    symbol: new TextDecoder().decode(new Uint8Array(data, 41, n)),
  };
}

/** The wait before reconnect attempt `attempt` (1, 2, ...): `min` doubling up to `max`, of which
 *  a random half is waited ("equal jitter"), so that clients dropped together do not all come
 *  back at the same instant. */
export function backoff(attempt, min, max) {
  const full = Math.min(max, min * 2 ** Math.min(attempt - 1, 30));
  return full / 2 + Math.random() * (full / 2);
}

export class FeedClient {
  /**
   * @param {object} o
   * @param {string[]} o.symbols  symbols to subscribe to
   * @param {string} [o.url]      the feed's WebSocket URL (default: this page's host)
   * @param {number} [o.minDelay] first reconnect delay in ms (default 250)
   * @param {number} [o.maxDelay] longest reconnect delay in ms (default 10000)
   * @param {(q: object) => void} [o.onQuote]    every quote, in order, replayed ones included
   * @param {(g: object) => void} [o.onGap]      {symbol, from, to, conflated}: quotes not received
   * @param {(s: object) => void} [o.onSnapshot] {symbol, reason, quote}: a fresh start for a symbol
   * @param {(r: object) => void} [o.onRecovered] {symbol, replayed}: a resume that lost nothing
   * @param {(state: string, info: object) => void} [o.onState]
   *        "connecting", "open", "reconnecting" ({delay, attempt}), "closed"
   */
  constructor(o) {
    this.url = o.url ?? `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
    this.symbols = new Set(o.symbols ?? []);
    this.minDelay = o.minDelay ?? 250;
    this.maxDelay = o.maxDelay ?? 10000;
    this.on = {
      quote: o.onQuote ?? (() => {}),
      gap: o.onGap ?? (() => {}),
      snapshot: o.onSnapshot ?? (() => {}),
      recovered: o.onRecovered ?? (() => {}),
      state: o.onState ?? (() => {}),
      error: o.onError ?? ((reason) => console.warn("feed:", reason)),
    };
    /** symbol -> {epoch, seq} of the last quote received */
    this.positions = new Map();
    /** symbol -> why its next quote is a snapshot */
    this.snapshotDue = new Map();
    this.stats = { connects: 0, recovered: 0, replayed: 0, snapshots: 0, gaps: 0 };
    this.attempt = 0;
    this.stopped = false;
    this.timer = null;
    // After the constructor returns, so that callbacks may use the client object.
    queueMicrotask(() => this.connect());
  }

  /** Adds symbols (subscribed at once if connected). */
  subscribe(symbols) {
    const fresh = symbols.filter((s) => !this.symbols.has(s));
    fresh.forEach((s) => this.symbols.add(s));
    if (fresh.length && this.ws?.readyState === WebSocket.OPEN) this.sendSubscribe(fresh);
  }

  /** Removes symbols. */
  unsubscribe(symbols) {
    symbols.forEach((s) => { this.symbols.delete(s); this.positions.delete(s); });
    if (this.ws?.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ op: "unsubscribe", symbols }));
    }
  }

  /** Closes the connection for good. */
  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.ws?.close(1000);
    this.on.state("closed", {});
  }

  connect() {
    this.on.state("connecting", { attempt: this.attempt });
    const ws = new WebSocket(this.url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      this.stats.connects++;
      this.on.state("open", { reconnect: this.stats.connects > 1 });
      if (this.symbols.size) this.sendSubscribe([...this.symbols]);
    };
    ws.onmessage = (e) => this.message(decodeQuote(e.data));
    ws.onclose = () => {
      if (this.ws !== ws || this.stopped) return;
      this.attempt++;
      const delay = backoff(this.attempt, this.minDelay, this.maxDelay);
      this.on.state("reconnecting", { delay, attempt: this.attempt });
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }

  sendSubscribe(symbols) {
    const since = {};
    for (const s of symbols) {
      const p = this.positions.get(s);
      if (p) since[s] = { epoch: p.epoch, seq: p.seq };
    }
    this.ws.send(JSON.stringify({ op: "subscribe", symbols, since }));
  }

  message(m) {
    if (m.type === "quote") return this.quote(m);
    if (m.type === "subscribed") {
      this.attempt = 0; // the link works: the next drop starts from the shortest delay
      for (const s of m.symbols) {
        const r = m.recovered?.[s];
        if (r?.recovered) {
          this.stats.recovered++;
          this.stats.replayed += r.replayed;
          this.on.recovered({ symbol: s, replayed: r.replayed });
        } else if (r?.reason === "already_subscribed") {
          // The subscription this connection holds goes on unchanged: nothing starts afresh.
        } else {
          // The symbol's next quote starts afresh: its last quote (snapshot), or the next live one.
          this.snapshotDue.set(s, r ? r.reason : "new");
        }
      }
    } else if (m.type === "error") {
      this.on.error(m.reason);
    }
  }

  quote(q) {
    const last = this.positions.get(q.symbol);
    const due = this.snapshotDue.get(q.symbol);
    if (due !== undefined) {
      this.snapshotDue.delete(q.symbol);
      if (due !== "new") {
        this.stats.snapshots++;
        this.on.snapshot({ symbol: q.symbol, reason: due, quote: q });
      }
    } else if (last && last.epoch === q.epoch) {
      if (q.seq <= last.seq) return; // already seen (e.g. a node behind the one left)
      if (q.seq > last.seq + 1) {
        this.stats.gaps++;
        this.on.gap({ symbol: q.symbol, from: last.seq + 1, to: q.seq - 1, conflated: q.conflated === true });
      }
    } else if (last) {
      // Another epoch without a resubscribe: the ticker restarted while we were connected.
      this.stats.snapshots++;
      this.on.snapshot({ symbol: q.symbol, reason: "other_epoch", quote: q });
    }
    this.positions.set(q.symbol, { epoch: q.epoch, seq: q.seq });
    this.on.quote(q);
  }
}
