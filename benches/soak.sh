#!/usr/bin/env bash
# soak.sh: churn and traffic against two release `ringws serve` processes for a bounded time, watching
# their memory and descriptors (issue 6; not part of CI).
#
#   benches/soak.sh [MINUTES [SERVE_ARGS...]]   (default 30 minutes; RINGWS_BIN=path uses that
#                                              binary instead of building)
#
# SERVE_ARGS go to both servers, e.g. `--buffer-count 64`: the default receive pool (16 MiB per
# worker) is faulted in as buffers are first used, which can show as RSS growth during a run; a small
# pool keeps that out of the figures.
#
# Servers on 127.0.0.1, one worker each: an echo server and the market feed (`--mode feed`, 100
# symbols, 1000 quotes/s). Until MINUTES have passed, three `ringws load` loops run back to back:
#   churn    500 connections from 8 source addresses open, each checks one echo, all close (~2 s)
#   echo     50 connections, 2000 verified echoes/s in total (open loop), 60 s per run
#   pubsub   100 subscribers to the feed, 10 symbols each, 30 s per run
# Every 10 s it prints a line: elapsed seconds, per server VmRSS (KiB), open descriptors and
# established connections, then per loop the runs finished and the errors reported so far (a run's
# errors: its failed connections plus every error counter of its JSON report; a run that exits
# non-zero counts one). At the end: each server's mean RSS over the first and the last 10 minutes
# (thirds of the run when it is shorter than 30 minutes), peak descriptors, and the totals. Exits 1
# if a server died or any run reported an error.
#
# Everything is bounded: each load run by its duration (and `timeout`), the loops by the deadline,
# the servers are stopped with SIGINT (SIGKILL after 10 s). Logs, the samples (samples.tsv) and
# every run's JSON go to target/soak/<UTC time>/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# alive PID and stop_pids PID... (SIGINT, SIGKILL after GRACE seconds).
# shellcheck source-path=SCRIPTDIR source=lib/procs.sh
source benches/lib/procs.sh
readonly GRACE=10

say() { printf 'soak.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

minutes=${1:-30}
[[ $minutes =~ ^[1-9][0-9]*$ ]] || die "MINUTES must be a positive integer, got '$minutes'"
shift || true
serve_args=("$@")
command -v python3 >/dev/null || die "python3 is needed to read ringws load's JSON reports"

if [[ -n ${RINGWS_BIN:-} ]]; then
    bin=$RINGWS_BIN
else
    say "building the release binary"
    cargo build --release --quiet --bin ringws
    bin=target/release/ringws
fi
[[ -x $bin ]] || die "$bin is not an executable"

out=target/soak/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

servers=() loops=()
# Each load loop is its own process group (job control below, and `timeout --foreground` keeps
# `ringws load` in it): SIGTERM to the group ends the loop and its current run together.
cleanup() {
    local p
    for p in "${loops[@]}"; do
        kill -TERM -- "-$p" 2>/dev/null || true
    done
    loops=()
    stop_pids "${servers[@]}"
    servers=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server NAME ARGS...: starts `ringws serve`, waits (bounded) for its ready line; sets $port
# and $pid.
start_server() {
    local name=$1 i
    shift
    port=$(free_port)
    "$bin" serve --addr "127.0.0.1:$port" --workers 1 "$@" "${serve_args[@]}" >"$out/$name.log" 2>&1 &
    pid=$!
    servers+=("$pid")
    for ((i = 0; i < 200; i++)); do
        grep -q '^listening on ' "$out/$name.log" && return 0
        alive "$pid" || die "$name server exited: $(cat "$out/$name.log")"
        sleep 0.05
    done
    die "$name server not ready within 10 s"
}

start_server echo
echo_port=$port echo_pid=$pid
start_server feed --mode feed --symbols 100 --rate 1000
feed_port=$port feed_pid=$pid

start=$SECONDS
end=$((start + minutes * 60))

# load_loop NAME MAX_SECONDS ARGS...: runs `ringws load ARGS --duration D --json` until the deadline,
# D = min(MAX_SECONDS, time left); appends "exit_status errors" per run to $out/NAME.runs.
load_loop() {
    local name=$1 max=$2 run=0 left dur status errors
    shift 2
    : >"$out/$name.runs"
    while :; do
        left=$((end - SECONDS))
        ((left >= 2)) || break
        dur=$((left < max ? left : max))
        run=$((run + 1))
        status=0
        timeout --foreground --kill-after=5 $((dur + 60)) "$bin" load "$@" --duration "$dur" --json \
            >"$out/$name.$run.json" 2>>"$out/$name.log" || status=$?
        errors=$(python3 - "$out/$name.$run.json" <<'EOF' 2>/dev/null || echo 1
import json, sys
r = json.load(open(sys.argv[1]))
print(r.get("connections_failed", 0) + sum(r.get("errors", {}).values()))
EOF
)
        ((status == 0)) || errors=$((errors + 1))
        echo "$status $errors" >>"$out/$name.runs"
    done
}

set -m
load_loop churn 2 --url "ws://127.0.0.1:$echo_port/" --connections 500 --hold --ping-once 32 \
    --source-ips 127.0.70.1-127.0.70.8 --workers 1 &
loops+=($!)
load_loop echo 60 --url "ws://127.0.0.1:$echo_port/" --connections 50 --rate 2000 --size 256 \
    --warmup 0 --workers 1 &
loops+=($!)
load_loop pubsub 30 --url "ws://127.0.0.1:$feed_port/" --subscribe all --symbols-per-conn 10 \
    --connections 100 --warmup 0 --workers 1 &
loops+=($!)
set +m

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
established() { ss -Htn state established "( sport = :$1 )" 2>/dev/null | wc -l; }
# runs NAME: "finished_runs errors" so far.
runs() { awk '{ n++; e += $2 } END { printf "%d %d\n", n, e }' "$out/$1.runs" 2>/dev/null || echo "0 0"; }

samples=$out/samples.tsv
printf 't_s\techo_rss_kib\techo_fds\techo_conns\tfeed_rss_kib\tfeed_fds\tfeed_conns\tchurn_runs\tchurn_errors\techo_runs\techo_errors\tpubsub_runs\tpubsub_errors\n' >"$samples"
say "soaking for $minutes min (serve ${serve_args[*]:-with defaults}): echo server :$echo_port (pid $echo_pid), feed :$feed_port (pid $feed_pid); logs in $out"
printf '%6s  %-24s  %-24s  %-11s %-11s %-11s\n' t "echo rss/fds/conns" "feed rss/fds/conns" churn echo pubsub
died=""
next=$((start + 10))
while ((SECONDS < end)); do
    sleep $((next > SECONDS ? next - SECONDS : 0))
    next=$((next + 10))
    for p in $echo_pid $feed_pid; do
        alive "$p" || died="$died $p"
    done
    [[ -z $died ]] || break
    t=$((SECONDS - start))
    read -r cr ce < <(runs churn)
    read -r er ee < <(runs echo)
    read -r pr pe < <(runs pubsub)
    row=("$t" "$(rss_kib "$echo_pid")" "$(fds "$echo_pid")" "$(established "$echo_port")"
        "$(rss_kib "$feed_pid")" "$(fds "$feed_pid")" "$(established "$feed_port")"
        "$cr" "$ce" "$er" "$ee" "$pr" "$pe")
    (IFS=$'\t'; echo "${row[*]}") >>"$samples"
    printf '%6s  %-24s  %-24s  %-11s %-11s %-11s\n' "${row[0]}" "${row[1]}K/${row[2]}/${row[3]}" \
        "${row[4]}K/${row[5]}/${row[6]}" "$cr/${ce}err" "$er/${ee}err" "$pr/${pe}err"
done

# Let the loops finish their last runs (each ends by the deadline, plus its close), then stop all.
if [[ -z $died ]]; then
    for p in "${loops[@]}"; do
        for ((i = 0; i < 900; i++)); do
            alive "$p" || break
            sleep 0.1
        done
    done
fi
cleanup

status=0
[[ -z $died ]] || { say "a server died:$died"; status=1; }
# Summary: mean RSS over the first and last windows (10 min, or a third of a shorter run).
awk -F'\t' -v total=$((minutes * 60)) '
    NR == 1 { next }
    { t[NR] = $1; er[NR] = $2; fr[NR] = $5; if ($3 > ef) ef = $3; if ($6 > ff) ff = $6; last = NR }
    END {
        w = total >= 1800 ? 600 : total / 3
        for (i = 2; i <= last; i++) {
            if (t[i] <= w) { n1++; e1 += er[i]; f1 += fr[i] }
            if (t[i] > t[last] - w) { n2++; e2 += er[i]; f2 += fr[i] }
        }
        if (n1 == 0 || n2 == 0) { print "soak: too few samples for a summary"; exit }
        printf "soak summary over %d s (%d samples; windows of %d s):\n", t[last], last - 1, w
        printf "  echo server RSS: first %.0f KiB, last %.0f KiB (%+.1f%%); peak fds %d\n", e1 / n1, e2 / n2, 100 * (e2 / n2 - e1 / n1) / (e1 / n1), ef
        printf "  feed server RSS: first %.0f KiB, last %.0f KiB (%+.1f%%); peak fds %d\n", f1 / n1, f2 / n2, 100 * (f2 / n2 - f1 / n1) / (f1 / n1), ff
    }' "$samples" | tee "$out/summary.txt"
for name in churn echo pubsub; do
    read -r n e < <(runs "$name")
    printf '  %-7s %d runs, %d errors\n' "$name" "$n" "$e" | tee -a "$out/summary.txt"
    ((e == 0)) || { say "$name: errors (see $out/$name.*.json, $out/$name.log)"; status=1; }
done
exit "$status"
