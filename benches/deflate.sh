#!/usr/bin/env bash
# permessage-deflate end to end: echo throughput with and without compression, and the server's
# memory per idle connection in each context-takeover mode.
#
#   benches/deflate.sh [--connections N] [--idle N] [--duration S] [--sizes "1024 16384"]
#                      [--subs N] [--rate QUOTES_PER_S]
#
# Throughput: `ringws serve --workers 1` pinned to CPU 0 and `ringws load --workers 1` pinned to
# CPU 1 (ping-pong, --text, N connections), the same command back to back for each mode; the
# ratio is msg/s with compression over msg/s without, from the same run; server us/msg is the
# server's CPU time (/proc/PID/stat) over the run divided by the messages it echoed.
# Memory: a fresh server per mode; `ringws load --hold --ping-once 1000` opens IDLE connections
# that each echo one 1000-byte message (compressed both ways where negotiated) and then stay idle;
# the server's VmRSS growth from before the connections to after the echoes, divided by IDLE.
# The budget is raised to 4 GiB so that every connection gets the mode asked for.
#
# Modes (--deflate-takeover on both sides): off (no extension), none (no context takeover either
# way), client (the default policy: the client keeps its window, the server does not), both.
#
# Feed: `ringws serve --mode feed --symbols 100 --rate RATE --deflate-min-size 16` (quotes are ~100
# bytes) and `ringws load --subscribe all --connections SUBS`: every quote goes to every subscriber.
# Reported: deliveries/s, p99 publish-to-receive latency, and the server's CPU over the run (from
# /proc/PID/stat). Mode none compresses each quote once per worker; both, once per subscriber.
#
# Note: `ringws load`'s text payload is a 26-letter cycle, which compresses far better (and
# cheaper) than real data; protocol/src/deflate/mod.rs has sans-IO numbers on JSON-like messages.
# Every run is bounded (timeout); servers are stopped on exit.
set -euo pipefail

CONNECTIONS=100
IDLE=1000
DURATION=5
SIZES="1024 16384"
SUBS=200
RATE=500
while [[ $# -gt 0 ]]; do
    case "$1" in
        --connections) CONNECTIONS="$2"; shift 2 ;;
        --idle) IDLE="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --sizes) SIZES="$2"; shift 2 ;;
        --subs) SUBS="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
cargo build --release --quiet --bin ringws
BIN=target/release/ringws
PORT=$((20000 + RANDOM % 20000))
URL="ws://127.0.0.1:$PORT/"
SERVER_PID=""
LOG=$(mktemp)
trap '[[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null; rm -f "$LOG"' EXIT

mode_flags() {
    case "$1" in
        off) ;;
        *) echo "--deflate --deflate-takeover $1 --deflate-budget 4096" ;;
    esac
}

start_server() {
    local mode=$1
    shift
    : >"$LOG" # truncated here, not in the background job: the last server's ready line must go
    # shellcheck disable=SC2046
    taskset -c 0 "$BIN" serve --addr "127.0.0.1:$PORT" --workers 1 \
        $(mode_flags "$mode") "$@" 2>"$LOG" &
    SERVER_PID=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$LOG" && return 0
        sleep 0.1
    done
    echo "server did not start: $(cat "$LOG")" >&2
    exit 1
}

stop_server() {
    kill -INT "$SERVER_PID"
    timeout 10 tail --pid="$SERVER_PID" -f /dev/null || kill -9 "$SERVER_PID"
    SERVER_PID=""
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# CPU time (user + system) of process $1, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

echo "== echo throughput: $CONNECTIONS connections, ping-pong, text, ${DURATION}s per run =="
printf "%-8s %-7s %12s %10s %10s %14s\n" size mode "msg/s" "p99 us" "vs off" "server us/msg"
for size in $SIZES; do
    base=""
    for mode in off none client both; do
        start_server "$mode"
        ticks=$(cpu_ticks "$SERVER_PID")
        # shellcheck disable=SC2046
        json=$(timeout $((DURATION + 30)) taskset -c 1 "$BIN" load --url "$URL" --workers 1 \
            --connections "$CONNECTIONS" --size "$size" --text --warmup 1 --duration "$DURATION" \
            --json $(mode_flags "$mode") 2>/dev/null) || true  # errors are counted in the JSON
        ticks=$(( $(cpu_ticks "$SERVER_PID") - ticks ))
        stop_server
        if [[ "$json" != "{"* ]]; then
            printf "%-8s %-7s run failed (no report)\n" "$size" "$mode"
            continue
        fi
        # Server CPU per echoed message (warm-up included): less sensitive to a busy machine
        # than msg/s.
        read -r rate p99 errors cost < <(python3 -c '
import json, sys
r = json.loads(sys.argv[1])
cost = int(sys.argv[2]) / int(sys.argv[3]) / max(r["echoes"], 1) * 1e6
print(round(r["msgs_per_s"]), r["latency_us"]["p99"], sum(r["errors"].values()), f"{cost:.2f}")
' "$json" "$ticks" "$(getconf CLK_TCK)")
        [[ -z "$base" ]] && base=$rate
        ratio=$(python3 -c "print(f'{$rate / $base:.2f}')")
        printf "%-8s %-7s %12s %10s %10s %14s%s\n" "$size" "$mode" "$rate" "$p99" "$ratio" \
            "$cost" "$([[ "$errors" != 0 ]] && echo "  ($errors errors)")"
    done
done

echo
echo "== server memory per idle connection: $IDLE connections, one 1000-byte echo each =="
printf "%-8s %12s %12s %14s\n" mode "RSS before" "RSS after" "per connection"
for mode in off none client both; do
    start_server "$mode"
    sleep 0.3
    before=$(rss_kib "$SERVER_PID")
    phases=$(mktemp)
    # shellcheck disable=SC2046
    timeout 60 taskset -c 1 "$BIN" load --url "$URL" --workers 1 --connections "$IDLE" --hold \
        --ping-once 1000 --duration 4 --json $(mode_flags "$mode") >/dev/null 2>"$phases" &
    load_pid=$!
    for _ in $(seq 300); do
        grep -q '"phase":"ping"' "$phases" && break
        sleep 0.1
    done
    sleep 0.5
    after=$(rss_kib "$SERVER_PID")
    wait "$load_pid" || echo "  (load exited with an error: $(tail -3 "$phases"))"
    rm -f "$phases"
    stop_server
    printf "%-8s %9s KiB %9s KiB %11s B\n" "$mode" "$before" "$after" \
        "$(( (after - before) * 1024 / IDLE ))"
done

echo
echo "== feed: $SUBS subscribers of 100 symbols, $RATE quotes/s, quotes compressed from 16 bytes =="
printf "%-8s %14s %10s %12s\n" mode "deliveries/s" "p99 us" "server CPU"
for mode in off none both; do
    start_server "$mode" --mode feed --symbols 100 --rate "$RATE" --deflate-min-size 16
    ticks=$(cpu_ticks "$SERVER_PID")
    start=$(date +%s.%N)
    # shellcheck disable=SC2046
    json=$(timeout $((DURATION + 30)) taskset -c 1 "$BIN" load --url "$URL" --workers 1 \
        --connections "$SUBS" --subscribe all --warmup 1 --duration "$DURATION" --json \
        $(mode_flags "$mode") 2>/dev/null) || true
    cpu=$(python3 -c "print(f'{($(cpu_ticks "$SERVER_PID") - $ticks) / $(getconf CLK_TCK) \
        / ($(date +%s.%N) - $start) * 100:.0f}%')")
    stop_server
    if [[ "$json" != "{"* ]]; then
        printf "%-8s run failed (no report)\n" "$mode"
        continue
    fi
    read -r rate p99 < <(python3 -c '
import json, sys
r = json.loads(sys.argv[1])
print(round(r["msgs_per_s"]), r["latency_us"]["p99"])' "$json")
    printf "%-8s %14s %10s %12s\n" "$mode" "$rate" "$p99" "$cpu"
done
