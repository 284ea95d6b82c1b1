#!/usr/bin/env bash
# pubsub.sh: the pub/sub fan-out benchmarks of issue 5, with `ringws serve --mode feed` as the
# publisher and `ringws load --subscribe` as the subscribers, each its own process (10,000
# connections need 10,000 descriptors on each side; the box allows 20,000 per process).
#
#   a) 1 publisher -> 10,000 subscribers of one topic, server --workers 1 pinned on CPU 0, the
#      generator (one worker) on CPU 1: deliveries/s and publish->receive p50/p99/p99.9, for each
#      publish rate of --rates-a (deliveries/s = rate x 10,000). The best rate is the one with the
#      most deliveries/s at p99 <= 5 ms.
#   b) 1,000 topics x 10 subscribers, server --workers 2 (the ticker thread publishes into both
#      workers' inboxes), the generator on CPU 1 (so it shares a CPU with server worker 1), for each
#      rate of --rates-b (deliveries/s = rate x 10).
#   c) slow consumers: 100 symbols, 200 connections subscribed to all of them (deliveries/s =
#      rate x 200), server --max-backpressure 65536, once without a stall and once (same command
#      but `--stall 100` instead of `--stall 0`) with the first 100 connections not reading for --stall-for seconds: the
#      other connections' p99 in both runs (over the whole measurement and during the stall), and what the stalled ones see on resuming. Each stalled
#      connection is sent rate quotes/s (~100 B each): to get past what the kernel's socket buffers
#      hold (several MB on loopback) and into the server's conflating queue, its inflow has to be
#      large, hence few connections with many symbols rather than 10,000 with a few. These runs
#      measure --stall-for + 3 seconds (the stall starts 1 s in).
#
# Each run: the server, the generator's `established` phase line, --warmup seconds, then --duration
# seconds measured by the generator; meanwhile the script reads both processes' CPU time and each
# pinned CPU's busy time from /proc, so the report shows what else ran on the CPUs (other work on
# a shared box moves every number here). Every command is printed before it runs. Not in CI.
#
# Bounded: every wait has a deadline, the generator's run is --warmup + --duration + connect time
# (bounded by ringws load itself), and an EXIT/INT/TERM trap stops every process the script started.
# Exit status: 0 all runs completed, 1 a run failed, 2 usage.

set -euo pipefail

PROG=${0##*/}
readonly PROG
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT

BINARY=$ROOT/target/release/ringws
SCENARIOS=abc
RATES_A=50,100,200,300
RATES_B=20000,100000,200000
RATE_C=10000
DURATION=5
WARMUP=2
STALL_FOR=5
PORT=19301
NICE=0
OUT=
readonly CONNECTIONS=10000
readonly CONNECTIONS_C=200
readonly SOURCES=127.0.0.1-127.0.0.4
# Seconds a process gets to exit after SIGINT before it is killed.
readonly GRACE=10

usage() {
    cat <<EOF
Usage: $PROG [options]

Runs the pub/sub benchmarks (a: 1 topic x 10,000 subscribers, b: 1,000 topics x 10, c: slow
consumers) against \`ringws serve --mode feed\` with \`ringws load --subscribe\`, and prints a table.

  --scenarios LIST  any of a, b, c (default $SCENARIOS)
  --rates-a LIST    publish rates (quotes/s) for a (default $RATES_A)
  --rates-b LIST    publish rates for b (default $RATES_B)
  --rate-c R        publish rate for c (default $RATE_C)
  --duration S      measured seconds per run (default $DURATION)
  --warmup S        seconds after all connections are up before measuring (default $WARMUP)
  --stall-for S     c: seconds the stalled subscribers do not read (default $STALL_FOR)
  --port P          server port on 127.0.0.1 (default $PORT)
  --nice N          run the server and the generator at this niceness (default $NICE; e.g. -10 as
                    root on a box shared with builds, so they are not starved by nice-0 work)
  --binary PATH     the ringws binary (default target/release/ringws, built if missing)
  --out FILE        also write every run's numbers as JSON lines to FILE
  -h, --help        this text

Exit status: 0 all runs completed, 1 a run failed, 2 usage.
EOF
}

die_usage() {
    printf '%s: %s\n' "$PROG" "$1" >&2
    usage >&2
    exit 2
}

while (($#)); do
    case $1 in
        --scenarios) SCENARIOS=${2:?} ; shift ;;
        --rates-a) RATES_A=${2:?} ; shift ;;
        --rates-b) RATES_B=${2:?} ; shift ;;
        --rate-c) RATE_C=${2:?} ; shift ;;
        --duration) DURATION=${2:?} ; shift ;;
        --warmup) WARMUP=${2:?} ; shift ;;
        --stall-for) STALL_FOR=${2:?} ; shift ;;
        --port) PORT=${2:?} ; shift ;;
        --nice) NICE=${2:?} ; shift ;;
        --binary) BINARY=${2:?} ; shift ;;
        --out) OUT=${2:?} ; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die_usage "unknown option $1" ;;
    esac
    shift
done
[[ $SCENARIOS =~ ^[abc]+$ ]] || die_usage "--scenarios takes letters among a, b, c"
[[ $NICE =~ ^-?[0-9]+$ ]] || die_usage "--nice takes an integer"
for n in "$DURATION" "$WARMUP" "$STALL_FOR"; do
    [[ $n =~ ^[0-9]+$ ]] || die_usage "durations are whole seconds"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pubsub.XXXXXX")
readonly WORK
PIDS=()

# alive PID and stop_pids PID... (SIGINT, SIGKILL after GRACE seconds).
# shellcheck source-path=SCRIPTDIR source=lib/procs.sh
. "$ROOT/benches/lib/procs.sh"

# stop_run PID...: a run's processes are stopped and reaped before the next run takes the port.
stop_run() {
    stop_pids "$@"
    wait "$@" 2>/dev/null || true
    PIDS=()
}

# cleanup: stops every process still running, removes the work directory.
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local status=$?
    stop_run "${PIDS[@]}"
    rm -rf -- "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# wait_for FILE PATTERN PID SECONDS: until FILE has a line matching PATTERN; fails if PID exits
# first or SECONDS pass.
wait_for() {
    local file=$1 pattern=$2 pid=$3 limit=$((SECONDS + $4))
    until grep -Eq -- "$pattern" "$file" 2>/dev/null; do
        alive "$pid" || return 1
        ((SECONDS < limit)) || return 1
        sleep 0.1
    done
}

# ticks PID: the process's user + system CPU time in clock ticks (USER_HZ = 100).
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# cpu_busy CPU: the CPU's busy and total jiffies from /proc/stat ("busy total").
cpu_busy() {
    awk -v cpu="cpu$1" '$1 == cpu { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}


# run NAME CONNECTIONS "SERVER ARGS" "LOAD ARGS": one measured run; appends a JSON line to
# $WORK/results. Each run has log files of its own (a new file cannot show an old run's lines).
RUNS=0
run() {
    local name=$1 connections=$2 server_args=$3 load_args=$4 cpus=0 sp lp
    RUNS=$((RUNS + 1))
    local slog=$WORK/server.$RUNS.log llog=$WORK/load.$RUNS.log ljson=$WORK/load.$RUNS.json
    [[ $server_args == *"--workers 2"* ]] && cpus=0,1
    local server_cmd="nice -n $NICE taskset -c $cpus $BINARY serve --mode feed --addr 127.0.0.1:$PORT $server_args"
    local load_cmd="nice -n $NICE taskset -c 1 $BINARY load --url ws://127.0.0.1:$PORT/ --connections $connections --workers 1 --source-ips $SOURCES --warmup $WARMUP --duration $DURATION --json $load_args"
    printf '\n== %s\n$ %s\n$ %s\n' "$name" "$server_cmd" "$load_cmd"
    # shellcheck disable=SC2086 # the argument strings are split on purpose
    $server_cmd </dev/null >"$slog" 2>&1 &
    sp=$!
    PIDS+=("$sp")
    wait_for "$slog" '^listening on' "$sp" 10 || {
        log "server did not start: $(cat "$slog")"
        stop_run "$sp"
        return 1
    }
    # shellcheck disable=SC2086
    $load_cmd </dev/null >"$ljson" 2>"$llog" &
    lp=$!
    PIDS+=("$lp")
    if ! wait_for "$llog" '"phase":"established"' "$lp" 60; then
        log "generator did not connect: $(tail -5 "$llog")"
        stop_run "$sp" "$lp"
        return 1
    fi
    sleep "$WARMUP"
    local s0 c0 c1 s1 d0 d1
    s0=$(ticks "$sp") c0=$(cpu_busy 0) c1=$(cpu_busy 1)
    sleep "$DURATION"
    s1=$(ticks "$sp") d0=$(cpu_busy 0) d1=$(cpu_busy 1)
    local limit=$((SECONDS + 30)) status=0
    while alive "$lp" && ((SECONDS < limit)); do sleep 0.2; done
    wait "$lp" || status=$?
    kill -INT "$sp" 2>/dev/null || true
    wait "$sp" || true
    PIDS=()
    if [[ ! -s $ljson ]]; then
        log "no report from the generator (exit $status): $(tail -5 "$llog")"
        return 1
    fi
    # Busy share of each CPU and the server's share of one CPU, in percent (the generator reports
    # its own over its measurement window: load_cpu_percent).
    local cpu
    cpu=$(awk -v s="$((s1 - s0))" -v d="$DURATION" \
        -v a="$c0" -v b="$d0" -v c="$c1" -v e="$d1" 'BEGIN {
            split(a, x, " "); split(b, y, " "); split(c, z, " "); split(e, w, " ");
            printf "{\"server_cpu\":%.0f,\"cpu0_busy\":%.0f,\"cpu1_busy\":%.0f}",
                s / d, 100 * (y[1] - x[1]) / (y[2] - x[2]), 100 * (w[1] - z[1]) / (w[2] - z[2]) }')
    jq -c --arg name "$name" --argjson cpu "$cpu" --argjson exit "$status" \
        '{name: $name, exit: $exit} + $cpu + .' "$ljson" >>"$WORK/results"
    jq -r '"   \(.msgs_per_s | floor) deliveries/s, p50 \(.latency_us.p50) us, p99 \(.latency_us.p99) us, server CPU \(.server_cpu)%, generator CPU \(.load_cpu_percent)%"' \
        <<<"$(tail -1 "$WORK/results")"
}

[[ -x $BINARY ]] || (cd "$ROOT" && cargo build --release --bin ringws)
ulimit -n 20000 || die_usage "cannot raise the open-file limit to 20000 (ulimit -n)"
log "$(nproc) CPUs, Linux $(uname -r), $BINARY; runs of ${WARMUP}+${DURATION} s after connecting"
failed=0

if [[ $SCENARIOS == *a* ]]; then
    for rate in ${RATES_A//,/ }; do
        run "a rate=$rate" "$CONNECTIONS" "--workers 1 --symbols 1 --rate $rate" "--subscribe BTC-USD" || failed=1
    done
fi
if [[ $SCENARIOS == *b* ]]; then
    for rate in ${RATES_B//,/ }; do
        run "b rate=$rate" "$CONNECTIONS" "--workers 2 --symbols 1000 --rate $rate" \
            "--subscribe all --symbols-per-conn 1" || failed=1
    done
fi
if [[ $SCENARIOS == *c* ]]; then
    # The stall starts 1 s into the measurement and leaves 2 s after it to catch up.
    DURATION=$((STALL_FOR + 3))
    c_server="--workers 1 --symbols 100 --rate $RATE_C --max-backpressure 65536"
    for n in 0 100; do
        run "c stall $n" "$CONNECTIONS_C" "$c_server" \
            "--subscribe all --stall $n --stall-at 1 --stall-for $STALL_FOR" || failed=1
    done
fi

[[ -n $OUT ]] && cp "$WORK/results" "$OUT"
# per srv CPU-s: deliveries per second of server CPU time (deliveries/s / server CPU share), the
# server's cost per delivery whatever share of the CPUs it got.
printf '\n%-14s %13s %11s %9s %9s %9s %9s %6s %6s %5s %5s\n' run deliveries/s \
    'per srv CPU-s' 'p50 us' 'p99 us' 'p99.9 us' 'max us' 'srv %' 'gen %' 'cpu0' 'cpu1'
jq -r '[.name, (.msgs_per_s | floor),
    (if .server_cpu > 0 then (.msgs_per_s * 100 / .server_cpu | floor) else 0 end),
    .latency_us.p50, .latency_us.p99, .latency_us.p999, .latency_us.max, .server_cpu, .load_cpu_percent,
    .cpu0_busy, .cpu1_busy] | @tsv' "$WORK/results" |
    while IFS=$'\t' read -r n d per p50 p99 p999 max s l c0 c1; do
        printf '%-14s %13s %11s %9s %9s %9s %9s %6s %6s %4s%% %4s%%\n' "$n" "$d" "$per" "$p50" "$p99" \
            "$p999" "$max" "$s" "$l" "$c0" "$c1"
    done
best=$(jq -rs '[.[] | select(.name | startswith("a ")) | select(.latency_us.p99 <= 5000)]
    | max_by(.msgs_per_s) // empty | "\(.name): \(.msgs_per_s | floor) deliveries/s at p99 \(.latency_us.p99) us"' \
    "$WORK/results")
[[ $SCENARIOS != *a* ]] || printf '\na) best rate with p99 <= 5 ms: %s\n' "${best:-none}"
jq -r 'select(.subscribe.stall.connections > 0) | .subscribe.stall |
    "c) \(.connections) stalled \(.for_s) s: \(.resumed) resumed, \(.caught_up) caught up; first quote after resuming \(.first_age_ms.p50) ms old (p50);
   a quote published after the resume within \(.catch_up_ms.p50) ms (p50, max \(.catch_up_ms.max)), after \(.backlog_per_conn) older quotes;
   a live connection received \(.live_messages_during_stall_per_conn) quotes during the stall (what a stalled one would owe without conflation)"' \
    "$WORK/results"
jq -rs '[.[] | select(.name | startswith("c "))] | select(length == 2) |
    (.[0].subscribe.stall.live_latency_during_stall_us.p99) as $a |
    (.[1].subscribe.stall.live_latency_during_stall_us.p99) as $b |
    "c) live p99 over the measurement: \(.[0].latency_us.p99) us without the stall, \(.[1].latency_us.p99) us with it (\((100 * .[1].latency_us.p99 / .[0].latency_us.p99 - 100) | floor)%)
c) live p99 during the stall window: \($a) us without, \($b) us with (\((100 * $b / $a - 100) | floor)%)"' \
    "$WORK/results"
exit "$failed"
