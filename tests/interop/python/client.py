"""Interop client: Python `websockets` (asyncio API) against a live `ringws serve`.

Usage: client.py HOST:PORT [CA_FILE]. With CA_FILE the checks run over wss:// (TLS, the server's
certificate verified against that CA, TLS 1.3 and then TLS 1.2). Exits 0 when every check passes; on failure prints which check failed and
exits non-zero. Every wait is bounded by a timeout.
"""

import asyncio
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

TIMEOUT = 20  # seconds for any single step
MIB = 1 << 20


async def step(what, awaitable):
    try:
        return await asyncio.wait_for(awaitable, TIMEOUT)
    except asyncio.TimeoutError:
        raise AssertionError(f"{what}: no answer within {TIMEOUT} s") from None


async def echo_checks(uri, tls):
    # The default client offers permessage-deflate: the server must decline it and echo uncompressed.
    async with connect(uri, max_size=4 * MIB, ping_interval=None, open_timeout=TIMEOUT, ssl=tls) as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None, "server accepted an extension"
        for message in ["", "hello", "κόσμε 😀", "x" * 65536, "t" * MIB]:
            await ws.send(message)
            got = await step(f"text echo of {len(message)} chars", ws.recv())
            assert isinstance(got, str), f"text echoed as {type(got).__name__}"
            assert got == message, f"text echo of {len(message)} chars differs"
        for message in [b"", b"\x00\xff\x80", bytes(range(256)) * 256, bytes(i % 251 for i in range(MIB))]:
            await ws.send(message)
            got = await step(f"binary echo of {len(message)} bytes", ws.recv())
            assert isinstance(got, bytes), f"binary echoed as {type(got).__name__}"
            assert got == message, f"binary echo of {len(message)} bytes differs"
        # A fragmented message (an iterable of fragments) comes back whole.
        await ws.send(["frag", "mented", " text"])
        got = await step("fragmented echo", ws.recv())
        assert got == "fragmented text", f"fragmented echo: {got!r}"
        pong = await ws.ping(b"interop ping")
        await step("pong", pong)
        await step("close", ws.close(1000, "bye"))
        assert ws.protocol.close_rcvd is not None, "no Close received"
        assert ws.protocol.close_rcvd.code == 1000, f"close code {ws.protocol.close_rcvd.code}"


async def invalid_utf8_check(uri, tls):
    # `text=True` sends the bytes as a Text frame without validating them: the server must answer 1007.
    async with connect(uri, ping_interval=None, open_timeout=TIMEOUT, ssl=tls) as ws:
        await ws.send(b"valid \xce\xba then invalid \xed\xa0\x80", text=True)
        try:
            got = await step("1007 close", ws.recv())
        except ConnectionClosedError:
            pass
        else:
            raise AssertionError(f"invalid UTF-8 was answered with a message: {got!r}")
        assert ws.protocol.close_rcvd is not None, "connection dropped without a Close"
        assert ws.protocol.close_rcvd.code == 1007, f"close code {ws.protocol.close_rcvd.code}, want 1007"


def tls_context(ca, version):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


async def main(addr, ca):
    if ca is None:
        runs = [("ws", None, "")]
    else:
        runs = [
            ("wss", tls_context(ca, ssl.TLSVersion.TLSv1_3), " over TLS 1.3"),
            ("wss", tls_context(ca, ssl.TLSVersion.TLSv1_2), " over TLS 1.2"),
        ]
    for scheme, tls, over in runs:
        uri = f"{scheme}://{addr}/interop"
        await echo_checks(uri, tls)
        print(f"ok: echo (text, binary up to 1 MiB, fragmented), ping, close 1000{over}")
        await invalid_utf8_check(uri, tls)
        print(f"ok: invalid UTF-8 text -> 1007{over}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: client.py HOST:PORT [CA_FILE]")
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None))
