"""permessage-deflate interop with Python `websockets` (tests/deflate.rs drives it).

Usage:
  deflate.py client HOST:PORT SIZES OFFER EXPECTED [OFFER EXPECTED]...
      For each pair, connects to a `ringws serve --deflate` echo server offering
      OFFER, checks that the server's Sec-WebSocket-Extensions answer is exactly EXPECTED (`-`: no
      extension), then echoes text and binary messages of the SIZES set (`small` or `full`, up to
      16 MiB) and fragmented messages. OFFER is `off` (no offer) or comma-separated parameters of one
      offer: `snct`, `cnct` (server/client_no_context_takeover), `smwb=N`, `cmwb` (bare, the
      default), `cmwb=N`, `nocmwb` (no client_max_window_bits).
  deflate.py feed HOST:PORT OFFER EXPECTED
      Subscribes to BTC-USD and ETH-USD on a `ringws serve --mode feed --deflate` server with OFFER,
      checks the agreed extension as above, and checks that 50 quotes arrive as valid JSON, every
      one in a compressed frame (RSV1).
  deflate.py server
      An echo server with websockets' default permessage-deflate on 127.0.0.1 and a free port, which
      it prints when ready. A text message `?extensions` is answered with the negotiated
      Sec-WebSocket-Extensions value (or `-`). Runs until killed.
With RINGWS_TLS_CA=FILE in the environment, `client` and `feed` connect over wss:// and verify
the server's certificate against that CA.
Exits 0 when every check passes; prints `ok: ...` per case.
"""

import asyncio
import json
import os
import random
import ssl
import sys

from websockets.asyncio.client import connect

# wss:// when a CA is given (tests/tls.rs), ws:// otherwise.
_CA = os.environ.get("RINGWS_TLS_CA")
TLS = ssl.create_default_context(cafile=_CA) if _CA else None
SCHEME = "wss" if _CA else "ws"
from websockets.asyncio.server import serve
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)

TIMEOUT = 30  # seconds for any single step
MIB = 1 << 20
SIZES = {
    "small": [0, 1, 125, 126, 255, 256, 1000, 65536, 300_000],
    "full": [0, 1, 125, 126, 255, 256, 1000, 65535, 65536, MIB, 16 * MIB],
}
# Sixteen letters: compresses about 2x, far from the server's inflate ratio guard.
ALPHABET = bytes.maketrans(bytes(range(256)), b"abcdefghijklmnop" * 16)


async def step(what, awaitable):
    try:
        return await asyncio.wait_for(awaitable, TIMEOUT)
    except asyncio.TimeoutError:
        raise AssertionError(f"{what}: no answer within {TIMEOUT} s") from None


def payload(n, seed):
    return random.Random(seed).randbytes(n).translate(ALPHABET)


def factory(offer):
    if offer == "off":
        return None
    kw = {"client_max_window_bits": True}
    for p in offer.split(","):
        name, _, value = p.partition("=")
        if name == "snct":
            kw["server_no_context_takeover"] = True
        elif name == "cnct":
            kw["client_no_context_takeover"] = True
        elif name == "smwb":
            kw["server_max_window_bits"] = int(value)
        elif name == "cmwb":
            kw["client_max_window_bits"] = int(value) if value else True
        elif name == "nocmwb":
            kw["client_max_window_bits"] = None
        elif name != "default":
            raise SystemExit(f"unknown offer parameter {p!r}")
    return ClientPerMessageDeflateFactory(**kw)


async def echo(ws, message, what):
    await ws.send(message)
    got = await step(what, ws.recv())
    assert type(got) is type(message), f"{what}: echoed as {type(got).__name__}"
    assert got == message, f"{what}: echo differs ({len(got)} bytes back)"


async def client_case(uri, offer, expected, sizes):
    f = factory(offer)
    extensions = [f] if f else None
    async with connect(uri, extensions=extensions, compression=None, max_size=None,
                       ping_interval=None, open_timeout=TIMEOUT, ssl=TLS) as ws:
        answer = ws.response.headers.get("Sec-WebSocket-Extensions") or "-"
        assert answer == expected, f"offer {offer!r}: answered {answer!r}, want {expected!r}"
        for i, n in enumerate(SIZES[sizes]):
            data = payload(n, i)
            await echo(ws, data.decode(), f"{offer}: text of {n} bytes")
            await echo(ws, data, f"{offer}: binary of {n} bytes")
        # Fragmented messages: the first frame carries RSV1, the others continue the stream.
        parts = [payload(n, 100 + n) for n in (0, 700, 1, 40_000, 300)]
        await ws.send([p.decode() for p in parts])
        got = await step(f"{offer}: fragmented text", ws.recv())
        assert got == b"".join(parts).decode(), f"{offer}: fragmented text differs"
        await ws.send(parts)
        got = await step(f"{offer}: fragmented binary", ws.recv())
        assert got == b"".join(parts), f"{offer}: fragmented binary differs"
        await step("close", ws.close(1000, "bye"))
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000, "close"
    print(f"ok: offer {offer} -> {expected}")


async def client(addr, sizes, pairs):
    assert len(pairs) % 2 == 0, "OFFER EXPECTED pairs"
    for offer, expected in zip(pairs[::2], pairs[1::2]):
        await client_case(f"{SCHEME}://{addr}/", offer, expected, sizes)


def record_rsv1():
    """Records, in order, whether each data frame received had RSV1 (was compressed)."""
    flags = []
    decode = PerMessageDeflate.decode

    def recording(self, frame, *, max_size=None):
        flags.append(frame.rsv1)
        return decode(self, frame, max_size=max_size)

    PerMessageDeflate.decode = recording
    return flags


async def feed(addr, offer, expected):
    rsv1 = record_rsv1()
    f = factory(offer)
    async with connect(f"{SCHEME}://{addr}/", extensions=[f] if f else None, compression=None,
                       ping_interval=None, open_timeout=TIMEOUT, ssl=TLS) as ws:
        answer = ws.response.headers.get("Sec-WebSocket-Extensions") or "-"
        assert answer == expected, f"offer {offer!r}: answered {answer!r}, want {expected!r}"
        await ws.send(json.dumps({"op": "subscribe", "symbols": ["BTC-USD", "ETH-USD"]}))
        seen, received = {}, 0
        while sum(seen.values()) < 50:
            msg = json.loads(await step("a quote", ws.recv()))
            received += 1
            if msg["type"] == "quote":
                seen[msg["symbol"]] = seen.get(msg["symbol"], 0) + 1
            else:
                assert msg["type"] == "subscribed", f"unexpected {msg}"
        assert set(seen) == {"BTC-USD", "ETH-USD"}, f"quotes of {seen}"
        # Frames are decoded ahead of recv(); the first `received` ones are the messages read.
        assert len(rsv1) >= received and all(rsv1[:received]), f"uncompressed frames: {rsv1}"
        await step("close", ws.close(1000, "bye"))
    print(f"ok: feed with offer {offer} -> {expected}: {seen}")


async def server():
    async def handler(ws):
        async for message in ws:
            if message == "?extensions":
                await ws.send(ws.response.headers.get("Sec-WebSocket-Extensions") or "-")
            else:
                await ws.send(message)

    async with serve(handler, "127.0.0.1", 0, max_size=None, ping_interval=None) as s:
        print(s.sockets[0].getsockname()[1], flush=True)
        await asyncio.sleep(120)


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "client":
        asyncio.run(client(sys.argv[2], sys.argv[3], sys.argv[4:]))
    elif len(sys.argv) == 5 and sys.argv[1] == "feed":
        asyncio.run(feed(*sys.argv[2:]))
    elif sys.argv[1:] == ["server"]:
        asyncio.run(server())
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
