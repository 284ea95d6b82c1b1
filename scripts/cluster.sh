#!/usr/bin/env bash
# cluster.sh: the three-node cluster of the README's "Scaling out" on this machine, in one command:
# a broker (nats-server, or redis-server with --broker redis), `ringws ticker`, three
# `ringws serve --mode feed --rate 0 --bridge URL` nodes and HAProxy in front of them
# (deploy/haproxy.cfg's settings, on 127.0.0.1). It prints where to connect, then runs until
# Ctrl-C/SIGTERM (or --for SECONDS) and stops everything it started.
#
#   scripts/cluster.sh                      # then open http://127.0.0.1:8080/ (the feed's page)
#   scripts/cluster.sh --broker redis --for 60
#
# As root, missing tools are installed with apt-get (nats-server, redis-server, haproxy); the
# binary is built with cargo if target/release/ringws is missing. Ports: --port P uses P (HAProxy)
# and P+1..P+8.

set -euo pipefail

PROG=${0##*/}
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
BINARY=$ROOT/target/release/ringws
BROKER=nats
PORT=8080
FOR=0
SYMBOLS=100
RATE=1000

usage() {
    cat <<EOF
Usage: $PROG [--broker nats|redis] [--port P] [--symbols N] [--rate R] [--for SECONDS] [--binary PATH]

Starts a broker, ringws ticker, three bridged ringws nodes and HAProxy on 127.0.0.1; clients
connect to ws://127.0.0.1:P/ (default $PORT). Runs until Ctrl-C, or for SECONDS.
EOF
}

while (($#)); do
    case $1 in
        --broker) BROKER=${2:?}; shift 2 ;;
        --port) PORT=${2:?}; shift 2 ;;
        --symbols) SYMBOLS=${2:?}; shift 2 ;;
        --rate) RATE=${2:?}; shift 2 ;;
        --for) FOR=${2:?}; shift 2 ;;
        --binary) BINARY=${2:?}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) printf '%s: unknown option %s\n' "$PROG" "$1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ $BROKER == nats || $BROKER == redis ]] || { echo "$PROG: --broker is nats or redis" >&2; exit 2; }
for n in PORT SYMBOLS RATE FOR; do
    [[ ${!n} =~ ^[0-9]+$ ]] || { echo "$PROG: --${n,,} must be a whole number" >&2; exit 2; }
done

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
has() { command -v "$1" >/dev/null || [[ -x /usr/sbin/$1 ]]; }
tool() { command -v "$1" 2>/dev/null || echo "/usr/sbin/$1"; }

missing=()
has "$BROKER-server" || missing+=("$BROKER-server")
has haproxy || missing+=(haproxy)
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing ${missing[*]} (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
    else
        say "missing ${missing[*]} (as root: apt-get install ${missing[*]})"
        exit 1
    fi
fi
if [[ ! -x $BINARY ]]; then
    say "building $BINARY (cargo build --release)"
    (cd "$ROOT" && cargo build --release --bin ringws)
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    local pid
    # SIGINT first: the nodes skip their drain delay (an interactive stop). Background jobs of a
    # script start with SIGINT ignored, and HAProxy keeps it so: SIGTERM for what is left after 3 s.
    for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    local deadline=$((SECONDS + 3)) alive
    while ((SECONDS < deadline)); do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

start() {
    local name=$1
    shift
    say "$*"
    "$@" </dev/null >"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
}

# wait_for FILE TEXT: bounded (20 s).
wait_for() {
    local deadline=$((SECONDS + 20))
    until grep -qF -- "$2" "$1" 2>/dev/null; do
        ((SECONDS < deadline)) || { say "timed out waiting for '$2' in $1:"; cat "$1" >&2; exit 1; }
        sleep 0.05
    done
}

wait_port() {
    local deadline=$((SECONDS + 20))
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        ((SECONDS < deadline)) || { say "nothing listens on 127.0.0.1:$1"; exit 1; }
        sleep 0.05
    done
}

bport=$((PORT + 1))
if [[ $BROKER == nats ]]; then
    start broker "$(tool nats-server)" -a 127.0.0.1 -p "$bport"
else
    start broker "$(tool redis-server)" --port "$bport" --bind 127.0.0.1 --save "" --appendonly no
fi
url=$BROKER://127.0.0.1:$bport
wait_port "$bport"

servers=
for i in 1 2 3; do
    ws=$((PORT + 1 + 2 * i)) admin=$((PORT + 2 + 2 * i))
    start "node$i" "$BINARY" serve --mode feed --rate 0 --symbols "$SYMBOLS" --workers 1 \
        --addr "127.0.0.1:$ws" --admin-addr "127.0.0.1:$admin" --bridge "$url"
    wait_for "$WORK/node$i.log" "listening on"
    servers+="    server node$i 127.0.0.1:$ws check port $admin"$'\n'
done

start ticker "$BINARY" ticker --bridge "$url" --symbols "$SYMBOLS" --rate "$RATE"
wait_for "$WORK/ticker.log" "ticker publishing"

# deploy/haproxy.cfg's settings, with this machine's addresses.
cat >"$WORK/haproxy.cfg" <<EOF
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    retries 3
    option redispatch
frontend websocket
    bind 127.0.0.1:$PORT
    default_backend ringws
backend ringws
    balance leastconn
    option httpchk
    http-check send meth GET uri /ready ver HTTP/1.1 hdr Host ringws
    http-check expect status 200
    default-server inter 1s fall 2 rise 2
$servers
EOF
start haproxy "$(tool haproxy)" -db -f "$WORK/haproxy.cfg"
wait_port "$PORT"

say "ready: ws://127.0.0.1:$PORT/ (the feed's page: http://127.0.0.1:$PORT/), broker $url"
say "try: $BINARY load --url ws://127.0.0.1:$PORT/ --subscribe all --connections 30 --duration 5"
say "logs in $WORK; Ctrl-C stops everything"
if ((FOR > 0)); then
    sleep "$FOR"
else
    while true; do sleep 3600; done
fi
