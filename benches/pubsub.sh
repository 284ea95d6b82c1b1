#!/usr/bin/env bash
# pubsub.sh: the pub/sub fan-out benchmarks of issue 5, with `ringws serve --mode feed` as the
# publisher and `ringws load --subscribe` as the subscribers, each its own process (10,000
# connections need 10,000 descriptors on each side; the box allows 20,000 per process).
#
#   a) 1 publisher -> N subscribers of one topic (N of --connections-a, default 10,000), server
#      --workers 1 pinned on CPU 0, the generator (one worker) on CPU 1: deliveries/s and
#      publish->receive p50/p99/p99.9, for each publish rate of --rates-a (deliveries/s = rate x N).
#      Before each, the same fan-out by benches/fanout_floor (one 100-byte send to each of N
#      loopback sockets per publication, sender on CPU 0, epoll receiver on CPU 1, latency from the
#      scheduled publish time), with plain blocking writes and with io_uring batched sends (--floor
#      picks): the bare-kernel floor, so ringws reads as a ratio of it. The best runs are the ones
#      with the most deliveries/s and the most subscribers at p99 <= 5 ms.
#   b) 1,000 topics x 10 subscribers, server --workers 2 (the ticker thread publishes into both
#      workers' inboxes), the generator on CPU 1 (so it shares a CPU with server worker 1), for each
#      rate of --rates-b (deliveries/s = rate x 10).
#   c) slow consumers: 100 symbols, two generator processes of 100 connections each subscribed to
#      all of them (deliveries/s = rate x 200), both on CPU 1: the live one, measured, and the
#      other, run twice back to back: reading (`--stall 0`) and with its 100 connections not
#      reading for --stall-for seconds (`--stall 100`). The live process reports the same stall
#      window in both (`--stall 0 --stall-at 1 --stall-for S`), so its p99 with and without
#      stalled neighbours compares directly, and the stalled connections' backlog is read by
#      their own process, not the live one's thread. The server runs --max-backpressure
#      --backpressure-c (default 16384) and, unless --send-buffer-c 0, `--send-buffer
#      --send-buffer-c` (default 4096), the stalled process `--recv-buffer` of the same size:
#      what a stalled subscriber has not read then waits in the server's queue, where Conflate
#      keeps one quote per symbol, instead of in MBs of kernel buffers. These runs measure
#      --stall-for + 3 seconds (the stall starts 1 s in).
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
CONNECTIONS_A=10000
FLOORS=write,io_uring
SEND_BUFFER_C=4096
BACKPRESSURE_C=16384
RATES_B=20000,100000,200000
RATE_C=10000
DURATION=5
WARMUP=2
STALL_FOR=5
PORT=19301
NICE=0
OUT=
SERVER_EXTRA=
readonly CONNECTIONS=10000
readonly CONNECTIONS_C=100
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
  --connections-a LIST  subscriber counts for a, each run at every rate (default $CONNECTIONS_A)
  --floor LIST      a: bare-kernel baselines run before each ringws run (benches/fanout_floor):
                    any of write, io_uring, or none (default $FLOORS)
  --rates-b LIST    publish rates for b (default $RATES_B)
  --rate-c R        publish rate for c (default $RATE_C)
  --duration S      measured seconds per run (default $DURATION)
  --warmup S        seconds after all connections are up before measuring (default $WARMUP)
  --stall-for S     c: seconds the stalled subscribers do not read (default $STALL_FOR)
  --send-buffer-c B c: server --send-buffer and stalled clients' --recv-buffer, 0 for kernel
                    autotuning (default $SEND_BUFFER_C)
  --backpressure-c B  c: server --max-backpressure (default $BACKPRESSURE_C)
  --port P          server port on 127.0.0.1 (default $PORT)
  --nice N          run the server and the generator at this niceness (default $NICE; e.g. -10 as
                    root on a box shared with builds, so they are not starved by nice-0 work)
  --server-args A   more \`ringws serve\` arguments for every run (e.g. "--ring-entries 8192", for
                    an A/B against the defaults)
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
        --connections-a) CONNECTIONS_A=${2:?} ; shift ;;
        --floor) FLOORS=${2:?} ; shift ;;
        --send-buffer-c) SEND_BUFFER_C=${2:?} ; shift ;;
        --backpressure-c) BACKPRESSURE_C=${2:?} ; shift ;;
        --rates-b) RATES_B=${2:?} ; shift ;;
        --rate-c) RATE_C=${2:?} ; shift ;;
        --duration) DURATION=${2:?} ; shift ;;
        --warmup) WARMUP=${2:?} ; shift ;;
        --stall-for) STALL_FOR=${2:?} ; shift ;;
        --port) PORT=${2:?} ; shift ;;
        --nice) NICE=${2:?} ; shift ;;
        --binary) BINARY=${2:?} ; shift ;;
        --server-args) SERVER_EXTRA=${2:?} ; shift ;;
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
for n in "$SEND_BUFFER_C" "$BACKPRESSURE_C"; do
    [[ $n =~ ^[0-9]+$ ]] || die_usage "buffer sizes are whole bytes"
done
[[ $CONNECTIONS_A =~ ^[0-9]+(,[0-9]+)*$ ]] || die_usage "--connections-a takes a list of counts"
[[ $FLOORS =~ ^(none|(write|io_uring)(,(write|io_uring))*)$ ]] || die_usage "--floor takes write, io_uring or none"
[[ $FLOORS != none ]] || FLOORS=
FLOOR_BINARY=$ROOT/benches/fanout_floor/target/release/fanout-floor

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


# run NAME CONNECTIONS "SERVER ARGS" "LOAD ARGS" ["OTHER LOAD ARGS"]: one measured run; appends
# a JSON line to $WORK/results. With OTHER LOAD ARGS a second generator process (its arguments
# after the common ones, --connections included) runs alongside; its report goes under "other".
# Each run has log files of its own (a new file cannot show an old run's lines).
RUNS=0
run() {
    local name=$1 connections=$2 server_args=$3 load_args=$4 other_args=${5:-} cpus=0 sp lp op=
    RUNS=$((RUNS + 1))
    local slog=$WORK/server.$RUNS.log llog=$WORK/load.$RUNS.log ljson=$WORK/load.$RUNS.json
    local olog=$WORK/other.$RUNS.log ojson=$WORK/other.$RUNS.json
    [[ $server_args == *"--workers 2"* ]] && cpus=0,1
    local server_cmd="nice -n $NICE taskset -c $cpus $BINARY serve --mode feed --addr 127.0.0.1:$PORT $server_args $SERVER_EXTRA"
    local common="nice -n $NICE taskset -c 1 $BINARY load --url ws://127.0.0.1:$PORT/ --workers 1 --source-ips $SOURCES --warmup $WARMUP --duration $DURATION --json"
    local load_cmd="$common --connections $connections $load_args"
    local other_cmd="$common $other_args"
    printf '\n== %s\n$ %s\n$ %s\n' "$name" "$server_cmd" "$load_cmd"
    [[ -z $other_args ]] || printf '$ %s\n' "$other_cmd"
    # shellcheck disable=SC2086 # the argument strings are split on purpose
    $server_cmd </dev/null >"$slog" 2>&1 &
    sp=$!
    PIDS+=("$sp")
    wait_for "$slog" '^listening on' "$sp" 10 || {
        log "server did not start: $(cat "$slog")"
        stop_run "$sp"
        return 1
    }
    if [[ -n $other_args ]]; then
        # shellcheck disable=SC2086
        $other_cmd </dev/null >"$ojson" 2>"$olog" &
        op=$!
        PIDS+=("$op")
    fi
    # shellcheck disable=SC2086
    $load_cmd </dev/null >"$ljson" 2>"$llog" &
    lp=$!
    PIDS+=("$lp")
    if ! wait_for "$llog" '"phase":"established"' "$lp" 60 ||
        { [[ -n $op ]] && ! wait_for "$olog" '"phase":"established"' "$op" 60; }; then
        log "generator did not connect: $(tail -5 "$llog" ${op:+"$olog"})"
        stop_run "$sp" "$lp" ${op:+"$op"}
        return 1
    fi
    sleep "$WARMUP"
    local s0 c0 c1 s1 d0 d1
    s0=$(ticks "$sp") c0=$(cpu_busy 0) c1=$(cpu_busy 1)
    sleep "$DURATION"
    s1=$(ticks "$sp") d0=$(cpu_busy 0) d1=$(cpu_busy 1)
    local limit=$((SECONDS + 30)) status=0 ostatus=0
    while alive "$lp" && ((SECONDS < limit)); do sleep 0.2; done
    wait "$lp" || status=$?
    if [[ -n $op ]]; then
        while alive "$op" && ((SECONDS < limit)); do sleep 0.2; done
        wait "$op" || ostatus=$?
    fi
    kill -INT "$sp" 2>/dev/null || true
    wait "$sp" || true
    PIDS=()
    if [[ ! -s $ljson ]] || { [[ -n $op ]] && [[ ! -s $ojson ]]; }; then
        log "no report from a generator (exit $status, $ostatus): $(tail -5 "$llog" ${op:+"$olog"})"
        return 1
    fi
    local other=null
    [[ -z $op ]] || other=$(jq -c --argjson exit "$ostatus" '{exit: $exit} + .' "$ojson")
    record "$name" "$status" "$ljson" "$((s1 - s0))" "$c0" "$d0" "$c1" "$d1" "$other"
}

# record NAME STATUS JSON SERVER_TICKS C0 D0 C1 D1 [OTHER]: appends the run's line to
# $WORK/results: the generator's report plus the busy share of each CPU over the window (C/D:
# cpu_busy before and after) and, if SERVER_TICKS is not empty, the server's share of one CPU, in
# percent (a generator reports its own over its measurement window: load_cpu_percent).
record() {
    local name=$1 status=$2 json=$3 server=$4 other=${9:-null} cpu
    cpu=$(awk -v s="$server" -v d="$DURATION" -v a="$5" -v b="$6" -v c="$7" -v e="$8" 'BEGIN {
            split(a, x, " "); split(b, y, " "); split(c, z, " "); split(e, w, " ");
            printf "{\"cpu0_busy\":%.0f,\"cpu1_busy\":%.0f", 100 * (y[1] - x[1]) / (y[2] - x[2]),
                100 * (w[1] - z[1]) / (w[2] - z[2]);
            if (s != "") printf ",\"server_cpu\":%.0f", s / d;
            print "}" }')
    jq -c --arg name "$name" --argjson cpu "$cpu" --argjson exit "$status" --argjson other "$other" \
        '{name: $name, exit: $exit} + . + $cpu + (if $other then {other: $other} else {} end)' \
        "$json" >>"$WORK/results"
    jq -r '"   \(.msgs_per_s | floor) deliveries/s, p50 \(.latency_us.p50) us, p99 \(.latency_us.p99) us, server CPU \(.server_cpu)%, generator CPU \(.load_cpu_percent)%"' \
        <<<"$(tail -1 "$WORK/results")"
}

# floor NAME CONNECTIONS RATE SENDS: the bare-kernel baseline of scenario a (benches/fanout_floor,
# which pins its sender on CPU 0 and its receiver on CPU 1 and reports its sender's CPU as
# server_cpu); SENDS is write or io_uring.
floor() {
    local name=$1 connections=$2 rate=$3 fp status=0 uring=
    RUNS=$((RUNS + 1))
    [[ $4 == io_uring ]] && uring=--io-uring
    local flog=$WORK/floor.$RUNS.log fjson=$WORK/floor.$RUNS.json
    local cmd="nice -n $NICE $FLOOR_BINARY --connections $connections --rate $rate --warmup $WARMUP --duration $DURATION --sender-cpu 0 --receiver-cpu 1 $uring"
    printf '\n== %s\n$ %s\n' "$name" "$cmd"
    # shellcheck disable=SC2086
    $cmd </dev/null >"$fjson" 2>"$flog" &
    fp=$!
    PIDS+=("$fp")
    if ! wait_for "$flog" '"phase":"established"' "$fp" 60; then
        log "the floor did not connect: $(tail -5 "$flog")"
        stop_run "$fp"
        return 1
    fi
    sleep "$WARMUP"
    local c0 c1 d0 d1
    c0=$(cpu_busy 0) c1=$(cpu_busy 1)
    sleep "$DURATION"
    d0=$(cpu_busy 0) d1=$(cpu_busy 1)
    local limit=$((SECONDS + 30))
    while alive "$fp" && ((SECONDS < limit)); do sleep 0.2; done
    ! alive "$fp" || stop_pids "$fp"
    wait "$fp" || status=$?
    PIDS=()
    if [[ ! -s $fjson ]]; then
        log "no report from the floor (exit $status): $(tail -5 "$flog")"
        return 1
    fi
    record "$name" "$status" "$fjson" "" "$c0" "$d0" "$c1" "$d1"
}

[[ -x $BINARY ]] || (cd "$ROOT" && cargo build --release --bin ringws)
if [[ $SCENARIOS == *a* && -n $FLOORS && ! -x $FLOOR_BINARY ]]; then
    cargo build --release --manifest-path "$ROOT/benches/fanout_floor/Cargo.toml"
fi
ulimit -n 20000 || die_usage "cannot raise the open-file limit to 20000 (ulimit -n)"
log "$(nproc) CPUs, Linux $(uname -r), $BINARY; runs of ${WARMUP}+${DURATION} s after connecting"
failed=0

if [[ $SCENARIOS == *a* ]]; then
    for n in ${CONNECTIONS_A//,/ }; do
        for rate in ${RATES_A//,/ }; do
            for sends in ${FLOORS//,/ }; do
                floor "a $sends n=$n r=$rate" "$n" "$rate" "$sends" || failed=1
            done
            run "a n=$n r=$rate" "$n" "--workers 1 --symbols 1 --rate $rate" "--subscribe BTC-USD" || failed=1
        done
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
    c_server="--workers 1 --symbols 100 --rate $RATE_C --max-backpressure $BACKPRESSURE_C"
    c_window="--subscribe all --stall-at 1 --stall-for $STALL_FOR"
    c_other="--connections $CONNECTIONS_C $c_window"
    if ((SEND_BUFFER_C)); then
        c_server+=" --send-buffer $SEND_BUFFER_C"
        c_other+=" --recv-buffer $SEND_BUFFER_C"
    fi
    for n in 0 "$CONNECTIONS_C"; do
        run "c others stall $n" "$CONNECTIONS_C" "$c_server" "$c_window --stall 0" \
            "$c_other --stall $n" || failed=1
    done
fi

[[ -n $OUT ]] && cp "$WORK/results" "$OUT"
# per srv CPU-s: deliveries per second of server CPU time (deliveries/s / server CPU share), the
# server's cost per delivery whatever share of the CPUs it got.
printf '\n%-20s %13s %11s %9s %9s %9s %9s %6s %6s %5s %5s\n' run deliveries/s \
    'per srv CPU-s' 'p50 us' 'p99 us' 'p99.9 us' 'max us' 'srv %' 'gen %' 'cpu0' 'cpu1'
jq -r '[.name, (.msgs_per_s | floor),
    (if .server_cpu > 0 then (.msgs_per_s * 100 / .server_cpu | floor) else 0 end),
    .latency_us.p50, .latency_us.p99, .latency_us.p999, .latency_us.max, .server_cpu, .load_cpu_percent,
    .cpu0_busy, .cpu1_busy] | @tsv' "$WORK/results" |
    while IFS=$'\t' read -r n d per p50 p99 p999 max s l c0 c1; do
        printf '%-20s %13s %11s %9s %9s %9s %9s %6s %6s %4s%% %4s%%\n' "$n" "$d" "$per" "$p50" "$p99" \
            "$p999" "$max" "$s" "$l" "$c0" "$c1"
    done
if [[ $SCENARIOS == *a* ]]; then
    # ringws as a ratio of the floor measured just before it (same subscribers, same rate).
    jq -rs 'INDEX(.[] | select(.mode == "floor"); "\(.sends) \(.connections) \(.rate)") as $floor |
        .[] | select(.mode == "subscribe" and (.name | startswith("a "))) |
        . as $r | ($r.name | capture("r=(?<r>[0-9]+)").r) as $rate |
        ("write", "io_uring") | $floor["\(.) \($r.connections) \($rate)"] as $f | select($f) |
        ($r.latency_us) as $l | (100 * $r.server_cpu / $r.msgs_per_s) as $cost |
        "a) \($r.name) / \(.) floor: p50 \($l.p50 / $f.latency_us.p50 * 100 | round / 100)x, p99 \($l.p99 / $f.latency_us.p99 * 100 | round / 100)x (floor p99 \($f.latency_us.p99 | round) us, fan-out \($f.fanout_us.p50 | round) us p50); deliveries/s \($r.msgs_per_s / $f.msgs_per_s * 100 | round / 100)x; CPU per delivery \($cost / (100 * $f.server_cpu / $f.msgs_per_s) * 100 | round / 100)x"' \
        "$WORK/results"
    # The best ringws run at p99 <= 5 ms: most deliveries/s, and most subscribers.
    jq -rs '[.[] | select(.mode == "subscribe" and (.name | startswith("a ")) and .latency_us.p99 <= 5000)] |
        if length == 0 then "a) no ringws run met p99 <= 5 ms" else
        (max_by(.msgs_per_s) | "a) most deliveries/s at p99 <= 5 ms: \(.name), \(.msgs_per_s | floor)/s at p99 \(.latency_us.p99) us"),
        (max_by([.connections, .msgs_per_s]) | "a) most subscribers at p99 <= 5 ms: \(.name), \(.msgs_per_s | floor)/s at p99 \(.latency_us.p99) us")
        end' "$WORK/results"
fi
jq -r 'select(.other.subscribe.stall.connections > 0) |
    .subscribe.stall.live_messages_during_stall_per_conn as $owed | .other.subscribe.stall |
    "c) \(.connections) stalled \(.for_s) s: \(.resumed) resumed, \(.caught_up) caught up; first quote after resuming \(.first_age_ms.p50) ms old (p50);
   a quote published after the resume within \(.catch_up_ms.p50) ms (p50, max \(.catch_up_ms.max)), after \(.backlog_per_conn) older quotes;
   a live connection received \($owed) quotes during the stall (what a stalled one would owe without conflation)"' \
    "$WORK/results"
jq -rs '[.[] | select(.name | startswith("c "))] | select(length == 2) |
    (.[0].subscribe.stall.live_latency_during_stall_us.p99) as $a |
    (.[1].subscribe.stall.live_latency_during_stall_us.p99) as $b |
    "c) live process p99 over the measurement: \(.[0].latency_us.p99) us with the other process reading, \(.[1].latency_us.p99) us with it stalled (\((100 * .[1].latency_us.p99 / .[0].latency_us.p99 - 100) | floor)%)
c) live process p99 during the stall window: \($a) us without, \($b) us with (\((100 * $b / $a - 100) | floor)%)"' \
    "$WORK/results"
exit "$failed"
