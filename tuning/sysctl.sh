#!/usr/bin/env bash
# sysctl.sh: show, apply and revert the kernel settings ringws wants for many mostly-idle connections.
#
# `show` prints, one line per knob, the current value, the value `apply` would write and why.
# `apply` first saves the current value of every knob it is about to change to a backup file, then
# writes them; `revert` restores the backup and deletes it. Values are never made less generous than
# they already are. Every knob and its arithmetic is explained in tuning/README.md.
#
# Exit status: 0 ok, 1 error (including a knob that could not be set or restored), 2 usage.

set -euo pipefail

readonly PROC_SYS=/proc/sys
readonly DEFAULT_CONNECTIONS=100000
readonly MAX_CONNECTIONS=10000000
readonly DEFAULT_BACKUP=/var/lib/ringws/sysctl-backup.conf
# Open files one process needs besides its connections: listeners, rings, event fds, logs.
readonly NOFILE_HEADROOM=16384
# Open files the rest of the system needs besides the server and a local load generator.
readonly FILE_MAX_HEADROOM=65536
# Ephemeral ports available to one source address with the widest range, 1024..65535.
readonly MAX_EPHEMERAL_PORTS=64512
# What every TCP socket may keep even under memory pressure: tcp_rmem min + tcp_wmem min (4096 each).
readonly SOCKET_MIN_BYTES=8192
# The kernel's own ~4 KiB per idle TCP socket (socket, inode, dentry, file; slab, not tcp_mem).
readonly IDLE_SOCKET_KIB=4

PROG=${0##*/}
readonly PROG

usage() {
    cat <<EOF
Usage: $PROG [--connections N] [--backup FILE] [--dry-run] [--porcelain] show|apply|revert

Kernel settings for N concurrent, mostly idle WebSocket connections (see tuning/README.md).

  show     current value, recommended value and reason, one line per knob (works as non-root)
  apply    save the current values of the knobs it will change to FILE, then set them (root)
  revert   restore the values saved in FILE, then delete FILE (root)

  --connections N  connection target (default $DEFAULT_CONNECTIONS, at most $MAX_CONNECTIONS)
  --backup FILE    backup file (default $DEFAULT_BACKUP)
  --dry-run        apply/revert print what they would write and change nothing
  --porcelain      show prints only the knobs, one per line, tab-separated, for programs
                   (\`ringws check\` reads it): KNOB STATUS CURRENT RECOMMENDED REASON
  -h, --help       this text

A value that is already more generous than the recommendation is kept as it is.
Exit status: 0 ok, 1 error (including a knob that could not be set), 2 usage.
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

# --- the knobs ---------------------------------------------------------------------------------

# Knob names in display order, and per knob: the direction of each element ("ge": at least the
# recommendation, "le": at most, "eq": exactly), the recommendation, and the one-line reason.
KNOBS=()
declare -A DIRECTION=() RECOMMENDED=() REASON=()

knob() {
    KNOBS+=("$1")
    DIRECTION[$1]=$2
    RECOMMENDED[$1]=$3
    REASON[$1]=$4
}

# Sizing inputs, also used by the arithmetic that `show` prints.
PAGE_SIZE=4096
MEM_KIB=0
NOFILE=0
FILE_MAX=0
PORTS=0
PORT_LOW=0
SOURCE_IPS=0
TCP_MEM_MIN=0
TCP_MEM_PRESSURE=0
TCP_MEM_MAX=0
TCP_MEM_CAPPED=0

# define_knobs N: fills KNOBS and the sizing inputs for a target of N connections.
define_knobs() {
    local n=$1 meminfo_line cap
    PAGE_SIZE=$(getconf PAGESIZE)
    while read -r meminfo_line; do
        if [[ $meminfo_line =~ ^MemTotal:[[:space:]]+([0-9]+)[[:space:]]kB$ ]]; then
            MEM_KIB=${BASH_REMATCH[1]}
        fi
    done </proc/meminfo
    ((MEM_KIB > 0)) || die "cannot read MemTotal from /proc/meminfo"

    NOFILE=$((n + NOFILE_HEADROOM))
    FILE_MAX=$((2 * n + FILE_MAX_HEADROOM))

    # Enough ephemeral ports for N outgoing connections from one source address, as far as the
    # range goes; the start is even and the end (65535) odd, the parity split the kernel prefers.
    PORTS=$((n < MAX_EPHEMERAL_PORTS ? n : MAX_EPHEMERAL_PORTS))
    PORT_LOW=$((65536 - PORTS))
    PORT_LOW=$((PORT_LOW - PORT_LOW % 2))
    SOURCE_IPS=$(((n + MAX_EPHEMERAL_PORTS - 1) / MAX_EPHEMERAL_PORTS))

    # tcp_mem, in pages: every connection keeps its guaranteed minimum without pushing TCP into
    # pressure; half of that is the "don't care" floor, twice that the hard ceiling. The ceiling
    # never exceeds half of RAM.
    TCP_MEM_PRESSURE=$(((n * SOCKET_MIN_BYTES + PAGE_SIZE - 1) / PAGE_SIZE))
    TCP_MEM_MIN=$((TCP_MEM_PRESSURE / 2))
    TCP_MEM_MAX=$((TCP_MEM_PRESSURE * 2))
    cap=$((MEM_KIB * 1024 / PAGE_SIZE / 2))
    TCP_MEM_CAPPED=0
    if ((TCP_MEM_MAX > cap)); then
        TCP_MEM_CAPPED=1
        TCP_MEM_MAX=$cap
        TCP_MEM_PRESSURE=$((cap / 2))
        TCP_MEM_MIN=$((cap / 4))
    fi

    knob net.core.somaxconn ge 4096 \
        "listen() silently caps every backlog here; the engine asks 4096 per worker listener"
    knob net.ipv4.tcp_max_syn_backlog ge 8192 \
        "half-open handshakes per listener when tcp_syncookies=0 (with cookies the backlog bounds them)"
    knob net.core.netdev_max_backlog ge 16384 \
        "per-CPU queue of received packets, loopback included; 1000 drops packets in connection bursts"
    knob net.ipv4.ip_local_port_range "le ge" "$PORT_LOW 65535" \
        "ephemeral ports for outgoing connections (load generator): one per connection per source IP"
    knob net.ipv4.tcp_tw_reuse eq 1 \
        "outgoing connections may reuse TIME_WAIT ports (timestamps make it safe); 2 covers loopback only"
    knob net.ipv4.tcp_fin_timeout le 15 \
        "orphaned FIN_WAIT_2 sockets after a mass disconnect are freed after 15 s instead of 60 s"
    knob fs.file-max ge "$FILE_MAX" \
        "open files system-wide: the server's N sockets, a local load generator's N, and the rest"
    knob fs.nr_open ge "$NOFILE" \
        "ceiling for any process's nofile limit: N sockets + $NOFILE_HEADROOM headroom (ulimit.sh sets it)"
    knob net.ipv4.tcp_mem "ge ge ge" "$TCP_MEM_MIN $TCP_MEM_PRESSURE $TCP_MEM_MAX" \
        "pages for all TCP buffers: N sockets x $SOCKET_MIN_BYTES bytes stay below pressure (see below)"
    knob net.ipv4.tcp_rmem "ge ge ge" "4096 131072 6291456" \
        "per-socket receive buffer min/default/max: kernel defaults; idle sockets queue nothing"
    knob net.ipv4.tcp_wmem "ge ge ge" "4096 16384 4194304" \
        "per-socket send buffer min/default/max: kernel defaults; tcp_mem bounds the total"
    knob net.ipv4.tcp_keepalive_time le 300 \
        "first keepalive probe after 300 s idle, under common NAT timeouts (only SO_KEEPALIVE sockets)"
    knob net.ipv4.tcp_keepalive_intvl le 30 \
        "then one probe every 30 s"
    knob net.ipv4.tcp_keepalive_probes le 5 \
        "dead peer dropped after 300 + 5 x 30 = 450 s instead of 7200 + 9 x 75 = 7875 s"
}

# --- values ------------------------------------------------------------------------------------

knob_path() {
    printf '%s/%s' "$PROC_SYS" "${1//.//}"
}

# A non-negative decimal that bash arithmetic holds exactly (at most 18 digits).
is_uint() {
    [[ $1 =~ ^[0-9]{1,18}$ ]]
}

# read_value PATH: prints the knob's elements separated by single spaces.
read_value() {
    local -a parts
    read -r -a parts <"$1" || [[ ${#parts[@]} -gt 0 ]] || return 1
    local IFS=' '
    printf '%s' "${parts[*]}"
}

# target CURRENT DIRECTIONS RECOMMENDED: prints what apply writes, element by element: "ge" keeps the
# larger, "le" the smaller, "eq" takes the recommendation. Fails on an unexpected current value.
target() {
    local -a cur dir rec out=()
    local i c r
    read -r -a cur <<<"$1"
    read -r -a dir <<<"$2"
    read -r -a rec <<<"$3"
    ((${#cur[@]} == ${#rec[@]})) || return 1
    for i in "${!rec[@]}"; do
        c=${cur[i]}
        r=${rec[i]}
        is_uint "$c" || return 1
        c=$((10#$c))
        case ${dir[i]} in
        ge) out+=("$((c > r ? c : r))") ;;
        le) out+=("$((c < r ? c : r))") ;;
        eq) out+=("$r") ;;
        esac
    done
    local IFS=' '
    printf '%s' "${out[*]}"
}

# write_value PATH VALUE: writes the knob; on refusal prints the kernel's reason and fails.
write_value() {
    local err
    if err=$({ printf '%s\n' "$2" >"$1"; } 2>&1); then
        return 0
    fi
    printf '%s' "${err##*: }"
    return 1
}

# inspect NAME: sets CUR, TARGET and STATE (ok, change, read-only, absent, unreadable, unexpected).
CUR=
TARGET=
STATE=
inspect() {
    local name=$1 path
    path=$(knob_path "$name")
    CUR=-
    TARGET=-
    if [[ ! -e $path ]]; then
        STATE=absent
    elif ! CUR=$(read_value "$path" 2>/dev/null); then
        CUR='?'
        STATE=unreadable
    elif ! TARGET=$(target "$CUR" "${DIRECTION[$name]}" "${RECOMMENDED[$name]}"); then
        TARGET=-
        STATE=unexpected
    elif [[ $CUR == "$TARGET" ]]; then
        STATE=ok
    elif ((EUID == 0)) && [[ ! -w $path ]]; then
        STATE=read-only
    else
        STATE=change
    fi
}

require_root() {
    ((EUID == 0)) || die "$1 needs root (--dry-run shows what it would do)"
}

# --- commands ----------------------------------------------------------------------------------

mib() {
    printf '%s MiB' "$(($1 / 1048576))"
}

cmd_show() {
    local n=$1 porcelain=$2 name
    if ((porcelain)); then
        for name in "${KNOBS[@]}"; do
            inspect "$name"
            printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$STATE" "$CUR" "$TARGET" "${REASON[$name]}"
        done
        return 0
    fi
    printf 'ringws sysctl tuning for %s connections. RECOMMENDED is what apply writes: never less\n' "$n"
    printf 'generous than CURRENT. STATUS: ok, change (apply sets it), read-only (cannot set here),\n'
    printf 'absent (not on this kernel).\n\n'
    printf '%-30s %-22s %-22s %-10s %s\n' KNOB CURRENT RECOMMENDED STATUS WHY
    for name in "${KNOBS[@]}"; do
        inspect "$name"
        printf '%-30s %-22s %-22s %-10s %s\n' "$name" "$CUR" "$TARGET" "$STATE" "${REASON[$name]}"
    done

    printf '\nArithmetic for %s connections (page size %s bytes, RAM %s):\n' \
        "$n" "$PAGE_SIZE" "$(mib $((MEM_KIB * 1024)))"
    printf '  fs.nr_open      >= %s + %s headroom = %s\n' "$n" "$NOFILE_HEADROOM" "$NOFILE"
    printf '  fs.file-max     >= 2 x %s (server + local load generator) + %s = %s\n' \
        "$n" "$FILE_MAX_HEADROOM" "$FILE_MAX"
    printf '  port range      >= %s..65535: min(%s, %s) ports per source IP; %s source IP(s) needed\n' \
        "$PORT_LOW" "$n" "$MAX_EPHEMERAL_PORTS" "$SOURCE_IPS"
    printf '  tcp_mem         per socket under pressure: tcp_rmem min + tcp_wmem min = 4096 + 4096 = %s bytes\n' \
        "$SOCKET_MIN_BYTES"
    if ((TCP_MEM_CAPPED)); then
        printf '    2 x %s x %s bytes exceeds half of RAM: max capped at %s pages (%s),\n' \
            "$n" "$SOCKET_MIN_BYTES" "$TCP_MEM_MAX" "$(mib $((TCP_MEM_MAX * PAGE_SIZE)))"
        printf '    pressure = max / 2 = %s pages, min = max / 4 = %s pages:' \
            "$TCP_MEM_PRESSURE" "$TCP_MEM_MIN"
        printf ' pressure once about %s connections hold %s bytes each\n' \
            "$((TCP_MEM_PRESSURE * PAGE_SIZE / SOCKET_MIN_BYTES))" "$SOCKET_MIN_BYTES"
    else
        printf '    pressure = %s x %s / %s = %s pages (%s)\n' "$n" "$SOCKET_MIN_BYTES" "$PAGE_SIZE" \
            "$TCP_MEM_PRESSURE" "$(mib $((TCP_MEM_PRESSURE * PAGE_SIZE)))"
        printf '    min      = pressure / 2 = %s pages (%s)\n' "$TCP_MEM_MIN" \
            "$(mib $((TCP_MEM_MIN * PAGE_SIZE)))"
        printf '    max      = pressure x 2 = %s pages (%s)\n' "$TCP_MEM_MAX" \
            "$(mib $((TCP_MEM_MAX * PAGE_SIZE)))"
    fi
    printf '  kernel slab     ~%s KiB per idle socket, outside tcp_mem: %s x %s KiB = %s\n' \
        "$IDLE_SOCKET_KIB" "$n" "$IDLE_SOCKET_KIB" "$(mib $((n * IDLE_SOCKET_KIB * 1024)))"
}

# backup_text N NAME=VALUE...: the backup file's content.
backup_text() {
    local n=$1 entry
    shift
    printf '# ringws sysctl backup: the values "sysctl.sh apply" changed, as they were before (sysctl.conf format).\n'
    printf '# Written %s for %s connections; "sysctl.sh revert" restores them and deletes this file.\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$n"
    for entry in "$@"; do
        printf '%s = %s\n' "${entry%%=*}" "${entry#*=}"
    done
}

cmd_apply() {
    local n=$1 backup=$2 dry=$3 name path err now
    local -a planned=() targets=() changed=()
    local failed=0 i

    if [[ -e $backup || -L $backup ]]; then
        die "backup $backup already exists from an earlier apply: run revert first (or pass --backup FILE)"
    fi
    for name in "${KNOBS[@]}"; do
        inspect "$name"
        case $STATE in
        change | read-only)
            planned+=("$name=$CUR")
            targets+=("$TARGET")
            ;;
        unexpected) printf 'skip       %s: unexpected current value %s\n' "$name" "$CUR" ;;
        unreadable) printf 'skip       %s: cannot read it\n' "$name" ;;
        absent) printf 'skip       %s: not on this kernel\n' "$name" ;;
        ok) ;;
        esac
    done

    if ((dry)); then
        for i in "${!planned[@]}"; do
            printf 'would set  %s: %s -> %s\n' "${planned[i]%%=*}" "${planned[i]#*=}" "${targets[i]}"
        done
        printf 'would save the %s current value(s) to %s first\n' "${#planned[@]}" "$backup"
        return 0
    fi
    require_root apply

    # The originals go to disk before anything changes; noclobber makes the create exclusive.
    mkdir -p -- "$(dirname -- "$backup")" 2>/dev/null || die "cannot create the directory of $backup"
    if ! err=$({ set -o noclobber && backup_text "$n" "${planned[@]}" >"$backup"; } 2>&1); then
        die "cannot write backup $backup: ${err##*: }"
    fi

    for i in "${!planned[@]}"; do
        name=${planned[i]%%=*}
        path=$(knob_path "$name")
        if ! err=$(write_value "$path" "${targets[i]}"); then
            printf 'cannot set %s: %s -> %s (%s)\n' "$name" "${planned[i]#*=}" "${targets[i]}" "$err"
            failed=$((failed + 1))
            continue
        fi
        now=$(read_value "$path") || now='?'
        if [[ $now == "${targets[i]}" ]]; then
            printf 'set        %s: %s -> %s\n' "$name" "${planned[i]#*=}" "$now"
        else
            printf 'cannot set %s: asked %s, the kernel kept %s\n' "$name" "${targets[i]}" "$now"
            failed=$((failed + 1))
        fi
        if [[ $now != "${planned[i]#*=}" ]]; then
            changed+=("${planned[i]}")
        fi
    done

    # Keep exactly what changed, so revert touches nothing else. Should this rewrite fail, the
    # backup still holds the originals of every knob apply tried, which revert handles too.
    if ((${#changed[@]} != ${#planned[@]})); then
        if ! backup_text "$n" "${changed[@]}" >"$backup.tmp.$$" || ! mv -f -- "$backup.tmp.$$" "$backup"; then
            rm -f -- "$backup.tmp.$$"
            printf '%s: could not shrink the backup to the changed knobs; revert still works\n' "$PROG" >&2
            failed=$((failed + 1))
        fi
    fi
    printf 'changed %s knob(s), originals saved in %s' "${#changed[@]}" "$backup"
    if ((failed)); then
        printf '; %s could not be set\n' "$failed"
        return 1
    fi
    printf '\n'
}

# parse_backup FILE: fills SAVED_NAMES and SAVED (name -> value) after validating every line.
SAVED_NAMES=()
declare -A SAVED=()
parse_backup() {
    local file=$1 line lineno=0 name value part
    local -a parts
    local -A known=()
    for name in "${KNOBS[@]}"; do
        known[$name]=1
    done
    while IFS= read -r line || [[ -n $line ]]; do
        lineno=$((lineno + 1))
        if [[ $line =~ ^[[:space:]]*(#.*)?$ ]]; then
            continue
        fi
        if ! [[ $line =~ ^[[:space:]]*([a-z0-9_.-]+)[[:space:]]*=[[:space:]]*([0-9]+([[:space:]]+[0-9]+)*)[[:space:]]*$ ]]; then
            die "$file line $lineno is not 'knob = numbers': $line"
        fi
        name=${BASH_REMATCH[1]}
        value=${BASH_REMATCH[2]}
        [[ -n ${known[$name]:-} ]] || die "$file line $lineno: $name is not a knob this script manages"
        [[ -z ${SAVED[$name]:-} ]] || die "$file line $lineno: $name appears twice"
        read -r -a parts <<<"$value"
        for part in "${parts[@]}"; do
            is_uint "$part" || die "$file line $lineno: $part is out of range"
        done
        SAVED_NAMES+=("$name")
        SAVED[$name]=$(IFS=' ' && printf '%s' "${parts[*]}")
    done <"$file"
}

cmd_revert() {
    local backup=$1 dry=$2 name path err cur failed=0

    if [[ ! -e $backup ]]; then
        die "no backup at $backup: nothing to revert (apply was not run, or was already reverted)"
    fi
    [[ -r $backup ]] || die "cannot read backup $backup"
    parse_backup "$backup"
    ((dry)) || require_root revert

    for name in "${SAVED_NAMES[@]}"; do
        path=$(knob_path "$name")
        if ! cur=$(read_value "$path" 2>/dev/null); then
            printf 'cannot restore %s: cannot read it\n' "$name"
            failed=$((failed + 1))
        elif [[ $cur == "${SAVED[$name]}" ]]; then
            printf 'unchanged  %s: %s\n' "$name" "$cur"
        elif ((dry)); then
            printf 'would restore %s: %s -> %s\n' "$name" "$cur" "${SAVED[$name]}"
        elif ! err=$(write_value "$path" "${SAVED[$name]}"); then
            printf 'cannot restore %s: %s -> %s (%s)\n' "$name" "$cur" "${SAVED[$name]}" "$err"
            failed=$((failed + 1))
        elif [[ $(read_value "$path") != "${SAVED[$name]}" ]]; then
            printf 'cannot restore %s: the kernel kept %s\n' "$name" "$(read_value "$path")"
            failed=$((failed + 1))
        else
            printf 'restored   %s: %s -> %s\n' "$name" "$cur" "${SAVED[$name]}"
        fi
    done

    if ((dry)); then
        printf 'would delete %s\n' "$backup"
    elif ((failed)); then
        die "$failed knob(s) not restored; $backup is kept for another try"
    else
        rm -f -- "$backup" || die "restored everything but cannot delete $backup"
        printf 'reverted %s knob(s); deleted %s\n' "${#SAVED_NAMES[@]}" "$backup"
    fi
}

# --- main --------------------------------------------------------------------------------------

main() {
    local cmd='' connections=$DEFAULT_CONNECTIONS backup=$DEFAULT_BACKUP dry=0 porcelain=0
    while (($#)); do
        case $1 in
        show | apply | revert)
            [[ -z $cmd ]] || usage_error "one command only (got $cmd and $1)"
            cmd=$1
            ;;
        --connections | --backup)
            (($# >= 2)) || usage_error "$1 needs a value"
            if [[ $1 == --connections ]]; then connections=$2; else backup=$2; fi
            shift
            ;;
        --connections=*) connections=${1#*=} ;;
        --backup=*) backup=${1#*=} ;;
        --dry-run) dry=1 ;;
        --porcelain) porcelain=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) usage_error "unknown argument: $1" ;;
        esac
        shift
    done
    [[ -n $cmd ]] || usage_error "missing command: show, apply or revert"
    if ! [[ $connections =~ ^[1-9][0-9]{0,7}$ ]] || ((connections > MAX_CONNECTIONS)); then
        usage_error "--connections takes a whole number from 1 to $MAX_CONNECTIONS, not '$connections'"
    fi
    [[ -n $backup ]] || usage_error "--backup needs a file name"
    [[ $porcelain == 0 || $cmd == show ]] || usage_error "--porcelain only applies to show"

    define_knobs "$connections"
    case $cmd in
    show) cmd_show "$connections" "$porcelain" ;;
    apply) cmd_apply "$connections" "$backup" "$dry" ;;
    revert) cmd_revert "$backup" "$dry" ;;
    esac
}

main "$@"
