#!/usr/bin/env bash
# Server CPU per echoed message of two or more ringws builds at a FIXED message rate, interleaved:
# every build serves the same open-loop load (`ringws load --rate`), so the comparison does not
# depend on how fast a saturated load generator happens to run (benches/compare drives the servers
# closed-loop, flat out, where a 2-core machine is at its limit and run-to-run spread is ~10%).
#
#   benches/ab_echo.sh [-c CONNECTIONS] [-s SIZE] [-r RATE] [-d SECONDS] [-n ROUNDS] BINARY...
#
# A BINARY written tls:PATH serves wss:// (a throwaway P-256 certificate made with openssl; the
# generator connects with --insecure), so `tls:target/release/ringws target/release/ringws`
# compares TLS with plain on the same build.
#
# Each round runs every BINARY once, in order (`BINARY serve --workers 1` on CPU 0; the first
# BINARY's `load` on CPU 1 with CONNECTIONS connections, SIZE-byte binary messages, RATE messages
# per second in total, a 2 s warm-up and a SECONDS measured window); the server's utime+stime over
# the window is read from /proc. Defaults: 100 connections, 20 B, 40,000 msg/s, 8 s, 5 rounds.
# Prints each run, then per build the median CPU-µs per message and its ratio to the first build.
set -euo pipefail

connections=100
size=20
rate=40000
duration=8
rounds=5
while getopts "c:s:r:d:n:h" opt; do
    case $opt in
        c) connections=$OPTARG ;;
        s) size=$OPTARG ;;
        r) rate=$OPTARG ;;
        d) duration=$OPTARG ;;
        n) rounds=$OPTARG ;;
        *) sed -n '2,14p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
(($# >= 1)) || { sed -n '2,14p' "$0"; exit 2; }
load_bin=${1#tls:}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
tck=$(getconf CLK_TCK)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# utime+stime of PID and all its threads, in clock ticks.
cpu_ticks() {
    awk '{print $14 + $15}' "/proc/$1/stat"
}

# Waits (bounded) until FILE contains TEXT.
wait_for() {
    for _ in $(seq 300); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "ab_echo.sh: no '$2' in $1" >&2
    cat "$1" >&2
    exit 1
}

# One run: prints "CPU-µs-per-message messages".
run() {
    local bin=$1 port pid load before after scheme=ws tls=() trust=()
    if [[ $bin == tls:* ]]; then
        bin=${bin#tls:}
        scheme=wss
        tls=(--tls-cert "$work/cert.pem" --tls-key "$work/key.pem")
        trust=(--insecure)
        [[ -f $work/cert.pem ]] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
            -nodes -keyout "$work/key.pem" -out "$work/cert.pem" -days 1 -subj /CN=localhost \
            2>/dev/null
    fi
    port=$(free_port)
    : >"$work/server.log"
    taskset -c 0 "$bin" serve --addr "127.0.0.1:$port" --workers 1 "${tls[@]}" 2>"$work/server.log" &
    pid=$!
    wait_for "$work/server.log" "listening on"
    : >"$work/load.log"
    taskset -c 1 "$load_bin" load --url "$scheme://127.0.0.1:$port/" "${trust[@]}" \
        --connections "$connections" \
        --size "$size" --rate "$rate" --duration "$duration" --warmup 2 --binary --workers 1 \
        --json >"$work/load.json" 2>"$work/load.log" &
    load=$!
    wait_for "$work/load.log" '"phase":"established"'
    sleep 2 # the generator's warm-up
    before=$(cpu_ticks "$pid")
    sleep "$duration" # the generator's measured window
    after=$(cpu_ticks "$pid")
    wait "$load"
    # SIGINT: shut down at once (SIGTERM would drain for --drain-delay first).
    kill -INT "$pid"
    wait "$pid" || true
    python3 - "$work/load.json" "$before" "$after" "$tck" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
ticks = int(sys.argv[3]) - int(sys.argv[2])
us = ticks * 1e6 / int(sys.argv[4])
print(f"{us / max(report['messages'], 1):.3f} {report['messages']}")
EOF
}

echo "server CPU-µs per echoed message: $connections connections, $size B, $rate msg/s, ${duration}s x $rounds rounds"
declare -A results
for round in $(seq "$rounds"); do
    for bin in "$@"; do
        read -r per messages < <(run "$bin")
        results[$bin]+="$per "
        printf 'round %d  %-40s %8s µs/msg  (%s messages)\n' "$round" "$bin" "$per" "$messages"
    done
done
first=""
for bin in "$@"; do
    median=$(python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1].split())):.3f}')" "${results[$bin]}")
    if [[ -z $first ]]; then
        first=$median
        printf 'median  %-40s %8s µs/msg\n' "$bin" "$median"
    else
        printf 'median  %-40s %8s µs/msg  %sx the first\n' "$bin" "$median" \
            "$(python3 -c "print(f'{$median / $first:.3f}')")"
    fi
done
