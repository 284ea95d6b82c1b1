#!/usr/bin/env bash
# resume.sh: resume latency of the market feed: a client (Python websockets, from the interop venv
# that scripts/test.sh makes) 1,000 quotes behind reconnects with `since` and is timed from its
# connect to its last replayed quote (caught up: the ~1,000 replayed ones received and parsed). One
# symbol at --rate quotes/s; the server (release build) pinned on CPU 0, the client on CPU 1. The
# baseline, in the same run: a fresh subscribe (no since) up to its first quote.
#
#   benches/resume.sh [--behind 1000] [--runs 10] [--rate 2000]
#
# Bounded: the client's every read has a 10 s timeout and the whole run 120 s; the server is
# stopped on exit. Not in CI. Exit status: 0 done, 1 a run failed, 2 usage.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
BEHIND=1000
RUNS=10
RATE=2000
PORT=19401
while (($#)); do
    case $1 in
        --behind) BEHIND=${2:?}; shift ;;
        --runs) RUNS=${2:?}; shift ;;
        --rate) RATE=${2:?}; shift ;;
        -h|--help) sed -n 2,10p "$0"; exit 0 ;;
        *) echo "resume.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
BINARY=$ROOT/target/release/ringws
PYTHON=$ROOT/tests/interop/.venv/bin/python
[[ -x $BINARY ]] || cargo build --release --bin ringws
[[ -x $PYTHON ]] || { echo "resume.sh: no $PYTHON: run scripts/test.sh once" >&2; exit 1; }
LOG=$(mktemp)
SERVER_PID=
cleanup() { [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null; rm -f "$LOG"; }
trap cleanup EXIT INT TERM
cmd=(taskset -c 0 "$BINARY" serve --mode feed --addr "127.0.0.1:$PORT" --workers 1 --symbols 1 --rate "$RATE" --history "$((RATE * 30))")
echo "+ ${cmd[*]}" >&2
"${cmd[@]}" 2>"$LOG" &
SERVER_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$LOG" && break; sleep 0.1; done
grep -q "listening on" "$LOG" || { cat "$LOG" >&2; exit 1; }
client=(taskset -c 1 timeout 120 "$PYTHON" "$ROOT/tests/interop/python/resume.py" latency "127.0.0.1:$PORT" BTC-USD "$BEHIND" "$RUNS")
echo "+ ${client[*]}" >&2
"${client[@]}"
