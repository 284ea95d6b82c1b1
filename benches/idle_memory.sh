#!/usr/bin/env bash
# idle_memory.sh: server memory per idle WebSocket connection, measured from outside.
#
# Starts `ringws serve --workers 1 --idle-timeout 0` (plus any SERVER_ARGS), reads its VmRSS, opens
# N connections with `ringws load --hold` split over client processes of at most PER connections
# each (a process may hold 20,000 descriptors here, and not more), waits until the server has all
# of them established, reads VmRSS again and prints (after - before) / N. The server is fresh, so
# the figure includes what the first burst of handshakes costs (receive-buffer pages, heap growth),
# as the performance issue measures it. Every wait is bounded; everything started is stopped on exit.
#
#   benches/idle_memory.sh [--connections N] [--per-process PER] [--binary PATH] [-- SERVER_ARGS...]
#
# Prints one line: `connections N rss_before_kib B rss_after_kib A bytes_per_connection X`.

set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
N=10000
PER=5000
BINARY=$ROOT/target/release/ringws
while (($#)); do
    case $1 in
    --connections) N=$2; shift 2 ;;
    --per-process) PER=$2; shift 2 ;;
    --binary) BINARY=$2; shift 2 ;;
    --) shift; break ;;
    -h | --help) sed -n 2,13p "$0"; exit 0 ;;
    *) echo "idle_memory.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[[ -x $BINARY ]] || { echo "idle_memory.sh: no binary at $BINARY (cargo build --release)" >&2; exit 2; }

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

rss_kib() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }

LOG=$(mktemp)
"$BINARY" serve --addr 127.0.0.1:0 --workers 1 --idle-timeout 0 "$@" 2>"$LOG" &
SERVER=$!
PIDS+=("$SERVER")
ADDR=
for _ in $(seq 1 100); do
    ADDR=$(sed -n 's/^listening on \([^ ]*\).*/\1/p' "$LOG")
    [[ -n $ADDR ]] && break
    sleep 0.1
done
[[ -n $ADDR ]] || { echo "idle_memory.sh: the server did not start: $(tail -n 3 "$LOG")" >&2; exit 1; }
PORT=${ADDR##*:}
BEFORE=$(rss_kib "$SERVER")

LEFT=$N
while ((LEFT > 0)); do
    COUNT=$((LEFT < PER ? LEFT : PER))
    "$BINARY" load --url "ws://$ADDR/" --connections "$COUNT" --hold --duration 120 --workers 1 \
        >/dev/null 2>&1 &
    PIDS+=("$!")
    LEFT=$((LEFT - COUNT))
done

UP=0
for _ in $(seq 1 240); do
    UP=$(ss -Htn state established "( sport = :$PORT )" | wc -l)
    ((UP >= N)) && break
    sleep 0.5
done
((UP >= N)) || { echo "idle_memory.sh: only $UP of $N connections came up" >&2; exit 1; }
# Let the last handshakes' sends complete and the server settle.
sleep 1
AFTER=$(rss_kib "$SERVER")
echo "connections $N rss_before_kib $BEFORE rss_after_kib $AFTER" \
    "bytes_per_connection $(((AFTER - BEFORE) * 1024 / N))"
rm -f "$LOG"
