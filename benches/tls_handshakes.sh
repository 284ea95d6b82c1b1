#!/usr/bin/env bash
# TLS connections (handshake + one HTTP answer) per second of server CPU, full against resumed, for
# one ringws worker:
#
#   benches/tls_handshakes.sh [-d SECONDS] [-n ROUNDS] [BINARY]
#
# BINARY (default target/release/ringws) serves wss:// with a throwaway ECDSA P-256 certificate on
# CPU 0 (`serve --workers 1 --tls-cert ... --tls-key ...`); OpenSSL's `s_time` on CPU 1 opens one
# connection after another for SECONDS: TLS handshake, `GET / HTTP/1.0` answered by the server (s_time
# reads the answer, and with it the TLS 1.3 session tickets: without a read it never resumes), close;
# either every time a full handshake (`-new`) or resuming the first connection's session (`-reuse`:
# a TLS 1.3 ticket, still with an ECDHE exchange, or a TLS 1.2 session ticket), for TLS 1.3 and
# TLS 1.2. The server's utime+stime over the run is read from /proc; s_time is an independent
# client, so its CPU is not ringws's. Prints per round and kind: connections, how many of them
# resumed (s_time marks each), server CPU-µs per connection and connections per server
# CPU-second; then the median of each kind. Defaults: 5 s, 3 rounds.
set -euo pipefail

duration=5
rounds=3
while getopts "d:n:h" opt; do
    case $opt in
        d) duration=$OPTARG ;;
        n) rounds=$OPTARG ;;
        *) sed -n '2,16p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
bin=${1:-target/release/ringws}
command -v openssl >/dev/null || { echo "tls_handshakes.sh: openssl not found" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
tck=$(getconf CLK_TCK)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c 0 "$bin" serve --addr "127.0.0.1:$port" --workers 1 \
    --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" 2>"$work/server.log" &
pid=$!
for _ in $(seq 300); do
    grep -q "listening on" "$work/server.log" && break
    sleep 0.1
done
grep -q "listening on" "$work/server.log" || { cat "$work/server.log" >&2; exit 1; }

# One run: prints "connections resumed CPU-µs-per-connection connections-per-CPU-second".
run() {
    local mode=$1 version=$2 before after out
    before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    out=$(taskset -c 1 timeout $((duration + 30)) openssl s_time -connect "127.0.0.1:$port" \
        "$mode" "$version" -time "$duration" -www / 2>&1)
    after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    # s_time prints "N connections in Xs; ..." (the first line is the run that counts).
    python3 - "$before" "$after" "$tck" <<EOF
import re, sys
m = re.search(r"(\d+) connections in", """$out""")
n = int(m.group(1)) if m else 0
# One character per connection on lines of their own: "r" for a resumed session, "*" otherwise.
resumed = sum(line.count("r") for line in re.findall(r"^[r*t3]+$", """$out""", re.M))
us = (int(sys.argv[2]) - int(sys.argv[1])) * 1e6 / int(sys.argv[3])
print(n, resumed, f"{us / max(n, 1):.1f}", f"{n / max(us, 1) * 1e6:.0f}")
EOF
}

declare -A results
for round in $(seq "$rounds"); do
    for version in -tls1_3 -tls1_2; do
        for mode in -new -reuse; do
            read -r n resumed per rate < <(run "$mode" "$version")
            results["$version $mode"]+="$rate "
            printf 'round %d  %-7s %-6s %6d connections (%6d resumed)  %7s µs each  %6s per CPU-s\n' \
                "$round" "$version" "$mode" "$n" "$resumed" "$per" "$rate"
        done
    done
done
kill -INT "$pid"
wait "$pid" || true
for kind in "-tls1_3 -new" "-tls1_3 -reuse" "-tls1_2 -new" "-tls1_2 -reuse"; do
    printf 'median  %-14s %s connections per server CPU-second\n' "$kind" \
        "$(python3 -c "import statistics,sys; print(round(statistics.median(map(float, sys.argv[1].split()))))" "${results[$kind]}")"
done
