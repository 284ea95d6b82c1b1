#!/usr/bin/env python3
"""Writes the fuzz seeds: valid (and a few just-invalid) inputs for every target, in the layout of
`src/lib.rs` (`[settings, n, n cut bytes, data]`; the handshake target takes raw bytes).

Run from anywhere: `python3 protocol/fuzz/seeds/make_seeds.py`. It rewrites seeds/<target>/ for the
receiver, utf8 and inflate targets and adds the generated handshake seeds next to the captured ones.
Deterministic: the same files every run (fixed masking keys, zlib at fixed levels).
"""
import base64
import hashlib
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode, payload=b"", fin=True, rsv=0, key=None, length=None):
    """One frame; `key` masks it (client to server); `length` overrides the declared length."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    mask_bit = 0x80 if key else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack(">Q", n)
    if key:
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


def deflate_messages(messages, wbits=15, takeover=True, level=6):
    """permessage-deflate payloads (RFC 7692 §7.2.1: sync flush, the 00 00 ff ff tail removed)."""
    out, comp = [], None
    for msg in messages:
        if comp is None or not takeover:
            comp = zlib.compressobj(level, zlib.DEFLATED, -wbits)
        data = comp.compress(msg) + comp.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(b"\x00\x00\xff\xff")
        out.append(data[:-4])
    return out


def write(target, name, data):
    path = os.path.join(HERE, target, name)
    with open(path, "wb") as f:
        f.write(data)


def layout(settings, data, cuts=b""):
    return bytes([settings, len(cuts)]) + cuts + data


def clear(target):
    """Removes the generated seeds of `target`; inputs a fuzzer once failed on (regress_*) stay."""
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(d):
        if not name.startswith("regress_"):
            os.remove(os.path.join(d, name))


def receiver():
    clear("receiver")
    keys = [bytes([0x37, 0xFA, 0x21, 0x3D]), bytes([0x01, 0x02, 0x03, 0x04]), bytes([0xA5] * 4)]

    def stream(frames_, masked):
        out = b""
        for i, (args, kw) in enumerate(frames_):
            out += frame(*args, key=keys[i % 3] if masked else None, **kw)
        return out

    def f(*args, **kw):
        return (args, kw)

    utf8 = "κόσμε € 𝄞 ߿".encode()
    plain = {
        "hello": [f(1, b"Hello")],
        "binary_300": [f(2, bytes(range(256)) + bytes(44))],
        "binary_1000": [f(2, bytes(i * 7 % 251 for i in range(1000)))],
        "empty_frames": [f(1), f(2), f(9), f(10), f(8)],
        "fragments_ping": [f(1, b"Hel", fin=False), f(9, b"ping"), f(0, b"lo, ", fin=False),
                           f(10, b""), f(0, b"world")],
        "utf8_split": [f(1, utf8[:3], fin=False), f(0, utf8[3:10], fin=False), f(0, utf8[10:])],
        "close_reason": [f(2, b"x"), f(8, struct.pack(">H", 1001) + "going away ✓".encode())],
        "close_1000": [f(8, struct.pack(">H", 1000))],
        "length_2p63": [f(2, b"", length=(1 << 63) - 1)],
        "length_over_limit": [f(2, b"", length=1 << 17)],
        "many_tiny_fragments": [f(2, b"a", fin=False)] + [f(0, b"b", fin=False)] * 60 + [f(0, b"c")],
    }
    for name, frames_ in plain.items():
        write("receiver", f"server_{name}", layout(0, stream(frames_, True)))
        write("receiver", f"client_{name}", layout(1, stream(frames_, False)))
    # The same streams cut into small receive buffers (1, 5, 2, 3 bytes, cycled).
    for name in ("fragments_ping", "utf8_split", "binary_300"):
        write("receiver", f"server_{name}_cut", layout(0, stream(plain[name], True), b"\x00\x04\x01\x02"))

    # permessage-deflate (settings bit 1; bit 2: no context takeover): RSV1 on the first frame only.
    msgs = [b"Hello", b"Hello", b"Hello, Hello, Hello, Hello, Hello!" * 20, utf8]
    comp = deflate_messages(msgs)
    fresh = deflate_messages(msgs, takeover=False)
    deflated = [f(1, comp[0], rsv=4), f(1, comp[1], rsv=4), f(2, comp[2], rsv=4), f(1, comp[3], rsv=4)]
    write("receiver", "server_deflate_takeover", layout(2, stream(deflated, True)))
    write("receiver", "client_deflate_takeover", layout(3, stream(deflated, False)))
    fresh_frames = [f(1, m, rsv=4) for m in fresh]
    write("receiver", "server_deflate_no_takeover", layout(6, stream(fresh_frames, True)))
    c = deflate_messages([msgs[2]])[0]
    fragmented = [f(2, c[:5], rsv=4, fin=False), f(9, b"p"), f(0, c[5:20], fin=False), f(0, c[20:]),
                  f(1, b"uncompressed"), f(8, struct.pack(">H", 1000))]
    write("receiver", "server_deflate_fragmented", layout(2, stream(fragmented, True)))
    write("receiver", "server_deflate_fragmented_cut", layout(2, stream(fragmented, True), b"\x02\x00\x06"))
    # RFC 7692 §7.2.3.1 and §7.2.3.2: "Hello" compressed, unfragmented and in two fragments.
    rfc = [f(1, bytes.fromhex("f248cdc9c90700"), rsv=4),
           f(1, bytes.fromhex("f248cd"), rsv=4, fin=False), f(0, bytes.fromhex("c9c90700"))]
    write("receiver", "client_deflate_rfc7692", layout(3, stream(rfc, False)))
    # A compression bomb: 256 KiB of zeros in a few hundred bytes (1009 at the inflated limit).
    bomb = deflate_messages([bytes(1 << 18)], level=9)[0]
    write("receiver", "server_deflate_bomb", layout(2, stream([f(2, bomb, rsv=4)], True)))


def utf8():
    clear("utf8")
    text = "κόσμε € 𝄞 ߿ ࠀ \ufffd 􏿿 ascii".encode()
    write("utf8", "mixed", layout(0, text))
    write("utf8", "mixed_cut_1", layout(0, text, b"\x00"))
    write("utf8", "mixed_cut_mid", layout(0, text, b"\x02\x00\x04"))
    write("utf8", "ascii_long", layout(0, b"The quick brown fox jumps over the lazy dog. " * 8, b"\x3f"))
    for name, bad in {
        "overlong": b"ok \xc0\xaf",
        "surrogate": b"ok \xed\xa0\x80 more",
        "over_max": b"\xf4\x90\x80\x80",
        "truncated": "ok 𝄞".encode()[:-1],
        "bad_continuation": b"\xe2\x82(",
    }.items():
        write("utf8", name, layout(0, bad, b"\x01"))


def inflate():
    clear("inflate")

    def msgs(parts):
        return b"".join(struct.pack(">H", len(p)) + p for p in parts)

    texts = [b"Hello", b"Hello", b'{"symbol":"BTC-USD","bid":64000.5,"ask":64001.0}' * 4, bytes(range(256))]
    # settings: window 9 + s % 7 (6 -> 15), 0x08 no context takeover, 0x10 ratio guard.
    write("inflate", "takeover_w15", layout(6, msgs(deflate_messages(texts))))
    write("inflate", "takeover_w15_cut", layout(6, msgs(deflate_messages(texts)), b"\x00\x03\x01"))
    write("inflate", "no_takeover_w15", layout(6 | 8, msgs(deflate_messages(texts, takeover=False))))
    write("inflate", "takeover_w10", layout(1, msgs(deflate_messages(texts, wbits=10))))
    write("inflate", "stored_level0", layout(6, msgs(deflate_messages(texts, level=0))))
    write("inflate", "rfc7692_hello", layout(6, msgs([bytes.fromhex("f248cdc9c90700")] * 2)))
    # Over the target's 128 KiB limit; under it but past the ratio guard's 64 KiB floor at ratio 1.
    bomb = deflate_messages([bytes(1 << 18)], level=9)
    write("inflate", "bomb_limit", layout(6, msgs(bomb)))
    write("inflate", "bomb_ratio", layout(6 | 0x10, msgs(deflate_messages([bytes(100000)], level=9))))


def handshake():
    # Captured browser requests (chrome, firefox, plain_get, response) are kept; these add the
    # handshake shapes the parsers branch on.
    key = base64.b64encode(b"fuzzfuzzfuzzfuzz")
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    write("handshake", "response_deflate", (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: chat\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
        "client_max_window_bits=10\r\n\r\n").encode())
    write("handshake", "request_offers", (
        "GET /feed?token=abc.def&x=%20y HTTP/1.1\r\nHost: [::1]:9001\r\nUpgrade: WebSocket\r\n"
        "Connection: keep-alive, upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nOrigin: https://app.example.com\r\n"
        "Cookie: session=s3cr3t; theme=dark\r\nSec-WebSocket-Protocol: v2.feed, v1.feed\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits; "
        "server_max_window_bits=12, permessage-deflate; server_no_context_takeover, x-unknown\r\n"
        "\r\n").encode())
    write("handshake", "request_bad_version", (
        "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n").encode())


if __name__ == "__main__":
    receiver()
    utf8()
    inflate()
    handshake()
