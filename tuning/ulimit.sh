#!/usr/bin/env bash
# ulimit.sh: the per-process limits ringws needs (open files, locked memory), what this shell and
# running processes have, how to raise them, and with --write a limits.d snippet that does.
#
# Exit status: 0 ok (low limits are reported, not an error), 1 error, 2 usage.

set -euo pipefail

readonly DEFAULT_CONNECTIONS=100000
readonly MAX_CONNECTIONS=10000000
# Open files one process needs besides its connections; sysctl.sh sizes fs.nr_open the same way.
readonly NOFILE_HEADROOM=16384
# The engine's defaults for the ring sizes that decide the locked memory (serve --ring-entries and
# --buffer-count; ringws-engine Config::default()).
readonly DEFAULT_RING_ENTRIES=2048
readonly DEFAULT_BUFFER_COUNT=512
# The kernel's default RLIMIT_MEMLOCK since Linux 5.16; the snippet never goes below it.
readonly DEFAULT_MEMLOCK_KIB=8192
readonly CAP_IPC_LOCK=14
readonly SNIPPET_NAME=90-ringws.conf

PROG=${0##*/}
readonly PROG

# round_up BYTES: BYTES rounded up to whole pages.
round_up() {
    echo $((($1 + PAGE - 1) / PAGE * PAGE))
}

# ring_bytes ENTRIES: the bytes the kernel charges for one ring of ENTRIES submission entries: the
# SQE array (64 B each) and the region with the ring header (64 B), the CQEs (16 B each, four times
# the entries) and the SQ index array (4 B each; none with --no-sq-array true, off by default);
# entries are clamped (IORING_SETUP_CLAMP) and rounded up to powers of two, each part to whole pages.
ring_bytes() {
    local entries=$1 sq=1 cq=1 want
    want=$((entries < 1 ? 1 : entries > 32768 ? 32768 : entries))
    while ((sq < want)); do sq=$((sq * 2)); done
    want=$((entries * 4 < 1 ? 1 : entries * 4 > 65536 ? 65536 : entries * 4))
    while ((cq < want)); do cq=$((cq * 2)); done
    echo $(($(round_up $((sq * 64))) + $(round_up $(((64 + cq * 16 + 63) / 64 * 64 + sq * 4)))))
}

# memlock_need: sets WORKER_MEMLOCK and PROBE_MEMLOCK (bytes) and MEMLOCK_NEED_KIB, the locked
# memory of WORKERS workers. The same computation as `ringws check` (MemlockNeed::of in
# engine/src/probe.rs; tests/check.rs checks that the two agree): per worker one ring of
# RING_ENTRIES and a provided-buffer ring of BUFFER_COUNT 16-byte entries; plus the start-up probe's
# ring (8 entries and a 2-entry buffer ring), which the kernel may not have freed yet when the
# workers start.
memlock_need() {
    WORKER_MEMLOCK=$(($(ring_bytes "$RING_ENTRIES") + $(round_up $((BUFFER_COUNT * 16)))))
    PROBE_MEMLOCK=$(($(ring_bytes 8) + $(round_up 32)))
    MEMLOCK_NEED_KIB=$(((WORKERS * WORKER_MEMLOCK + PROBE_MEMLOCK + 1023) / 1024))
}

usage() {
    cat <<EOF
Usage: $PROG [--connections N] [--workers W] [--ring-entries E] [--buffer-count B] [--pid PID]...
       [--write DIR [--user NAME]]

Shows soft and hard nofile and memlock for this shell and each --pid, what ringws needs for N
connections and W workers, and how to raise the limits.

  --connections N  connection target (default $DEFAULT_CONNECTIONS, at most $MAX_CONNECTIONS)
  --workers W      ringws workers (default: CPUs this shell may run on, as the engine counts them)
  --ring-entries E as ringws serve --ring-entries (default $DEFAULT_RING_ENTRIES): sizes the locked memory
  --buffer-count B as ringws serve --buffer-count (default $DEFAULT_BUFFER_COUNT): sizes the locked memory
  --pid PID        also show the limits of this running process (repeatable)
  --write DIR      write DIR/$SNIPPET_NAME, a pam_limits snippet (DIR is usually /etc/security/limits.d)
  --user NAME      the snippet's domain: a user, @group or * (default: * and root)
  -h, --help       this text

Exit status: 0 ok (limits that are too low are reported, not an error), 1 error, 2 usage.
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

# limits_of PID: sets NOFILE_SOFT, NOFILE_HARD, MEMLOCK_SOFT, MEMLOCK_HARD (numbers or "unlimited",
# memlock in bytes) and IPC_LOCK (1 when the process may lock memory regardless of the limit).
NOFILE_SOFT=
NOFILE_HARD=
MEMLOCK_SOFT=
MEMLOCK_HARD=
IPC_LOCK=0
limits_of() {
    local pid=$1 line cap=
    NOFILE_SOFT=
    MEMLOCK_SOFT=
    while IFS= read -r line; do
        if [[ $line =~ ^Max\ open\ files\ +([0-9]+|unlimited)\ +([0-9]+|unlimited) ]]; then
            NOFILE_SOFT=${BASH_REMATCH[1]}
            NOFILE_HARD=${BASH_REMATCH[2]}
        elif [[ $line =~ ^Max\ locked\ memory\ +([0-9]+|unlimited)\ +([0-9]+|unlimited) ]]; then
            MEMLOCK_SOFT=${BASH_REMATCH[1]}
            MEMLOCK_HARD=${BASH_REMATCH[2]}
        fi
    done <"/proc/$pid/limits"
    [[ -n $NOFILE_SOFT && -n $MEMLOCK_SOFT ]] || die "unexpected format of /proc/$pid/limits"
    while IFS= read -r line; do
        if [[ $line =~ ^CapEff:[[:space:]]+([0-9a-f]{1,16})$ ]]; then
            cap=${BASH_REMATCH[1]}
        fi
    done <"/proc/$pid/status"
    [[ -n $cap ]] || die "no CapEff line in /proc/$pid/status"
    IPC_LOCK=$(((16#$cap >> CAP_IPC_LOCK) & 1))
}

# at_least VALUE NEED: VALUE ("unlimited" or a number) is at least NEED.
at_least() {
    [[ $1 == unlimited ]] || (($1 >= $2))
}

# report TITLE PID: prints the limits of PID against what ringws needs.
report() {
    local title=$1 pid=$2 status
    limits_of "$pid"
    printf '%s\n' "$title"
    if at_least "$NOFILE_SOFT" "$NOFILE"; then
        status=ok
    elif at_least "$NOFILE_HARD" "$NOFILE"; then
        status="too low: raise the soft limit to $NOFILE"
    else
        status="too low: raise soft and hard limits to $NOFILE"
    fi
    printf '  %-8s soft %-12s hard %-12s %s\n' nofile "$NOFILE_SOFT" "$NOFILE_HARD" "$status"
    if ((IPC_LOCK)); then
        status="ok: not enforced, the process has CAP_IPC_LOCK"
    elif at_least "$MEMLOCK_SOFT" $((MEMLOCK_NEED_KIB * 1024)); then
        status="ok (bytes)"
    else
        status="too low: io_uring needs $((MEMLOCK_NEED_KIB * 1024)) bytes on Linux < 5.12 and >= 6.14"
    fi
    printf '  %-8s soft %-12s hard %-12s %s\n' memlock "$MEMLOCK_SOFT" "$MEMLOCK_HARD" "$status"
}

# write_snippet DIR DOMAIN...: writes DIR/$SNIPPET_NAME atomically.
write_snippet() {
    local dir=$1 domain tmp
    shift
    tmp="$dir/.$SNIPPET_NAME.$$"
    {
        printf '# ringws: limits for %s connections and %s workers, written by tuning/ulimit.sh.\n' \
            "$CONNECTIONS" "$WORKERS"
        printf '# nofile = %s connections + %s headroom; memlock (KiB) = 2 x %s KiB of io_uring rings\n' \
            "$CONNECTIONS" "$NOFILE_HEADROOM" "$MEMLOCK_NEED_KIB"
        printf '# (%s workers), at least the 8 MiB kernel default. Neither is below what the shell that\n' \
            "$WORKERS"
        printf '# wrote this had. pam_limits applies it to new login sessions (ssh, login, su); systemd\n'
        printf '# services need LimitNOFILE=/LimitMEMLOCK= instead. "*" does not match root. The hard\n'
        printf '# nofile value must not exceed fs.nr_open, or pam_limits cannot set it.\n'
        for domain in "$@"; do
            printf '%-8s %-5s %-8s %s\n' "$domain" soft nofile "$SNIPPET_NOFILE" \
                "$domain" hard nofile "$SNIPPET_NOFILE" \
                "$domain" soft memlock "$SNIPPET_MEMLOCK" \
                "$domain" hard memlock "$SNIPPET_MEMLOCK"
        done
    } >"$tmp" 2>/dev/null || {
        rm -f -- "$tmp"
        die "cannot write into $dir"
    }
    if ! chmod 0644 -- "$tmp" || ! mv -f -- "$tmp" "$dir/$SNIPPET_NAME"; then
        rm -f -- "$tmp"
        die "cannot install $dir/$SNIPPET_NAME"
    fi
    printf 'wrote %s/%s (nofile %s, memlock %s KiB); it applies to sessions started from now on\n' \
        "$dir" "$SNIPPET_NAME" "$SNIPPET_NOFILE" "$SNIPPET_MEMLOCK"
}

main() {
    local write_dir='' user='' pid nr_open
    local -a pids=()
    CONNECTIONS=$DEFAULT_CONNECTIONS
    WORKERS=''
    RING_ENTRIES=$DEFAULT_RING_ENTRIES
    BUFFER_COUNT=$DEFAULT_BUFFER_COUNT
    while (($#)); do
        case $1 in
        --connections | --workers | --ring-entries | --buffer-count | --pid | --write | --user)
            (($# >= 2)) || usage_error "$1 needs a value"
            case $1 in
            --connections) CONNECTIONS=$2 ;;
            --workers) WORKERS=$2 ;;
            --ring-entries) RING_ENTRIES=$2 ;;
            --buffer-count) BUFFER_COUNT=$2 ;;
            --pid) pids+=("$2") ;;
            --write) write_dir=$2 ;;
            --user) user=$2 ;;
            esac
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) usage_error "unknown argument: $1" ;;
        esac
        shift
    done
    if ! [[ $CONNECTIONS =~ ^[1-9][0-9]{0,7}$ ]] || ((CONNECTIONS > MAX_CONNECTIONS)); then
        usage_error "--connections takes a whole number from 1 to $MAX_CONNECTIONS, not '$CONNECTIONS'"
    fi
    if [[ -z $WORKERS ]]; then
        WORKERS=$(nproc)
    elif ! [[ $WORKERS =~ ^[1-9][0-9]{0,3}$ ]]; then
        usage_error "--workers takes a whole number from 1 to 9999, not '$WORKERS'"
    fi
    # The engine's ranges (Config::validate).
    if ! [[ $RING_ENTRIES =~ ^[1-9][0-9]{0,4}$ ]] || ((RING_ENTRIES < 8 || RING_ENTRIES > 32768)); then
        usage_error "--ring-entries takes a whole number from 8 to 32768, not '$RING_ENTRIES'"
    fi
    if ! [[ $BUFFER_COUNT =~ ^[1-9][0-9]{0,4}$ ]] || ((BUFFER_COUNT > 32768 || (BUFFER_COUNT & (BUFFER_COUNT - 1)) != 0)); then
        usage_error "--buffer-count takes a power of two from 1 to 32768, not '$BUFFER_COUNT'"
    fi
    for pid in "${pids[@]}"; do
        [[ $pid =~ ^[1-9][0-9]{0,9}$ ]] || usage_error "--pid takes a process id, not '$pid'"
        [[ -r /proc/$pid/limits ]] || die "no process $pid (or its limits are not readable)"
    done
    [[ -z $write_dir || -d $write_dir ]] || die "--write: $write_dir is not a directory"
    if [[ -n $user ]]; then
        [[ -n $write_dir ]] || usage_error "--user only applies to --write"
        [[ $user =~ ^(\*|@?[A-Za-z_][A-Za-z0-9_.-]*\$?)$ ]] || usage_error "--user: not a user, @group or *: '$user'"
    fi

    NOFILE=$((CONNECTIONS + NOFILE_HEADROOM))
    PAGE=$(getconf PAGESIZE 2>/dev/null) || PAGE=4096
    [[ $PAGE =~ ^[1-9][0-9]*$ ]] || PAGE=4096
    memlock_need
    MEMLOCK_KIB=$((2 * MEMLOCK_NEED_KIB > DEFAULT_MEMLOCK_KIB ? 2 * MEMLOCK_NEED_KIB : DEFAULT_MEMLOCK_KIB))
    nr_open=$(</proc/sys/fs/nr_open)

    printf 'ringws limits for %s connections and %s workers\n' "$CONNECTIONS" "$WORKERS"
    printf '  nofile  >= %s: %s connections + %s headroom (listeners, rings, logs)\n' \
        "$NOFILE" "$CONNECTIONS" "$NOFILE_HEADROOM"
    printf '          fs.nr_open = %s caps every hard nofile limit%s\n' "$nr_open" \
        "$( ((nr_open >= NOFILE)) || printf '; too low: tuning/sysctl.sh apply --connections %s' "$CONNECTIONS")"
    printf '  memlock >= %s KiB: %s workers x %s KiB + %s KiB probe of io_uring rings; recommended %s KiB\n' \
        "$MEMLOCK_NEED_KIB" "$WORKERS" "$((WORKER_MEMLOCK / 1024))" "$((PROBE_MEMLOCK / 1024))" "$MEMLOCK_KIB"
    printf '          (twice that, for a restart: the kernel frees an exited process'\''s rings later)\n'
    printf '          Computed as ringws check does, for %s ring entries and %s receive buffers per worker.\n' \
        "$RING_ENTRIES" "$BUFFER_COUNT"
    printf '          Enforced on Linux < 5.12 and >= 6.14 for processes without CAP_IPC_LOCK, per user:\n'
    printf '          all io_uring instances of one user count together. 5.12 to 6.13 charge the\n'
    printf '          rings to the memory cgroup instead; registered buffers count on every version.\n\n'

    report "this shell: pid $$ (limits inherited from the shell that started $PROG)" $$
    for pid in "${pids[@]}"; do
        report "pid $pid ($(<"/proc/$pid/comm"))" "$pid"
    done

    cat <<EOF

How to raise them
  this shell, up to its hard limit:  ulimit -Sn $NOFILE   (a higher hard limit needs root: ulimit -Hn)
  a running process:                 prlimit --pid PID --nofile=$NOFILE:$NOFILE --memlock=$((MEMLOCK_KIB * 1024)):$((MEMLOCK_KIB * 1024))
  login sessions (pam_limits):       $PROG --write /etc/security/limits.d writes $SNIPPET_NAME
  a systemd service (limits.d does not apply to services): systemctl edit ringws, then
      [Service]
      LimitNOFILE=$NOFILE
      LimitMEMLOCK=$((MEMLOCK_KIB * 1024))
  a container:                       docker run --ulimit nofile=$NOFILE:$NOFILE --ulimit memlock=$((MEMLOCK_KIB * 1024)):$((MEMLOCK_KIB * 1024))
EOF

    if [[ -n $write_dir ]]; then
        # Never write a value below what this shell already has.
        limits_of $$
        SNIPPET_NOFILE=$NOFILE
        if [[ $NOFILE_HARD != unlimited ]] && ((NOFILE_HARD > SNIPPET_NOFILE)); then
            SNIPPET_NOFILE=$NOFILE_HARD
        fi
        SNIPPET_MEMLOCK=$MEMLOCK_KIB
        if [[ $MEMLOCK_HARD == unlimited ]]; then
            SNIPPET_MEMLOCK=unlimited
        elif ((MEMLOCK_HARD / 1024 > SNIPPET_MEMLOCK)); then
            SNIPPET_MEMLOCK=$((MEMLOCK_HARD / 1024))
        fi
        if ((SNIPPET_NOFILE > nr_open)); then
            die "nofile $SNIPPET_NOFILE exceeds fs.nr_open $nr_open: pam_limits would fail; run tuning/sysctl.sh apply --connections $CONNECTIONS first"
        fi
        printf '\n'
        if [[ -n $user ]]; then
            write_snippet "$write_dir" "$user"
        else
            write_snippet "$write_dir" '*' root
        fi
    fi
}

main "$@"
