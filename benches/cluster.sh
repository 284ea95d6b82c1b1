#!/usr/bin/env bash
# cluster.sh: the cost of the broker hop (issue 14). One run per setup, in one invocation:
#
#   single   one `ringws serve --mode feed --rate R --workers 1` (its own ticker thread) and one
#            `ringws load --subscribe all` with C connections: deliveries/s = R x C;
#   nats     `ringws ticker --rate R` -> nats-server -> two `ringws serve --mode feed --rate 0
#            --bridge nats://... --workers 1` nodes, each with its own `ringws load` of C/2
#            connections (the same total deliveries);
#   redis    the same through redis-server.
#
# Latency is publish-to-receive, from each quote's `ts` (stamped by whichever process published it:
# the node's ticker thread, or `ringws ticker`) to its receipt by the load generator, on the same
# host's CLOCK_REALTIME: in the bridged setups it includes the ticker -> broker -> node hop. Node
# CPU is the nodes' utime+stime over the measured window (from /proc), per delivery.
#
# CPUs (2-core box): nodes on CPU 0, generators, broker and ticker on CPU 1 (`--cpus-nodes`,
# `--cpus-rest`). Every command is printed before it runs. Not in CI.
#
# Bounded: every wait has a deadline; each generator runs --warmup + --duration plus its connect
# time (bounded by ringws load itself); an EXIT/INT/TERM trap stops every process it started.
# Exit status: 0 all runs completed, 1 a run failed, 2 usage.

set -euo pipefail

PROG=${0##*/}
readonly PROG
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT

BINARY=$ROOT/target/release/ringws
SETUPS=single,nats,redis
RATE=1000
SYMBOLS=100
CONNECTIONS=100
DURATION=10
WARMUP=2
PORT=19500
CPUS_NODES=0
CPUS_REST=1
OUT=

usage() {
    cat <<EOF
Usage: $PROG [options]

Measures ticker -> broker -> 2 nodes x C/2 subscribers against one node with its own ticker and C
subscribers: deliveries/s, publish-to-receive p50/p99, node CPU per delivery.

  --setups LIST     any of single, nats, redis (default $SETUPS)
  --rate R          quotes/s over all symbols (default $RATE)
  --symbols N       symbols (default $SYMBOLS); every connection subscribes to all of them
  --connections C   subscribers in total (default $CONNECTIONS); deliveries/s = R x C
  --duration S      measured seconds (default $DURATION)
  --warmup S        seconds before measuring (default $WARMUP)
  --port P          first port; the script uses P..P+4 (default $PORT)
  --cpus-nodes LIST taskset CPU list of the nodes (default $CPUS_NODES)
  --cpus-rest LIST  taskset CPU list of generators, broker and ticker (default $CPUS_REST)
  --binary PATH     the ringws binary (default target/release/ringws)
  --out FILE        also append each run's JSON line to FILE
EOF
}

die_usage() {
    printf '%s: %s\n' "$PROG" "$1" >&2
    usage >&2
    exit 2
}

while (($#)); do
    case $1 in
        --setups) SETUPS=${2:?}; shift 2 ;;
        --rate) RATE=${2:?}; shift 2 ;;
        --symbols) SYMBOLS=${2:?}; shift 2 ;;
        --connections) CONNECTIONS=${2:?}; shift 2 ;;
        --duration) DURATION=${2:?}; shift 2 ;;
        --warmup) WARMUP=${2:?}; shift 2 ;;
        --port) PORT=${2:?}; shift 2 ;;
        --cpus-nodes) CPUS_NODES=${2:?}; shift 2 ;;
        --cpus-rest) CPUS_REST=${2:?}; shift 2 ;;
        --binary) BINARY=${2:?}; shift 2 ;;
        --out) OUT=${2:?}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die_usage "unknown option $1" ;;
    esac
done
for n in RATE SYMBOLS CONNECTIONS DURATION WARMUP PORT; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die_usage "--${n,,} must be a whole number"
done
((CONNECTIONS >= 2 && CONNECTIONS % 2 == 0)) || die_usage "--connections must be even (two nodes)"
[[ -x $BINARY ]] || die_usage "no $BINARY: cargo build --release"
for tool in jq taskset; do
    command -v "$tool" >/dev/null || die_usage "$tool not found"
done

WORK=$(mktemp -d)
readonly WORK
PIDS=()

cleanup() {
    local pid deadline=$((SECONDS + 3)) alive
    # SIGINT first: nodes skip their drain delay. Background jobs of a script start with SIGINT
    # ignored and some keep it so: SIGTERM for what is left after 3 s.
    for pid in "${PIDS[@]}"; do
        kill -INT "$pid" 2>/dev/null || true
    done
    while ((SECONDS < deadline)); do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap 'cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# start NAME CMD...: runs CMD in the background, output in $WORK/NAME.log; sets STARTED to its pid.
start() {
    local name=$1
    shift
    log "$*"
    "$@" </dev/null >"$WORK/$name.log" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}

# wait_for FILE TEXT SECONDS: until FILE contains TEXT.
wait_for() {
    local file=$1 text=$2 deadline=$((SECONDS + $3))
    while ! grep -qF -- "$text" "$file" 2>/dev/null; do
        ((SECONDS < deadline)) || { log "timed out waiting for '$text' in $file"; cat "$file" >&2; return 1; }
        sleep 0.05
    done
}

# wait_port PORT SECONDS: until something listens on 127.0.0.1:PORT.
wait_port() {
    local deadline=$((SECONDS + $2))
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        ((SECONDS < deadline)) || { log "nothing listens on port $1"; return 1; }
        sleep 0.05
    done
}

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

node() {
    local name=$1 port=$2
    shift 2
    start "$name" taskset -c "$CPUS_NODES" "$BINARY" serve --mode feed --workers 1 \
        --symbols "$SYMBOLS" --addr "127.0.0.1:$port" "$@"
    wait_for "$WORK/$name.log" "listening on" 20
}

load() {
    local name=$1 port=$2 connections=$3
    start "$name" taskset -c "$CPUS_REST" "$BINARY" load --url "ws://127.0.0.1:$port/" --workers 1 \
        --subscribe all --connections "$connections" --warmup "$WARMUP" --duration "$DURATION" --json
}

# measure SETUP NODE_PIDS... -- LOAD_NAMES...: waits for the generators, samples the nodes' CPU over
# the measured window, prints and records one line.
measure() {
    local setup=$1
    shift
    local nodes=() loads=() l pid
    while [[ $1 != -- ]]; do nodes+=("$1"); shift; done
    shift
    loads=("$@")
    for l in "${loads[@]}"; do
        wait_for "$WORK/$l.log" '"phase":"established"' 60
    done
    sleep "$WARMUP"
    local c0=0 c1=0 t0 t1
    for pid in "${nodes[@]}"; do c0=$((c0 + $(ticks "$pid"))); done
    t0=$(date +%s.%N)
    sleep "$((DURATION - 1))"
    for pid in "${nodes[@]}"; do c1=$((c1 + $(ticks "$pid"))); done
    t1=$(date +%s.%N)
    local hz
    hz=$(getconf CLK_TCK)
    for l in "${loads[@]}"; do
        wait_for "$WORK/$l.log" '"mode":"subscribe"' $((DURATION + 30))
    done
    # One JSON object per generator: its last line.
    local objs=()
    for l in "${loads[@]}"; do objs+=("$(grep '"mode":"subscribe"' "$WORK/$l.log" | tail -1)"); done
    printf '%s\n' "${objs[@]}" | jq -sc --arg setup "$setup" --argjson ticks "$((c1 - c0))" \
        --argjson hz "$hz" --argjson secs "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" '
        (map(.msgs_per_s) | add) as $dps |
        {setup: $setup, deliveries_per_s: ($dps | floor),
         p50_us: (map(.latency_us.p50) | max), p99_us: (map(.latency_us.p99) | max),
         generators: map({msgs_per_s: (.msgs_per_s | floor), p50: .latency_us.p50, p99: .latency_us.p99,
                          established: .connections_established, errors: .errors}),
         node_cpu_percent: (100 * $ticks / $hz / $secs | . * 10 | floor / 10),
         node_cpu_ns_per_delivery: (1e9 * $ticks / $hz / $secs / $dps | floor)}' |
        tee -a "$WORK/results" ${OUT:+-a "$OUT"}
    cleanup
}

run_single() {
    node single "$PORT" --rate "$RATE"
    local n=$STARTED
    load load-single "$PORT" "$CONNECTIONS"
    measure single "$n" -- load-single
}

run_bridged() {
    local broker=$1 bport=$((PORT + 1)) url
    case $broker in
        nats)
            start nats taskset -c "$CPUS_REST" nats-server -a 127.0.0.1 -p "$bport"
            url=nats://127.0.0.1:$bport
            ;;
        redis)
            start redis taskset -c "$CPUS_REST" redis-server --port "$bport" --bind 127.0.0.1 \
                --save "" --appendonly no
            url=redis://127.0.0.1:$bport
            ;;
    esac
    wait_port "$bport" 20
    node node1 $((PORT + 2)) --rate 0 --bridge "$url"
    local n1=$STARTED
    node node2 $((PORT + 3)) --rate 0 --bridge "$url"
    local n2=$STARTED
    start ticker taskset -c "$CPUS_REST" "$BINARY" ticker --bridge "$url" --symbols "$SYMBOLS" \
        --rate "$RATE"
    wait_for "$WORK/ticker.log" "ticker publishing" 20
    load load-1 $((PORT + 2)) $((CONNECTIONS / 2))
    load load-2 $((PORT + 3)) $((CONNECTIONS / 2))
    measure "$broker" "$n1" "$n2" -- load-1 load-2
}

log "rate $RATE quotes/s x $CONNECTIONS subscribers = $((RATE * CONNECTIONS)) deliveries/s; $(nproc) CPUs; $(uname -r)"
IFS=, read -ra setups <<<"$SETUPS"
for s in "${setups[@]}"; do
    case $s in
        single) run_single ;;
        nats | redis)
            command -v "$s-server" >/dev/null || { log "$s-server not found (apt-get install $s-server)"; exit 1; }
            run_bridged "$s"
            ;;
        *) die_usage "unknown setup $s" ;;
    esac
done

printf '\n%-8s %14s %9s %9s %10s %16s\n' setup deliveries/s p50_us p99_us node_cpu% node_ns/delivery
jq -r '[.setup, .deliveries_per_s, .p50_us, .p99_us, .node_cpu_percent, .node_cpu_ns_per_delivery] |
    @tsv' "$WORK/results" | while IFS=$'\t' read -r a b c d e f; do
    printf '%-8s %14s %9s %9s %10s %16s\n' "$a" "$b" "$c" "$d" "$e" "$f"
done
