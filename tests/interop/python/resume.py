"""The market feed's resume protocol from an independent client (Python `websockets`), for tests/feed.rs.

    resume.py resume ADDR SYMBOL READ AHEAD N [ADDR2]
        Subscribes to SYMBOL, reads READ of its quotes (the last seq read is K), drops the TCP
        connection (no close frame), then, if AHEAD > 0, watches the symbol on a second connection
        (to ADDR2 if given, else ADDR) until the feed is at least AHEAD quotes past K; reconnects
        (to ADDR2 if given: another node) and subscribes with `since` = (epoch, K), and prints one
        JSON line: {"before": [epoch, K], "reply": <the subscribed reply>, "quotes": [[epoch, seq],
        ...]} with the next N quotes of SYMBOL.
    resume.py since ADDR SYMBOL EPOCH SEQ N
        Subscribes with `since` = (EPOCH, SEQ) and prints {"reply": ..., "quotes": [...]}.
    resume.py position ADDR SYMBOL
        Prints {"epoch": ..., "seq": ...} of a quote of SYMBOL.
    resume.py latency ADDR SYMBOL BEHIND RUNS
        RUNS times: reads a quote (seq K), drops the connection, waits (watching on a second
        connection) until the feed is at least BEHIND quotes past K, then times a reconnect with
        `since` K up to the last replayed quote (where the feed was when it answered: the client
        has caught up), and, as the baseline, a fresh subscribe up to its first quote (the
        snapshot). Prints {"ms": [...], "replayed": [...], "fresh_ms": [...]} (used by
        benches/resume.sh).

Every read has a timeout; the script fails (exit status 1, message on stderr) on anything else.
"""

import contextlib
import json
import socket
import sys
import time

from websockets.sync.client import connect

TIMEOUT = 10
# Every connection, closed when the script ends.
OPEN = contextlib.ExitStack()


def quotes(ws, symbol):
    """Yields (epoch, seq, message) of SYMBOL's quotes; other messages must not come."""
    while True:
        m = json.loads(ws.recv(timeout=TIMEOUT))
        if m.get("type") != "quote":
            raise SystemExit(f"expected a quote, got {m}")
        if m["symbol"] == symbol:
            yield m["epoch"], m["seq"], m


def subscribe(addr, symbol, since=None):
    ws = OPEN.enter_context(connect(f"ws://{addr}/", open_timeout=TIMEOUT, max_size=1 << 20))
    msg = {"op": "subscribe", "symbols": [symbol]}
    if since is not None:
        msg["since"] = {symbol: {"epoch": since[0], "seq": since[1]}}
    ws.send(json.dumps(msg))
    reply = json.loads(ws.recv(timeout=TIMEOUT))
    if reply.get("type") != "subscribed":
        raise SystemExit(f"expected the subscribed reply, got {reply}")
    return ws, reply


def drop(ws):
    """Ends the TCP connection abruptly, as a lost network does (no close frame)."""
    try:
        ws.socket.shutdown(socket.SHUT_RDWR)
    finally:
        ws.close_socket()


def take(ws, symbol, n):
    out = []
    for epoch, seq, _ in quotes(ws, symbol):
        out.append([epoch, seq])
        if len(out) == n:
            return out


def main():
    mode, addr, symbol = sys.argv[1:4]
    if mode == "resume":
        read, ahead, n = (int(a) for a in sys.argv[4:7])
        again = sys.argv[7] if len(sys.argv) > 7 else addr
        ws, _ = subscribe(addr, symbol)
        got = take(ws, symbol, read)
        (epoch, k) = got[-1]
        drop(ws)
        if ahead > 0:
            watch, _ = subscribe(again, symbol)
            for _, seq, _ in quotes(watch, symbol):
                if seq >= k + ahead:
                    break
            watch.close()
        ws, reply = subscribe(again, symbol, (epoch, k))
        print(json.dumps({"before": [epoch, k], "reply": reply, "quotes": take(ws, symbol, n)}))
        ws.close()
    elif mode == "since":
        epoch, seq, n = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
        ws, reply = subscribe(addr, symbol, (epoch, seq))
        print(json.dumps({"reply": reply, "quotes": take(ws, symbol, n)}))
        ws.close()
    elif mode == "latency":
        behind, runs = int(sys.argv[4]), int(sys.argv[5])
        out, replayed, fresh = [], [], []
        for _ in range(runs):
            ws, _ = subscribe(addr, symbol)
            [(epoch, k)] = take(ws, symbol, 1)
            drop(ws)
            watch, _ = subscribe(addr, symbol)
            for _, seq, _ in quotes(watch, symbol):
                if seq >= k + behind:
                    break
            watch.close()
            start = time.perf_counter()
            ws, reply = subscribe(addr, symbol, (epoch, k))
            r = reply["recovered"][symbol]
            if not r["recovered"]:
                raise SystemExit(f"not recovered: {reply}")
            take(ws, symbol, r["replayed"])
            out.append((time.perf_counter() - start) * 1000)
            replayed.append(r["replayed"])
            ws.close()
            start = time.perf_counter()
            ws, _ = subscribe(addr, symbol)
            take(ws, symbol, 1)
            fresh.append((time.perf_counter() - start) * 1000)
            ws.close()
        print(json.dumps({"ms": out, "replayed": replayed, "fresh_ms": fresh}))
    elif mode == "position":
        ws, _ = subscribe(addr, symbol)
        epoch, seq, _ = next(quotes(ws, symbol))
        print(json.dumps({"epoch": epoch, "seq": seq}))
        ws.close()
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    with OPEN:
        main()
