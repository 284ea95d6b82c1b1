#!/usr/bin/env bash
# Server memory per idle wss:// connection of one or more ringws builds, interleaved in one run:
#
#   benches/tls_idle.sh [-c CONNECTIONS] [-p PROCESSES] [-n ROUNDS] BINARY...
#
# Each round, for every BINARY: `BINARY serve --workers 1` with a throwaway P-256 certificate on
# CPU 0 and its VmRSS read; then PROCESSES generators (the first BINARY's `load --insecure
# --hold --ping-once 20`, on CPU 1) open CONNECTIONS in all (split between them: a process may
# hold 20,000 descriptors), each connection doing the TLS handshake, the upgrade and one 20-byte
# echo before it idles; once every generator reports its ping phase, the server's VmRSS again.
# Prints (after - before) / CONNECTIONS per run, then each build's median and its ratio to the
# first. Defaults: 10,000 connections, 2 processes, 2 rounds.
set -euo pipefail

connections=10000
processes=2
rounds=2
while getopts "c:p:n:h" opt; do
    case $opt in
        c) connections=$OPTARG ;;
        p) processes=$OPTARG ;;
        n) rounds=$OPTARG ;;
        *) sed -n '2,14p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
(($# >= 1)) || { sed -n '2,14p' "$0"; exit 2; }
load_bin=$1
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/key.pem" \
    -out "$work/cert.pem" -days 1 -subj /CN=localhost 2>/dev/null

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# Waits (bounded: 60 s) until FILE contains TEXT.
wait_for() {
    for _ in $(seq 600); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "tls_idle.sh: no '$2' in $1" >&2
    tail -5 "$1" >&2
    exit 1
}

# One run: prints the bytes per connection.
run() {
    local bin=$1 port pid before after i loads=()
    port=$(free_port)
    : >"$work/server.log"
    taskset -c 0 "$bin" serve --addr "127.0.0.1:$port" --workers 1 --tls-cert "$work/cert.pem" \
        --tls-key "$work/key.pem" 2>"$work/server.log" &
    pid=$!
    wait_for "$work/server.log" "listening on"
    sleep 0.3
    before=$(rss_kib "$pid")
    for ((i = 0; i < processes; i++)); do
        : >"$work/load$i.log"
        timeout 120 taskset -c 1 "$load_bin" load --url "wss://127.0.0.1:$port/" --insecure \
            --workers 1 --connections $((connections / processes)) --hold --ping-once 20 \
            --duration 60 --json >/dev/null 2>"$work/load$i.log" &
        loads+=($!)
    done
    for ((i = 0; i < processes; i++)); do
        wait_for "$work/load$i.log" '"phase":"ping"'
    done
    sleep 1
    after=$(rss_kib "$pid")
    kill -INT "${loads[@]}" 2>/dev/null || true
    wait "${loads[@]}" 2>/dev/null || true
    kill -INT "$pid"
    wait "$pid" || true
    echo $(((after - before) * 1024 / connections))
}

echo "server memory per idle wss:// connection: $connections connections in $processes generators, $rounds rounds"
declare -A results
for round in $(seq "$rounds"); do
    for bin in "$@"; do
        per=$(run "$bin")
        results[$bin]+="$per "
        printf 'round %d  %-40s %6s B/connection\n' "$round" "$bin" "$per"
    done
done
first=""
for bin in "$@"; do
    median=$(python3 -c "import statistics,sys; print(round(statistics.median(map(int, sys.argv[1].split()))))" "${results[$bin]}")
    if [[ -z $first ]]; then
        first=$median
        printf 'median  %-40s %6s B/connection\n' "$bin" "$median"
    else
        printf 'median  %-40s %6s B/connection  %sx the first\n' "$bin" "$median" \
            "$(python3 -c "print(f'{$median / $first:.2f}')")"
    fi
done
