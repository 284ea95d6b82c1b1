"""Fixes a Python 3 quirk of kosoku 0.1.0's copy of Autobahn's case12_x_x.py (cases 12.* and 13.*).

kosoku drives the original Autobahn|Testsuite case files (written for Python 2). In
case12_x_x.py, `onMessage` hashes the echoed message with `hashlib.sha1().update(msg)`; under
Python 3 the message arrives as `str`, which hashlib refuses ("Strings must be encoded before
hashing"), so every 12.*/13.* case would fail in the test tool, not in the server. The fix encodes
the message back to bytes first: UTF-8 for text, latin-1 for binary (a byte-for-byte round trip),
exactly what the case sent.

Run by scripts/test.sh after the venv is set up; idempotent (a patched file is left as it is).
Usage: patch_kosoku.py  (patches the kosoku installed for this interpreter)
"""

import pathlib
import sys

import kosoku

MARKER = "# ringws: str -> bytes (Python 3)"
OLD = "def onMessage(self, msg, binary):\n   m = hashlib.sha1()"
NEW = (
    "def onMessage(self, msg, binary):\n"
    f"   {MARKER}\n"
    "   if isinstance(msg, str):\n"
    "      msg = msg.encode('latin-1' if binary else 'utf-8')\n"
    "   m = hashlib.sha1()"
)


def main() -> int:
    path = pathlib.Path(kosoku.__file__).parent / "cases" / "case12_x_x.py"
    text = path.read_text()
    if MARKER in text:
        return 0
    if OLD not in text:
        print(f"patch_kosoku: {path} does not look like kosoku 0.1.0's; not patched", file=sys.stderr)
        return 1
    path.write_text(text.replace(OLD, NEW))
    print(f"patch_kosoku: patched {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
