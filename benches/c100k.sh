#!/usr/bin/env bash
# c100k.sh: brings N concurrent WebSocket connections up on this host and down again, and reports
# what they cost.
#
# One process may hold fewer descriptors than N (20,000 on the project's box, and not raisable), so
# the server runs as several `ringws serve --share-port` processes on one port (SO_REUSEPORT: the
# kernel spreads connections over their listeners), each with one worker pinned to a CPU in turn, and
# the clients as several `c100k-client` processes (benches/c100k/, built on ringws-protocol), each
# from source addresses of its own (127.0.0.x), so no (source, destination) pair runs out of ports.
#
# Steps: preflight (limits, `ringws check`, optional sysctl tuning), baseline, servers up, a warm-up
# round (1,000 connections per server opened and closed, so the fixed costs of allocator arenas and
# receive buffers are paid before the per-connection numbers are taken), clients up (timed: time to
# establish all, handshakes per second), snapshot (server RSS, kernel socket memory from
# /proc/net/sockstat, /proc/meminfo and /proc/slabinfo), one message over every connection and back
# (latency percentiles over all samples of all clients), clean teardown (every client closes with
# a Close handshake, no server connection is left, every process exits 0), report.
#
# Everything is bounded: every wait has a deadline within --timeout, and an EXIT/INT/TERM trap stops
# every process the script started (SIGINT, then SIGKILL after a grace period) and reverts the sysctls
# it applied. Exit status: 0 every connection up and down with zero errors, 1 failure, 2 usage.
# benches/c100k/README.md explains the choices and lists measured numbers.
#
# Connection storms: the clients' establish phase is a storm (every client process dials at once).
# The report gives its handshakes per second per server worker and per server CPU-second (utime +
# stime of the server processes over the storm). `--echo E` runs `ringws load` with E connections
# echoing flat out (4 messages in flight each) against the same servers from before the storm until
# it is over; `--server fastwebsockets|tungstenite` serves with benches/compare's peers (several
# `--share-port` processes, as ringws); `--runs N` and a list in `--server` repeat the whole run N
# times for each server in turn (each run a fresh invocation of this script, in its own namespace)
# and print the rates side by side with each peer's ratio to ringws in the same round.

set -euo pipefail

PROG=${0##*/}
readonly PROG
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT

CONNECTIONS=100000
DIAL=256
PER_PROCESS=17000
PORT=19001
MESSAGE_SIZE=32
TIMEOUT=900
BINARY=$ROOT/target/release/ringws
CLIENT=$ROOT/benches/c100k/target/release/c100k-client
OUT=
NETNS=1
LOAD=0
TUNE=0
KEEP=0
SERVER=ringws
PEER_DIR=$ROOT/benches/compare/target/release
RUNS=1
ECHO=0
# The arguments a run of a --runs/--server series passes on to each run (all but those and --out).
PASS=()
# Seconds a process gets to exit after SIGINT before it is killed.
readonly GRACE=10
# Descriptors a process needs besides its connections (listener, ring, event fds, stdio).
readonly FD_SLACK=256
# Warm-up connections per server process: more handshakes than a worker has receive buffers (512).
readonly WARMUP_PER_SERVER=1000
# Messages in flight on each --echo connection.
readonly ECHO_IN_FLIGHT=4

usage() {
    cat <<EOF
Usage: $PROG [options]

Brings N WebSocket connections up on 127.0.0.0/8 (servers and clients on this host), sends one
message over each and back, closes them all, and reports the cost.

  --connections N   connections in total (default $CONNECTIONS)
  --per-process M   connections per server and per client process at most (default $PER_PROCESS);
                    M + $FD_SLACK must fit the nofile limit ($(ulimit -Sn) in this shell)
  --port P          the shared server port on 127.0.0.1 (default $PORT)
  --message-size B  bytes of the one round-trip message (default $MESSAGE_SIZE)
  --dial K          connections each client has in progress at most (default $DIAL)
  --timeout S       bound on the whole run in seconds (default $TIMEOUT)
  --binary PATH     the ringws binary (default target/release/ringws, built if missing)
  --client PATH     the client (default benches/c100k/target/release/c100k-client, built if missing)
  --load            use \`ringws load --hold --ping-once\` as the client instead: each client process
                    sends its round-trip messages as soon as its own connections are up, and the
                    percentiles are each process's (the report gives the worst of them)
  --server LIST     what serves: ringws (default), fastwebsockets, tungstenite (benches/compare's
                    peers, from --peer-dir, run with --share-port), or a comma-separated list of
                    them, run one after the other (each run as with --runs)
  --peer-dir DIR    where the peers' binaries are (default benches/compare/target/release; build
                    them with cargo build --release --manifest-path benches/compare/Cargo.toml)
  --echo E          E more connections (\`ringws load\`, --message-size bytes, $ECHO_IN_FLIGHT in flight)
                    echo flat out from before the clients' storm until it is over (default 0)
  --runs N          repeat the whole run N times (for each --server in turn) and print every run's
                    storm rate with each peer's ratio to ringws in the same round
  --tune            (root) apply tuning/sysctl.sh for N connections first, revert it at exit
  --no-netns        run in this network namespace; by default (as root) the run gets a network
                    namespace of its own, so /proc/net/sockstat and ss count only its sockets
  --out FILE        also write the numbers as one JSON object to FILE (with --runs or a list:
                    one JSON object per run, one per line)
  --keep            keep the work directory (process logs, latency samples) after the run
  -h, --help        this text

Exit status: 0 every connection up and down with zero errors (in every run), 1 failure, 2 usage.
EOF
}

usage_error() {
    printf '%s: %s\n' "$PROG" "$1" >&2
    printf 'Try '\''%s --help'\''.\n' "$PROG" >&2
    exit 2
}

die() {
    printf '%s: %s\n' "$PROG" "$1" >&2
    exit 1
}

START=$EPOCHREALTIME
DEADLINE=0

# log MESSAGE: a progress line on stderr with the seconds since start.
log() {
    printf '[%7.1fs] %s\n' "$(elapsed "$START")" "$1" >&2
}

# elapsed FROM: seconds since the EPOCHREALTIME value FROM, with three decimals.
elapsed() {
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'
}

# --- processes ---------------------------------------------------------------------------------

WORK=
PIDS=()
TUNED_BACKUP=

# alive PID and stop_pids PID... (SIGINT, SIGKILL after GRACE seconds).
# shellcheck source-path=SCRIPTDIR source=lib/procs.sh
. "$ROOT/benches/lib/procs.sh"

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((${#PIDS[@]})); then
        stop_pids "${PIDS[@]}"
        wait 2>/dev/null || true
    fi
    if [[ -n $TUNED_BACKUP ]]; then
        "$ROOT/tuning/sysctl.sh" revert --backup "$TUNED_BACKUP" >&2 || status=1
    fi
    if [[ -n $WORK ]]; then
        if ((KEEP)); then
            printf '%s: logs kept in %s\n' "$PROG" "$WORK" >&2
        else
            rm -rf -- "$WORK"
        fi
    fi
    exit "$status"
}

# start NAME CPU COMMAND...: starts COMMAND pinned to CPU, stdout and stderr in $WORK/NAME.log, and
# records its pid in PIDS and LAST_PID (taskset execs, so the pid is the command's own).
LAST_PID=
start() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" </dev/null >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# forget PID...: the processes have exited and been waited for; cleanup need not stop them.
forget() {
    local pid keep=() gone
    for pid in "${PIDS[@]}"; do
        for gone in "$@"; do
            [[ $pid == "$gone" ]] && continue 2
        done
        keep+=("$pid")
    done
    PIDS=("${keep[@]}")
}

# deadline_in SECONDS: the SECONDS value at which a wait of SECONDS ends, never past the run's deadline.
deadline_in() {
    local at=$((SECONDS + $1))
    printf '%s' $((at < DEADLINE ? at : DEADLINE))
}

# wait_for_line FILE PATTERN PID SECONDS: waits until FILE has a line matching the extended regex
# PATTERN; fails if PID exits first or SECONDS (bounded by the run's deadline) pass.
wait_for_line() {
    local file=$1 pattern=$2 pid=$3 limit
    limit=$(deadline_in "$4")
    while ! grep -Eq -- "$pattern" "$file" 2>/dev/null; do
        if ! alive "$pid"; then
            grep -Eq -- "$pattern" "$file" 2>/dev/null
            return
        fi
        ((SECONDS < limit)) || return 1
        sleep 0.1
    done
}

# wait_exit PID SECONDS: waits for PID (a child of this shell) to exit and sets EXIT_STATUS to its
# exit status, or to "timeout". Not for $(...): a subshell cannot wait for its parent's children.
EXIT_STATUS=
wait_exit() {
    local pid=$1 limit
    limit=$(deadline_in "$2")
    while alive "$pid"; do
        if ((SECONDS >= limit)); then
            EXIT_STATUS=timeout
            return 0
        fi
        sleep 0.1
    done
    EXIT_STATUS=0
    wait "$pid" || EXIT_STATUS=$?
}

# --- measurements ------------------------------------------------------------------------------

# sockstat: "inuse orphan tw alloc mem" of the TCP line of /proc/net/sockstat (mem in pages).
sockstat() {
    awk '$1 == "TCP:" { print $3, $5, $7, $9, $11 }' /proc/net/sockstat
}

# meminfo_kib FIELD: a /proc/meminfo value in KiB.
meminfo_kib() {
    awk -v f="$1:" '$1 == f { print $2 }' /proc/meminfo
}

# The slab caches a TCP socket and its descriptor live in.
readonly SLAB_CACHES="TCP sock_inode_cache dentry filp tcp_bind_bucket tcp_bind2_bucket request_sock_TCP tw_sock_TCP skbuff_head_cache"

# slab_bytes: "cache=bytes ..." for SLAB_CACHES (active objects x object size); empty without root.
slab_bytes() {
    [[ -r /proc/slabinfo ]] || return 0
    awk -v names="$SLAB_CACHES" '
        BEGIN { n = split(names, list, " "); for (i = 1; i <= n; i++) want[list[i]] = 1 }
        want[$1] { printf "%s=%d ", $1, $2 * $4 }
    ' /proc/slabinfo
}

# rss_kib PID...: the summed VmRSS of the processes, in KiB.
rss_kib() {
    local pid total=0 kib
    for pid in "$@"; do
        kib=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$pid/status")
        total=$((total + kib))
    done
    printf '%s' "$total"
}

# tcp_counters: "listen-overflows syn-retransmits softnet-drops": TcpExt ListenOverflows and
# TCPSynRetrans from /proc/net/netstat, and the packets every CPU dropped because its backlog queue
# (net.core.netdev_max_backlog; loopback traffic passes it too) was full, from /proc/net/softnet_stat.
tcp_counters() {
    local drops=0 line
    local -a f
    while read -r line; do
        read -r -a f <<<"$line"
        drops=$((drops + 16#${f[1]}))
    done </proc/net/softnet_stat
    awk -v drops="$drops" '
        $1 == "TcpExt:" && !names { for (i = 2; i <= NF; i++) col[$i] = i; names = 1; next }
        $1 == "TcpExt:" { print $col["ListenOverflows"] + 0, $col["TCPSynRetrans"] + 0, drops; exit }
    ' /proc/net/netstat
}

# server_connections: established TCP connections whose local port is PORT.
server_connections() {
    ss -Htn state established "( sport = :$PORT )" | wc -l
}

# json_field FILE PHASE KEY DEFAULT: the number KEY on the last JSON line of FILE with "phase":"PHASE"
# (PHASE empty: the last JSON line without a phase, `ringws load`'s final report), or DEFAULT.
json_field() {
    local line v
    if [[ -n $2 ]]; then
        line=$(grep -F "\"phase\":\"$2\"" "$1" | tail -n 1)
    else
        line=$(grep '^{' "$1" | grep -vF '"phase":' | tail -n 1)
    fi
    v=$(sed -n "s/.*\"$3\":\([0-9.]*\).*/\1/p" <<<"$line")
    printf '%s' "${v:-$4}"
}

# cpu_ticks PID...: utime + stime of the processes (all their threads), in clock ticks.
cpu_ticks() {
    local pid total=0 t
    for pid in "$@"; do
        # The fields after the command name, which may hold spaces: utime and stime are the 12th and 13th.
        t=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")
        total=$((total + t))
    done
    printf '%s' "$total"
}

# start_server NAME CPU MAX_CONNECTIONS: starts one server process of the --server kind on the shared
# port, one worker (the peers: one tokio current_thread runtime).
start_server() {
    case $SERVER in
    ringws)
        start "$1" "$2" "$BINARY" serve --addr "127.0.0.1:$PORT" --share-port \
            --workers 1 --idle-timeout 0 --max-connections "$3"
        ;;
    *) start "$1" "$2" "$PEER_DIR/${SERVER}_echo" --addr "127.0.0.1:$PORT" --share-port ;;
    esac
}

# start_client NAME CPU COUNT SOURCES LATENCY_FILE: starts a client of COUNT connections from the
# SOURCES address block.
start_client() {
    local url="ws://127.0.0.1:$PORT/"
    if ((LOAD)); then
        start "$1" "$2" "$BINARY" load --url "$url" --connections "$3" --source-ips "$4" --workers 1 \
            --hold --duration "$TIMEOUT" --ping-once "$MESSAGE_SIZE" --size "$MESSAGE_SIZE" --json
    else
        start "$1" "$2" "$CLIENT" --url "$url" --connections "$3" --source-ips "$4" --dial "$DIAL" \
            --message-size "$MESSAGE_SIZE" --latencies "$5" --timeout "$TIMEOUT"
    fi
}

# per SUM COUNT: SUM / COUNT with one decimal ("-" without a count).
per() {
    awk -v s="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", s / n; else printf "-" }'
}

# jnum VALUE: VALUE for JSON: null for per's "-".
jnum() {
    [[ $1 == - ]] && printf null || printf '%s' "$1"
}

# cache_delta BEFORE AFTER NAME: bytes the slab cache NAME grew by between two slab_bytes snapshots.
cache_delta() {
    local before=0 after=0 entry
    for entry in $1; do [[ ${entry%%=*} == "$3" ]] && before=${entry#*=}; done
    for entry in $2; do [[ ${entry%%=*} == "$3" ]] && after=${entry#*=}; done
    printf '%s' $((after - before))
}

# percentiles FILE...: "count p50 p90 p99 p99.9 max" in microseconds over the nanosecond samples.
percentiles() {
    sort -n -- "$@" | awk '
        { v[NR] = $1 }
        function at(p,   i) { i = int(p * NR); if (i < p * NR) i++; if (i < 1) i = 1; return v[i] / 1000 }
        END { if (NR == 0) { print 0, 0, 0, 0, 0, 0; exit }
              printf "%d %.1f %.1f %.1f %.1f %.1f\n", NR, at(0.5), at(0.9), at(0.99), at(0.999), v[NR] / 1000 }'
}

# --- the run -----------------------------------------------------------------------------------

parse_args() {
    while (($#)); do
        case $1 in
        --connections | --per-process | --port | --message-size | --dial | --timeout | --binary | --client | --out | --server | --peer-dir | --runs | --echo)
            (($# >= 2)) || usage_error "$1 needs a value"
            case $1 in
            --out | --server | --runs) ;;
            *) PASS+=("$1" "$2") ;;
            esac
            case $1 in
            --connections) CONNECTIONS=$2 ;;
            --per-process) PER_PROCESS=$2 ;;
            --port) PORT=$2 ;;
            --message-size) MESSAGE_SIZE=$2 ;;
            --dial) DIAL=$2 ;;
            --timeout) TIMEOUT=$2 ;;
            --binary) BINARY=$2 ;;
            --client) CLIENT=$2 ;;
            --out) OUT=$2 ;;
            --server) SERVER=$2 ;;
            --peer-dir) PEER_DIR=$2 ;;
            --runs) RUNS=$2 ;;
            --echo) ECHO=$2 ;;
            esac
            shift
            ;;
        --tune) TUNE=1 && PASS+=("$1") ;;
        --no-netns) NETNS=0 && PASS+=("$1") ;;
        --load) LOAD=1 && PASS+=("$1") ;;
        --keep) KEEP=1 && PASS+=("$1") ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) usage_error "unknown argument: $1" ;;
        esac
        shift
    done
    local name value
    for name in CONNECTIONS PER_PROCESS PORT MESSAGE_SIZE DIAL TIMEOUT RUNS; do
        value=${!name}
        [[ $value =~ ^[1-9][0-9]{0,8}$ ]] || usage_error "--${name,,} takes a positive whole number, not '$value'"
    done
    ((PORT <= 65535)) || usage_error "--port must be at most 65535"
    ((CONNECTIONS <= 1000000)) || usage_error "--connections must be at most 1000000"
    ((MESSAGE_SIZE <= 1048576)) || usage_error "--message-size must be at most 1048576"
    ((TIMEOUT <= 86400)) || usage_error "--timeout must be at most 86400"
    ((DIAL <= 65536)) || usage_error "--dial must be at most 65536"
    ((RUNS <= 100)) || usage_error "--runs must be at most 100"
    if [[ ! $ECHO =~ ^[0-9]{1,6}$ ]] || ((ECHO > 100000)); then
        usage_error "--echo takes a whole number up to 100000, not '$ECHO'"
    fi
    local kind
    for kind in ${SERVER//,/ }; do
        [[ $kind =~ ^(ringws|fastwebsockets|tungstenite)$ ]] ||
            usage_error "--server takes ringws, fastwebsockets or tungstenite (or a list), not '$kind'"
    done
    [[ -n ${SERVER//,/} ]] || usage_error "--server needs at least one server"
}

# series: --runs N or a --server list: every run is this script again with one server, in turn
# (ringws first in each round, as listed otherwise), its JSON collected; then one row per run with
# the storm's rates and each peer's ratio to ringws in the same round, and the medians over rounds.
series() {
    local kinds=() kind r n=0 total status=0 json
    read -r -a kinds <<<"${SERVER//,/ }"
    total=$((RUNS * ${#kinds[@]}))
    # Every run ends within its --timeout (plus the grace of its teardown).
    DEADLINE=$((SECONDS + total * (TIMEOUT + 3 * GRACE)))
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    WORK=$(mktemp -d /tmp/c100k-series.XXXXXX)
    for ((r = 1; r <= RUNS; r++)); do
        for kind in "${kinds[@]}"; do
            n=$((n + 1))
            json=$WORK/run$r-$kind.json
            log "run $n/$total: round $r, $kind (load average $(cut -d' ' -f1-3 /proc/loadavg))"
            "$0" "${PASS[@]}" --server "$kind" --out "$json" >"$WORK/run$r-$kind.log" 2>&1 &
            PIDS+=("$!")
            wait_exit "$!" $((TIMEOUT + 3 * GRACE))
            forget "${PIDS[-1]}"
            if [[ $EXIT_STATUS != 0 ]]; then
                status=1
                log "run $n ($kind) FAILED ($EXIT_STATUS); its last lines:"
                tail -n 12 "$WORK/run$r-$kind.log" | sed 's/^/    /' >&2
            fi
            [[ -s $json ]] || printf '{"server":"%s","failed":1,"established":0}\n' "$kind" >"$json"
            sed "s/^{/{\"round\":$r,/" "$json" >>"$WORK/series.json"
        done
    done
    [[ -z $OUT ]] || cp -- "$WORK/series.json" "$OUT"
    printf '\nStorms of %s connections (%s client and server processes, 1 worker each), %s rounds%s; Linux %s, %s CPUs\n' \
        "$CONNECTIONS" "$(jq -s 'map(.servers // 0) | max' "$WORK/series.json")" "$RUNS" \
        "$( ((ECHO)) && printf ', %s connections echoing %s B x %s in flight meanwhile' "$ECHO" "$MESSAGE_SIZE" "$ECHO_IN_FLIGHT")" \
        "$(</proc/sys/kernel/osrelease)" "$(nproc)"
    jq -rs --argjson n "$CONNECTIONS" '
        def r(x): if x == null then "-" else (x * 100 | round / 100 | tostring) end;
        def i(x): if x == null then "-" else (x | round | tostring) end;
        def med: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
                 else (.[length / 2 - 1] + .[length / 2]) / 2 end;
        (map(select(.server == "ringws")) | map({key: (.round | tostring), value: .}) | from_entries) as $base
        | map(. + {ratio: (if (.handshakes_per_second // 0) > 0 and ($base[.round | tostring].handshakes_per_second // 0) > 0
                           then .handshakes_per_second / $base[.round | tostring].handshakes_per_second else null end),
                   cpu_ratio: (if (.connections_per_server_cpu_second // 0) > 0 and ($base[.round | tostring].connections_per_server_cpu_second // 0) > 0
                           then .connections_per_server_cpu_second / $base[.round | tostring].connections_per_server_cpu_second else null end)}) as $rows
        | (["round", "server", "upgraded", "storm s", "conn/s", "per worker", "server CPU s", "conn/CPU-s",
            "conn/s ÷ ringws", "conn/CPU-s ÷ ringws", "echo msg/s", "load avg", "result"] | @tsv),
          ($rows[] | [.round, .server, "\(.established)/\($n)", .establish_seconds, i(.handshakes_per_second),
            i(.handshakes_per_second_per_worker), .server_cpu_seconds, i(.connections_per_server_cpu_second),
            r(.ratio), r(.cpu_ratio), i(.echo_messages_per_second), .loadavg,
            (if .failed == 0 and .errors == 0 and .established == $n then "ok" else "FAILED" end)] | map(tostring) | @tsv),
          ($rows | group_by(.server) | .[] | . as $g
            | ["median", $g[0].server, "\($g | map(select(.established == $n)) | length)/\($g | length) all upgraded", "-",
               i($g | map(.handshakes_per_second // empty) | med), i($g | map(.handshakes_per_second_per_worker // empty) | med), "-",
               i($g | map(.connections_per_server_cpu_second // empty) | med), r($g | map(.ratio // empty) | med),
               r($g | map(.cpu_ratio // empty) | med), i($g | map(.echo_messages_per_second // empty) | med), "-", "-"]
            | map(tostring) | @tsv)
    ' "$WORK/series.json" | column -t -s $'\t'
    return "$status"
}

main() {
    parse_args "$@"
    if ((RUNS > 1)) || [[ $SERVER == *,* ]]; then
        series
        return
    fi
    if ((NETNS && EUID == 0)) && [[ -z ${C100K_NETNS:-} ]]; then
        # Again, inside a new network namespace (its own loopback, sockets, ports and per-namespace
        # sysctls); nothing has been started yet.
        exec env C100K_NETNS=1 unshare --net -- "$0" "$@"
    fi
    if [[ -n ${C100K_NETNS:-} ]]; then
        ip link set lo up || die "cannot bring up the loopback interface of the new network namespace"
    fi
    DEADLINE=$((SECONDS + TIMEOUT))
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    local nofile cpus servers clients port_low port_high usable ips_per_client kernel
    nofile=$(ulimit -Sn)
    [[ $nofile == unlimited ]] && nofile=1000000000
    ((PER_PROCESS + FD_SLACK <= nofile)) ||
        die "--per-process $PER_PROCESS plus $FD_SLACK descriptors exceeds this shell's nofile limit $nofile"
    cpus=$(nproc)
    servers=$(((CONNECTIONS + PER_PROCESS - 1) / PER_PROCESS))
    clients=$servers
    read -r port_low port_high </proc/sys/net/ipv4/ip_local_port_range
    # One source address holds at most the port range's size towards one destination, but connect()
    # searches for a free port longer the fuller the range is: 17,000 connections from one address
    # (60% of 32768-60999) took 7.6 s here, from four addresses 1.5 s. So fill a quarter at most.
    usable=$(((port_high - port_low + 1) / 4))
    ips_per_client=$(((PER_PROCESS + usable - 1) / usable))
    ((2 + clients * ips_per_client <= 254)) || die "needs more than 252 source addresses: widen ip_local_port_range"
    kernel=$(</proc/sys/kernel/osrelease)

    if [[ ! -x $BINARY ]]; then
        log "building $BINARY"
        cargo build --release --manifest-path "$ROOT/Cargo.toml" --bin ringws >&2
    fi
    if [[ $SERVER != ringws && ! -x $PEER_DIR/${SERVER}_echo ]]; then
        die "$PEER_DIR/${SERVER}_echo is missing: cargo build --release --manifest-path benches/compare/Cargo.toml"
    fi
    if ((!LOAD)) && [[ ! -x $CLIENT ]]; then
        log "building $CLIENT"
        cargo build --release --manifest-path "$ROOT/benches/c100k/Cargo.toml" >&2
    fi
    WORK=$(mktemp -d /tmp/c100k.XXXXXX)

    local loadavg
    loadavg=$(cut -d' ' -f1 /proc/loadavg)
    log "load average $(cut -d' ' -f1-3 /proc/loadavg); server: $SERVER"
    log "$CONNECTIONS connections: $servers servers and $clients clients of at most $PER_PROCESS each, nofile $nofile, $cpus CPUs, Linux $kernel${C100K_NETNS:+, own network namespace}"
    if ((TUNE)); then
        ((EUID == 0)) || die "--tune needs root"
        TUNED_BACKUP=$WORK/sysctl-backup.conf
        "$ROOT/tuning/sysctl.sh" apply --connections "$CONNECTIONS" --backup "$TUNED_BACKUP" >&2 ||
            die "tuning/sysctl.sh apply failed"
    fi
    # The host as `ringws check` sees it for one server process: its WARN and FAIL rows, for the record.
    "$BINARY" check --connections "$PER_PROCESS" --workers 1 >"$WORK/check.log" 2>&1 || true
    grep -E '^(WARN|FAIL) ' "$WORK/check.log" | sed 's/^/    check: /' >&2 || true

    # Servers: one worker each, pinned to the CPUs in turn; more connections allowed than planned,
    # since SO_REUSEPORT spreads them only about evenly.
    local i server_pids=() idle_rss warm_rss
    for ((i = 0; i < servers; i++)); do
        start_server "server$i" $((i % cpus)) $((nofile - FD_SLACK))
        server_pids+=("$LAST_PID")
        wait_for_line "$WORK/server$i.log" "^listening on " "$LAST_PID" 20 ||
            die "server $i did not start: $(tail -n 3 "$WORK/server$i.log")"
    done
    idle_rss=$(rss_kib "${server_pids[@]}")

    # Warm-up: open and close some connections on every server, so allocator arenas and receive
    # buffers are in place before the per-connection numbers are taken.
    start_client warmup 0 $((servers * WARMUP_PER_SERVER)) 127.0.0.1 "$WORK/warmup-latencies.txt"
    wait_for_line "$WORK/warmup.log" '"phase":"established"' "$LAST_PID" 60 ||
        die "warm-up failed: $(tail -n 3 "$WORK/warmup.log")"
    kill -INT "$LAST_PID"
    wait_exit "$LAST_PID" 60
    [[ $EXIT_STATUS == 0 ]] || die "warm-up client exited with $EXIT_STATUS: $(tail -n 3 "$WORK/warmup.log")"
    forget "$LAST_PID"
    warm_rss=$(rss_kib "${server_pids[@]}")
    # The kernel's baseline: after the warm-up's sockets are gone (no connection on the port, no
    # orphan still closing; its server-side TIME_WAIT entries remain, at tw_sock_TCP's size each).
    local settle
    settle=$(deadline_in 15)
    while (($(server_connections) > 0 || $(sockstat | cut -d' ' -f2) > 0)) && ((SECONDS < settle)); do
        sleep 0.2
    done
    local base_sock base_slab base_slab_kib base_unrecl_kib
    base_sock=$(sockstat)
    base_slab=$(slab_bytes)
    base_slab_kib=$(meminfo_kib Slab)
    base_unrecl_kib=$(meminfo_kib SUnreclaim)
    local base_counters
    base_counters=$(tcp_counters)
    log "servers up: ${server_pids[*]}; RSS $idle_rss KiB idle, $warm_rss KiB after the warm-up"

    # With --echo: the echo load first (on the last CPU, as benches/compare runs its load generator),
    # its connections up and through its one-second warm-up before the storm starts.
    local echo_pid=
    if ((ECHO)); then
        start echo $((cpus - 1)) "$BINARY" load --url "ws://127.0.0.1:$PORT/" --connections "$ECHO" \
            --size "$MESSAGE_SIZE" --in-flight "$ECHO_IN_FLIGHT" --warmup 1 --duration "$TIMEOUT" \
            --workers 1 --json
        echo_pid=$LAST_PID
        wait_for_line "$WORK/echo.log" '"phase":"established"' "$echo_pid" 60 ||
            die "the echo load did not start: $(tail -n 3 "$WORK/echo.log")"
        (($(json_field "$WORK/echo.log" established connections_failed 1) == 0)) ||
            die "the echo load could not open its connections: $(tail -n 3 "$WORK/echo.log")"
        sleep 1
        log "echo load up: $ECHO connections, $ECHO_IN_FLIGHT messages of $MESSAGE_SIZE B in flight each"
    fi

    # Clients, each with its own block of source addresses: the storm.
    local per count ip=2 client_pids=() cpu_before cpu_after
    cpu_before=$(cpu_ticks "${server_pids[@]}")
    per=$(((CONNECTIONS + clients - 1) / clients))
    for ((i = 0; i < clients; i++)); do
        count=$((i == clients - 1 ? CONNECTIONS - per * (clients - 1) : per))
        # Pinned one CPU over from the server of the same index.
        start_client "client$i" $(((i + 1) % cpus)) "$count" \
            "127.0.0.$ip-127.0.0.$((ip + ips_per_client - 1))" "$WORK/latencies$i.txt"
        ip=$((ip + ips_per_client))
        client_pids+=("$LAST_PID")
    done
    for i in "${!client_pids[@]}"; do
        wait_for_line "$WORK/client$i.log" '"phase":"established"' "${client_pids[i]}" "$TIMEOUT" ||
            die "client $i did not establish its connections: $(tail -n 3 "$WORK/client$i.log")"
    done
    cpu_after=$(cpu_ticks "${server_pids[@]}")
    local storm_counters
    storm_counters=$(tcp_counters)
    # The echo load must have run through the whole storm; it is stopped now (SIGINT: it reports what
    # it measured), and its connections are gone before the servers' connections are counted.
    local echo_rate=- echo_errors=0 echo_state=
    if ((ECHO)); then
        alive "$echo_pid" || die "the echo load ended before the storm did: $(tail -n 3 "$WORK/echo.log")"
        kill -INT "$echo_pid"
        wait_exit "$echo_pid" 30
        echo_state=$EXIT_STATUS
        forget "$echo_pid"
        echo_rate=$(json_field "$WORK/echo.log" "" msgs_per_s -)
        echo_errors=$(($(json_field "$WORK/echo.log" "" mismatch 0) + $(json_field "$WORK/echo.log" "" connections_failed 0) + $(json_field "$WORK/echo.log" "" closed 0)))
        log "echo load stopped (exit $echo_state): $echo_rate messages/s, $echo_errors errors"
        [[ $echo_rate != - ]] || die "the echo load reported nothing: $(tail -n 3 "$WORK/echo.log")"
        settle=$(deadline_in 15)
        while (($(server_connections) > CONNECTIONS)) && ((SECONDS < settle)); do
            sleep 0.2
        done
    fi
    # Time to establish: the slowest client's, from its start to its last connection open or failed.
    # (ringws load reports its connection rate instead: established / rate.)
    local opened=0 dial_errors=0 slowest=0 v n log
    for i in "${!client_pids[@]}"; do
        log=$WORK/client$i.log
        if ((LOAD)); then
            n=$(json_field "$log" established connections_established 0)
            dial_errors=$((dial_errors + $(json_field "$log" established connections_failed 0)))
            v=$(per "$n" "$(json_field "$log" established connect_rate_per_s 0)")
        else
            n=$(json_field "$log" established open 0)
            dial_errors=$((dial_errors + $(json_field "$log" established errors 0)))
            v=$(json_field "$log" established total_seconds 0)
        fi
        opened=$((opened + n))
        slowest=$(awk -v a="$slowest" -v b="$v" 'BEGIN { print (b > a ? b : a) }')
    done
    local up up_counters clk cpu_seconds kinds
    up=$(server_connections)
    up_counters=$storm_counters
    log "established: $opened client and $up server connections ($dial_errors errors), the last client done after $slowest s"
    if ((dial_errors)); then
        for i in "${!client_pids[@]}"; do
            kinds=$(sed -n 's/.*"phase":"established".*"error_kinds":\({[^}]*}\).*/\1/p' "$WORK/client$i.log" | tail -n 1)
            [[ -z $kinds || $kinds == "{}" ]] || log "client $i errors: $kinds"
        done
    fi
    clk=$(getconf CLK_TCK)
    cpu_seconds=$(awk -v t=$((cpu_after - cpu_before)) -v c="$clk" 'BEGIN { printf "%.2f", t / c }')

    # Snapshot with every connection up and idle.
    local up_sock up_slab up_slab_kib up_unrecl_kib up_rss
    up_sock=$(sockstat)
    up_slab=$(slab_bytes)
    up_slab_kib=$(meminfo_kib Slab)
    up_unrecl_kib=$(meminfo_kib SUnreclaim)
    up_rss=$(rss_kib "${server_pids[@]}")

    # One message over every connection and back, all clients at once.
    # (ringws load sends its own as soon as its connections are up.)
    local ping_errors=0 ping_seconds=- lat
    ((LOAD)) || { kill -USR1 "${client_pids[@]}" && ping_seconds=0; }
    for i in "${!client_pids[@]}"; do
        log=$WORK/client$i.log
        wait_for_line "$log" '"phase":"ping"' "${client_pids[i]}" 120 ||
            die "client $i reported no round trip: $(tail -n 3 "$log")"
        if ((LOAD)); then
            ping_errors=$((ping_errors + $(json_field "$log" ping mismatch 0) + $(json_field "$log" ping missing 0)))
        else
            # A client's error count is cumulative over its phases.
            ping_errors=$((ping_errors + $(json_field "$log" ping errors 0) - $(json_field "$log" established errors 0)))
            v=$(json_field "$log" ping seconds 0)
            ping_seconds=$(awk -v a="$ping_seconds" -v b="$v" 'BEGIN { print (b > a ? b : a) }')
        fi
    done
    if ((!LOAD)); then
        lat=$(percentiles "$WORK"/latencies*.txt)
        log "round trip: $lat (count p50 p90 p99 p99.9 max, us)"
    fi

    # Teardown: every client closes its connections (Close handshake, the server closes TCP first).
    local failed=0 close_errors=0 down_t0 t_down left
    down_t0=$EPOCHREALTIME
    kill -INT "${client_pids[@]}"
    for i in "${!client_pids[@]}"; do
        wait_exit "${client_pids[i]}" 120
        if [[ $EXIT_STATUS != 0 ]]; then
            log "client $i exited with $EXIT_STATUS: $(tail -n 1 "$WORK/client$i.log")"
            failed=1
        fi
        # No closed line at all counts as one error.
        log=$WORK/client$i.log
        if ((LOAD)); then
            # Its final report; none at all counts as one error.
            close_errors=$((close_errors + $(json_field "$log" "" closed 1) + $(json_field "$log" "" timeout 0) + $(json_field "$log" "" dropped 0)))
        else
            # No closed line at all counts as one error.
            close_errors=$((close_errors + $(json_field "$log" closed errors $((1 + $(json_field "$log" ping errors 0)))) - $(json_field "$log" ping errors 0)))
        fi
    done
    if ((LOAD)); then
        # The worst of each percentile over the clients (each reports its own), and all echoes.
        lat=$(for i in "${!client_pids[@]}"; do
            log=$WORK/client$i.log
            printf '%s' "$(json_field "$log" "" echoes 0)"
            for v in p50 p90 p99 p999 max; do printf ' %s' "$(json_field "$log" "" "$v" 0)"; done
            printf '\n'
        done | awk '{ n += $1; for (i = 2; i <= 6; i++) if ($i > m[i]) m[i] = $i }
                    END { printf "%d %.1f %.1f %.1f %.1f %.1f\n", n, m[2], m[3], m[4], m[5], m[6] }')
        log "round trip: $lat (count, then the worst client's p50 p90 p99 p99.9 max, us)"
    fi
    forget "${client_pids[@]}"
    left=$(server_connections)
    while ((left > 0 && SECONDS < DEADLINE)); do
        sleep 0.2
        left=$(server_connections)
    done
    t_down=$(elapsed "$down_t0")
    kill -INT "${server_pids[@]}"
    local server_log_lines=0
    for i in "${!server_pids[@]}"; do
        wait_exit "${server_pids[i]}" 30
        if [[ $EXIT_STATUS != 0 ]]; then
            log "server $i exited with $EXIT_STATUS"
            failed=1
        fi
        # Everything a server says besides its ready line is a warning or an error.
        server_log_lines=$((server_log_lines + $(grep -cv '^listening on ' "$WORK/server$i.log" || true)))
    done
    forget "${server_pids[@]}"
    ((server_log_lines == 0)) || {
        log "the servers logged $server_log_lines warning/error lines (kept: --keep)"
        failed=1
    }

    # Report.
    local page rss_cold rss_warm sock_inuse sock_mem slab_delta unrecl_delta name d caches='' errors
    local -a before after p c0 c1
    page=$(getconf PAGESIZE)
    rss_cold=$(((up_rss - idle_rss) * 1024))
    rss_warm=$(((up_rss - warm_rss) * 1024))
    read -r -a before <<<"$base_sock"
    read -r -a after <<<"$up_sock"
    sock_inuse=$((after[0] - before[0]))
    sock_mem=$(((after[4] - before[4]) * page))
    slab_delta=$(((up_slab_kib - base_slab_kib) * 1024))
    unrecl_delta=$(((up_unrecl_kib - base_unrecl_kib) * 1024))
    for name in $SLAB_CACHES; do
        d=$(cache_delta "$base_slab" "$up_slab" "$name")
        ((d <= 0)) || caches+="$name $(per "$d" "$up"), "
    done
    errors=$((dial_errors + ping_errors + close_errors + echo_errors))
    read -r -a c0 <<<"$base_counters"
    read -r -a c1 <<<"$up_counters"
    read -r -a p <<<"$lat"

    printf '\nC100K: %s connections, Linux %s, %s CPUs, load average %s at the start\n' "$CONNECTIONS" "$kernel" "$cpus" "$loadavg"
    printf '  processes      %s %s servers (1 worker each, port %s shared), %s clients, source IPs 127.0.0.2-127.0.0.%s\n' \
        "$servers" "$SERVER" "$PORT" "$clients" $((ip - 1))
    printf '  established    %s (server side %s) in %s s: %s handshakes/s; %s errors\n' \
        "$opened" "$up" "$slowest" "$(per "$opened" "$slowest")" "$dial_errors"
    printf '                 meanwhile: %s listen-queue overflows, %s SYN retransmits, %s packets dropped by full CPU backlogs\n' \
        $((c1[0] - c0[0])) $((c1[1] - c0[1])) $((c1[2] - c0[2]))
    printf '  storm          %s handshakes/s per worker; server CPU %s s over the storm: %s connections per server CPU-second\n' \
        "$(per "$opened" "$(awk -v s="$slowest" -v n="$servers" 'BEGIN { print s * n }')")" "$cpu_seconds" "$(per "$opened" "$cpu_seconds")"
    ((ECHO == 0)) || printf '                 meanwhile %s connections echoed %s B x %s in flight: %s messages/s, %s errors (CPU above includes the echoes)\n' \
        "$ECHO" "$MESSAGE_SIZE" "$ECHO_IN_FLIGHT" "$echo_rate" "$echo_errors"
    printf '  server RSS     %s KiB idle, %s KiB warm, %s KiB with all up: %s B per connection over warm\n' \
        "$idle_rss" "$warm_rss" "$up_rss" "$(per "$rss_warm" "$up")"
    printf '                 (%s B per connection over idle, including each server'\''s fixed start-up costs)\n' \
        "$(per "$rss_cold" "$up")"
    printf '  kernel         TCP sockets %+d (both ends); socket buffers (sockstat mem) %+d KiB\n' \
        "$sock_inuse" $((sock_mem / 1024))
    printf '                 slab +%s KiB (unreclaimable +%s KiB): %s B per connection, %s B per socket\n' \
        $((slab_delta / 1024)) $((unrecl_delta / 1024)) "$(per "$slab_delta" "$up")" "$(per "$slab_delta" "$sock_inuse")"
    [[ -z $caches ]] || printf '                 per connection, bytes: %s\n' "${caches%, }"
    printf '  round trip     %s messages of %s B, %s: p50 %s us, p90 %s, p99 %s, p99.9 %s, max %s; all back in %s s; %s errors\n' \
        "${p[0]}" "$MESSAGE_SIZE" \
        "$( ((LOAD)) && printf 'ringws load, worst client' || printf 'every client sending as fast as it can')" \
        "${p[1]}" "${p[2]}" "${p[3]}" "${p[4]}" "${p[5]}" "$ping_seconds" "$ping_errors"
    printf '  teardown       %s s until no server connection was left (%s left); %s close errors; %s\n' \
        "$t_down" "$left" "$close_errors" \
        "$( ((failed)) && printf 'FAILED (see above)' || printf 'every process exited 0, no server log lines')"
    if [[ -n $OUT ]]; then
        {
            printf '{"server":"%s","loadavg":%s,"connections":%s,"servers":%s,"clients":%s,"established":%s,"server_side":%s,"establish_seconds":%s,"handshakes_per_second":%s,' \
                "$SERVER" "$loadavg" "$CONNECTIONS" "$servers" "$clients" "$opened" "$up" "$slowest" "$(jnum "$(per "$opened" "$slowest")")"
            printf '"handshakes_per_second_per_worker":%s,"server_cpu_seconds":%s,"connections_per_server_cpu_second":%s,' \
                "$(jnum "$(per "$opened" "$(awk -v s="$slowest" -v n="$servers" 'BEGIN { print s * n }')")")" "$cpu_seconds" "$(jnum "$(per "$opened" "$cpu_seconds")")"
            printf '"echo":%s,"echo_messages_per_second":%s,"echo_errors":%s,' "$ECHO" "$(jnum "$echo_rate")" "$echo_errors"
            printf '"listen_overflows":%s,"syn_retransmits":%s,"backlog_drops":%s,' \
                $((c1[0] - c0[0])) $((c1[1] - c0[1])) $((c1[2] - c0[2]))
            printf '"server_rss_kib":{"idle":%s,"warm":%s,"up":%s},"server_rss_bytes_per_connection":%s,' \
                "$idle_rss" "$warm_rss" "$up_rss" "$(per "$rss_warm" "$up")"
            printf '"tcp_sockets":%s,"socket_buffer_bytes":%s,"slab_bytes":%s,"slab_bytes_per_connection":%s,' \
                "$sock_inuse" "$sock_mem" "$slab_delta" "$(per "$slab_delta" "$up")"
            printf '"round_trip_us":{"count":%s,"p50":%s,"p90":%s,"p99":%s,"p999":%s,"max":%s},"round_trip_seconds":%s,' \
                "${p[@]}" "$ping_seconds"
            printf '"teardown_seconds":%s,"left":%s,"errors":%s,"failed":%s}\n' \
                "$t_down" "$left" "$errors" "$failed"
        } >"$OUT"
    fi
    ((failed == 0 && errors == 0 && left == 0 && opened == CONNECTIONS && up == CONNECTIONS))
}

main "$@"
