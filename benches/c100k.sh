#!/usr/bin/env bash
# c100k.sh: brings N concurrent WebSocket connections up on this host and down again, and reports
# what they cost.
#
# One process may hold fewer descriptors than N (20,000 on the project's box, not raisable), so the
# server runs as several `ringws serve --share-port` processes on one port (SO_REUSEPORT: the kernel
# spreads the connections over their listeners), each with one worker pinned to a CPU in turn, and the
# clients as several `ringws load --hold` processes, each from source addresses of its own
# (127.0.0.x) so that no (source address, destination) pair runs out of ephemeral ports.
#
# Steps: preflight (limits, `ringws check`, optional sysctl tuning), baseline snapshot, servers up,
# clients up (timed: time to establish all, handshakes per second), snapshot (server RSS per
# connection, kernel socket memory from /proc/net/sockstat, /proc/meminfo and /proc/slabinfo), one
# message to every connection and back (latency percentiles), clean teardown (clients close, every
# server connection gone, servers exit 0, zero errors), report.
#
# Everything is bounded: every wait has a deadline inside --timeout, and an EXIT/INT/TERM trap stops
# every process the script started (SIGINT, then SIGKILL after a grace period) and reverts the sysctls
# it applied. Exit status: 0 all connections up and down with zero errors, 1 failure, 2 usage.

set -euo pipefail

PROG=${0##*/}
readonly PROG
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT

CONNECTIONS=100000
PER_PROCESS=17000
PORT=19001
MESSAGE_SIZE=32
TIMEOUT=600
BINARY=$ROOT/target/release/ringws
OUT=
TUNE=0
KEEP=0
# Seconds a process gets to exit after SIGINT before it is killed.
readonly GRACE=10
# Descriptors a process needs besides its connections (listener, ring, event fds, stdio, logs).
readonly FD_SLACK=256

usage() {
    cat <<EOF
Usage: $PROG [options]

Brings N WebSocket connections up on 127.0.0.0/8 (servers and clients on this host), sends one
message over each and back, closes them all, and reports the cost.

  --connections N   connections in total (default $CONNECTIONS)
  --per-process M   connections per server and per client process at most (default $PER_PROCESS;
                    must leave room under the nofile limit, $(ulimit -n) here)
  --port P          the shared server port on 127.0.0.1 (default $PORT)
  --message-size B  bytes of the one round-trip message (default $MESSAGE_SIZE)
  --timeout S       bound on the whole run in seconds (default $TIMEOUT)
  --binary PATH     the ringws binary (default target/release/ringws, built if missing)
  --tune            (root) apply tuning/sysctl.sh for N connections first, revert at exit
  --out FILE        also write the numbers as JSON to FILE
  --keep            keep the work directory (process logs) after the run
  -h, --help        this text

Exit status: 0 every connection up and down with zero errors, 1 failure, 2 usage.
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

# stop_pids PID...: SIGINT, then SIGKILL for whatever is still alive after GRACE seconds.
stop_pids() {
    local pid alive i
    (($#)) || return 0
    kill -INT "$@" 2>/dev/null || true
    for ((i = 0; i < GRACE * 10; i++)); do
        alive=0
        for pid in "$@"; do
            if kill -0 "$pid" 2>/dev/null; then
                alive=1
                break
            fi
        done
        ((alive)) || return 0
        sleep 0.1
    done
    kill -KILL "$@" 2>/dev/null || true
}

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

# start NAME CPU COMMAND...: starts COMMAND pinned to CPU with stdout/stderr in $WORK/NAME.log and
# records its pid in PIDS and LAST_PID (taskset execs, so the pid is the command's own).
LAST_PID=
start() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" </dev/null >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# wait_for_line FILE PATTERN PID SECONDS: waits until FILE has a line matching the extended regex
# PATTERN; fails if PID exits first or SECONDS (bounded by the run's deadline) pass.
wait_for_line() {
    local file=$1 pattern=$2 pid=$3 limit
    limit=$(deadline_in "$4")
    while ! grep -Eq -- "$pattern" "$file" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            grep -Eq -- "$pattern" "$file" 2>/dev/null && return 0
            return 1
        fi
        ((SECONDS < limit)) || return 1
        sleep 0.1
    done
}

# deadline_in SECONDS: the SECONDS value at which a wait of SECONDS ends, never past the run's deadline.
deadline_in() {
    local at=$((SECONDS + $1))
    printf '%s' $((at < DEADLINE ? at : DEADLINE))
}

# wait_exit PID SECONDS: waits for PID (a child of this shell) to exit and sets EXIT_STATUS to its
# exit status, or to "timeout". Not for $(...): a subshell cannot wait for its parent's children.
EXIT_STATUS=
wait_exit() {
    local pid=$1 limit
    limit=$(deadline_in "$2")
    while kill -0 "$pid" 2>/dev/null && [[ $(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) != Z ]]; do
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

# The slab caches a TCP socket (and its descriptor) lives in.
readonly SLAB_CACHES="TCP sock_inode_cache dentry filp tcp_bind_bucket tcp_bind2_bucket request_sock_TCP tw_sock_TCP skbuff_head_cache"

# slab_bytes: "cache=bytes ..." for SLAB_CACHES (active objects x object size); empty without root.
slab_bytes() {
    [[ -r /proc/slabinfo ]] || return 0
    awk -v names="$SLAB_CACHES" '
        BEGIN { n = split(names, list, " "); for (i = 1; i <= n; i++) want[list[i]] = 1 }
        want[$1] { printf "%s=%d ", $1, $2 * $4 }
    ' /proc/slabinfo
}

# rss_kib PID: "VmRSS RssAnon" of PID in KiB.
rss_kib() {
    awk '$1 == "VmRSS:" { r = $2 } $1 == "RssAnon:" { a = $2 } END { print r + 0, a + 0 }' "/proc/$1/status"
}

# server_connections: established TCP connections whose local port is PORT.
server_connections() {
    ss -Htn state established "( sport = :$PORT )" | wc -l
}

# --- report ------------------------------------------------------------------------------------

# per SUM COUNT: SUM / COUNT with one decimal ("-" for no count).
per() {
    awk -v s="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", s / n; else printf "-" }'
}

# field N WORDS...: the Nth (1-based) of WORDS.
field() {
    local n=$1
    shift
    printf '%s' "${!n}"
}

# cache_delta BEFORE AFTER NAME: bytes NAME grew by between two slab_bytes snapshots.
cache_delta() {
    local before=0 after=0 entry
    for entry in $1; do [[ ${entry%%=*} == "$3" ]] && before=${entry#*=}; done
    for entry in $2; do [[ ${entry%%=*} == "$3" ]] && after=${entry#*=}; done
    printf '%s' $((after - before))
}
# report SERVERS CLIENTS UP T_EST T_DOWN LEFT FAILED BASE_RSS UP_RSS UP_ANON BASE_SOCK UP_SOCK
#        BASE_SLAB_KIB UP_SLAB_KIB BASE_UNRECL_KIB UP_UNRECL_KIB BASE_SLABS UP_SLABS
report() {
    local servers=$1 clients=$2 up=$3 t_est=$4 t_down=$5 left=$6 failed=$7 base_rss=$8 up_rss=$9
    local up_anon=${10} base_sock=${11} up_sock=${12} base_slab_kib=${13} up_slab_kib=${14}
    local base_unrecl_kib=${15} up_unrecl_kib=${16} base_slabs=${17} up_slabs=${18}
    local page rss_delta sock_inuse sock_mem slab_delta unrecl_delta name d caches=''
    page=$(getconf PAGESIZE)
    rss_delta=$(((up_rss - base_rss) * 1024))
    # shellcheck disable=SC2086 # word splitting of the snapshot is the point
    sock_inuse=$(($(field 1 $up_sock) - $(field 1 $base_sock)))
    # shellcheck disable=SC2086
    sock_mem=$((($(field 5 $up_sock) - $(field 5 $base_sock)) * page))
    slab_delta=$(((up_slab_kib - base_slab_kib) * 1024))
    unrecl_delta=$(((up_unrecl_kib - base_unrecl_kib) * 1024))
    for name in $SLAB_CACHES; do
        d=$(cache_delta "$base_slabs" "$up_slabs" "$name")
        ((d == 0)) || caches+="$name $(per "$d" "$up") B, "
    done

    printf '\nC100K: %s connections on Linux %s, %s CPUs\n' "$CONNECTIONS" "$(</proc/sys/kernel/osrelease)" "$(nproc)"
    printf '  processes        %s servers (1 worker each, --share-port %s), %s clients\n' "$servers" "$PORT" "$clients"
    printf '  established      %s of %s in %s s: %s handshakes/s\n' "$up" "$CONNECTIONS" "$t_est" "$(per "$up" "$t_est")"
    printf '  server RSS       +%s KiB over %s KiB idle: %s B per connection (anonymous %s KiB in all)\n' \
        "$((rss_delta / 1024))" "$base_rss" "$(per "$rss_delta" "$up")" "$up_anon"
    printf '  kernel sockets   TCP inuse +%s (both ends); socket buffers (sockstat mem) +%s KiB\n' \
        "$sock_inuse" "$((sock_mem / 1024))"
    printf '  kernel slab      +%s KiB (unreclaimable +%s KiB): %s B per connection, %s B per socket\n' \
        "$((slab_delta / 1024))" "$((unrecl_delta / 1024))" "$(per "$slab_delta" "$up")" \
        "$(per "$slab_delta" "$sock_inuse")"
    if [[ -n $caches ]]; then
        printf '    per connection %s\n' "${caches%, }"
    fi
    printf '  teardown         %s s until no server connection was left (%s left); %s\n' "$t_down" "$left" \
        "$( ((failed)) && printf 'ERRORS (see above)' || printf 'every process exited 0')"
    if [[ -n $OUT ]]; then
        printf '{"connections":%s,"established":%s,"servers":%s,"clients":%s,"establish_seconds":%s,' \
            "$CONNECTIONS" "$up" "$servers" "$clients" "$t_est" >"$OUT"
        printf '"server_rss_bytes_per_connection":%s,"slab_bytes_per_connection":%s,' \
            "$(per "$rss_delta" "$up")" "$(per "$slab_delta" "$up")" >>"$OUT"
        printf '"socket_buffer_bytes":%s,"teardown_seconds":%s,"left":%s,"errors":%s}\n' \
            "$sock_mem" "$t_down" "$left" "$failed" >>"$OUT"
    fi
}

# --- main --------------------------------------------------------------------------------------

parse_args() {
    while (($#)); do
        case $1 in
        --connections | --per-process | --port | --message-size | --timeout | --binary | --out)
            (($# >= 2)) || usage_error "$1 needs a value"
            case $1 in
            --connections) CONNECTIONS=$2 ;;
            --per-process) PER_PROCESS=$2 ;;
            --port) PORT=$2 ;;
            --message-size) MESSAGE_SIZE=$2 ;;
            --timeout) TIMEOUT=$2 ;;
            --binary) BINARY=$2 ;;
            --out) OUT=$2 ;;
            esac
            shift
            ;;
        --tune) TUNE=1 ;;
        --keep) KEEP=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) usage_error "unknown argument: $1" ;;
        esac
        shift
    done
    local name value
    for name in CONNECTIONS PER_PROCESS PORT MESSAGE_SIZE TIMEOUT; do
        value=${!name}
        [[ $value =~ ^[1-9][0-9]{0,8}$ ]] || usage_error "--${name,,} takes a positive whole number, not '$value'"
    done
    ((PORT <= 65535)) || usage_error "--port must be at most 65535"
    ((CONNECTIONS <= 1000000)) || usage_error "--connections must be at most 1000000"
    ((MESSAGE_SIZE <= 1048576)) || usage_error "--message-size must be at most 1048576"
}

main() {
    parse_args "$@"
    DEADLINE=$((SECONDS + TIMEOUT))
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    local nofile cpus servers clients port_low port_high ports ips_per_client kernel
    nofile=$(ulimit -Sn)
    [[ $nofile == unlimited ]] && nofile=1000000000
    ((PER_PROCESS + FD_SLACK <= nofile)) ||
        die "--per-process $PER_PROCESS plus $FD_SLACK descriptors exceeds this shell's nofile limit $nofile"
    cpus=$(nproc)
    servers=$(((CONNECTIONS + PER_PROCESS - 1) / PER_PROCESS))
    clients=$servers
    read -r port_low port_high </proc/sys/net/ipv4/ip_local_port_range
    ports=$((port_high - port_low + 1))
    # One source address per (client, destination) holds at most `ports` connections; keep 10% spare.
    ips_per_client=$(((PER_PROCESS + ports * 9 / 10 - 1) / (ports * 9 / 10)))
    ((clients * ips_per_client + 1 <= 250)) || die "needs more than 250 source addresses: widen ip_local_port_range"
    kernel=$(</proc/sys/kernel/osrelease)

    if [[ ! -x $BINARY ]]; then
        log "building $BINARY"
        cargo build --release --manifest-path "$ROOT/Cargo.toml" --bin ringws >&2
    fi
    WORK=$(mktemp -d /tmp/c100k.XXXXXX)

    log "$CONNECTIONS connections: $servers server and $clients client processes of at most $PER_PROCESS, nofile $nofile, $cpus CPUs, Linux $kernel"
    if ((TUNE)); then
        ((EUID == 0)) || die "--tune needs root"
        TUNED_BACKUP=$WORK/sysctl-backup.conf
        "$ROOT/tuning/sysctl.sh" apply --connections "$CONNECTIONS" --backup "$TUNED_BACKUP" >&2 ||
            die "tuning/sysctl.sh apply failed"
    fi
    # The host as ringws sees it for one server process (informational: WARN and FAIL rows).
    "$BINARY" check --connections "$PER_PROCESS" --workers 1 >"$WORK/check.log" 2>&1 || true
    grep -E '^(WARN|FAIL) ' "$WORK/check.log" | sed 's/^/    check: /' >&2 || true

    # Baseline.
    local base_sock base_slab base_slab_kib base_unrecl_kib
    base_sock=$(sockstat)
    base_slab=$(slab_bytes)
    base_slab_kib=$(meminfo_kib Slab)
    base_unrecl_kib=$(meminfo_kib SUnreclaim)

    # Servers: one worker each, pinned to the CPUs in turn.
    local i server_pids=() base_rss=0 rss
    for ((i = 0; i < servers; i++)); do
        start "server$i" $((i % cpus)) "$BINARY" serve --addr "127.0.0.1:$PORT" --share-port \
            --workers 1 --idle-timeout 0 --max-connections $((nofile - FD_SLACK))
        server_pids+=("$LAST_PID")
        wait_for_line "$WORK/server$i.log" "^listening on " "$LAST_PID" 20 ||
            die "server $i did not start: $(tail -n 3 "$WORK/server$i.log")"
    done
    for i in "${server_pids[@]}"; do
        read -r rss _ < <(rss_kib "$i")
        base_rss=$((base_rss + rss))
    done
    log "servers up: ${server_pids[*]} (RSS $base_rss KiB in total before any connection)"

    # Clients.
    local per count ip=2 first last client_pids=() t0 t_est
    per=$(((CONNECTIONS + clients - 1) / clients))
    t0=$EPOCHREALTIME
    for ((i = 0; i < clients; i++)); do
        count=$((i == clients - 1 ? CONNECTIONS - per * (clients - 1) : per))
        first=127.0.0.$ip
        last=127.0.0.$((ip + ips_per_client - 1))
        ip=$((ip + ips_per_client))
        start "client$i" $((i % cpus)) "$BINARY" load --url "ws://127.0.0.1:$PORT/" \
            --connections "$count" --source-ips "$first-$last" --hold --ping-once "$MESSAGE_SIZE" \
            --duration "$TIMEOUT" --json
        client_pids+=("$LAST_PID")
    done
    for i in "${!client_pids[@]}"; do
        wait_for_line "$WORK/client$i.log" '"phase": *"established"' "${client_pids[i]}" "$TIMEOUT" ||
            die "client $i did not establish its connections: $(tail -n 3 "$WORK/client$i.log")"
    done
    t_est=$(elapsed "$t0")
    local up
    up=$(server_connections)
    log "established: $up server-side connections after $t_est s"

    # Snapshot with every connection up.
    local up_sock up_slab up_slab_kib up_unrecl_kib up_rss=0 up_anon=0 anon
    up_sock=$(sockstat)
    up_slab=$(slab_bytes)
    up_slab_kib=$(meminfo_kib Slab)
    up_unrecl_kib=$(meminfo_kib SUnreclaim)
    for i in "${server_pids[@]}"; do
        read -r rss anon < <(rss_kib "$i")
        up_rss=$((up_rss + rss))
        up_anon=$((up_anon + anon))
    done

    # Round trip: every client sends its one message per connection once all are up.
    for i in "${!client_pids[@]}"; do
        wait_for_line "$WORK/client$i.log" '"phase": *"ping"' "${client_pids[i]}" 60 ||
            die "client $i reported no round trip: $(tail -n 3 "$WORK/client$i.log")"
    done

    # Teardown: clients close every connection (Close handshake), then the servers stop.
    local failed=0 down_t0 t_down left
    down_t0=$EPOCHREALTIME
    kill -INT "${client_pids[@]}" 2>/dev/null || true
    for i in "${!client_pids[@]}"; do
        wait_exit "${client_pids[i]}" 60
        [[ $EXIT_STATUS == 0 ]] || {
            log "client $i exited with $EXIT_STATUS"
            failed=1
        }
    done
    left=$(server_connections)
    while ((left > 0 && SECONDS < DEADLINE)); do
        sleep 0.2
        left=$(server_connections)
    done
    t_down=$(elapsed "$down_t0")
    kill -INT "${server_pids[@]}" 2>/dev/null || true
    for i in "${!server_pids[@]}"; do
        wait_exit "${server_pids[i]}" 30
        [[ $EXIT_STATUS == 0 ]] || {
            log "server $i exited with $EXIT_STATUS"
            failed=1
        }
    done
    PIDS=()

    report "$servers" "$clients" "$up" "$t_est" "$t_down" "$left" "$failed" \
        "$base_rss" "$up_rss" "$up_anon" \
        "$base_sock" "$up_sock" "$base_slab_kib" "$up_slab_kib" "$base_unrecl_kib" "$up_unrecl_kib" \
        "$base_slab" "$up_slab"
    ((failed == 0 && left == 0 && up == CONNECTIONS))
}

main "$@"
