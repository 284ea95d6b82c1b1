#!/usr/bin/env bash
# The performance issue's whole table in one command: ringws, fastwebsockets and tokio-tungstenite,
# interleaved per scenario, server CPU per message as the headline, upgrade latency under load, then
# ringws's idle memory per connection.
#
#   benches/compare/table.sh [--out DIR] [-- HARNESS_ARGS...]
#
# 1. echo:      100, 1,000 and 10,000 connections x 20 B, 1 KiB, 16 KiB and 64 KiB, one message in
#               flight per connection (DIR/echo: compare.md, compare.json, compare.svg);
# 2. pipelined: 100 connections x 20 B with 8 messages in flight (DIR/pipelined);
# 3. idle:      ringws's server memory per idle connection at 10,000 connections
#               (benches/idle_memory.sh, DIR/idle_memory.txt).
# HARNESS_ARGS go to both harness runs (e.g. `--baseline /tmp/ringws-before` or `--duration 3`).
# Takes about 25 minutes with the defaults. Results go to benches/compare/results/table unless
# --out says otherwise.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$here/results/table"
while (($#)); do
    case $1 in
        --out) out=$2; shift 2 ;;
        --) shift; break ;;
        -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "table.sh: unknown option $1 (harness options go after --)" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"

"$here/run.sh" --connections 100,1000,10000 --sizes 20,1024,16384,65536 --out "$out/echo" "$@"
"$here/run.sh" --connections 100 --sizes 20 --in-flight 8 --out "$out/pipelined" "$@"
"$repo/benches/idle_memory.sh" --connections 10000 | tee "$out/idle_memory.txt"
echo "table.sh: results in $out (echo/compare.md, pipelined/compare.md, idle_memory.txt)"
