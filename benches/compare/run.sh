#!/usr/bin/env bash
# Builds ringws (main workspace) and the peers + harness (this workspace) in release mode, then runs the
# comparison. Every argument goes to the harness (`run.sh --help` lists them), for example a quick run:
#   benches/compare/run.sh --connections 100 --sizes 20 --duration 3 --out /tmp/compare
# or two ringws builds against each other (the current one and a saved earlier binary, as `ringws-before`):
#   benches/compare/run.sh --servers ringws,baseline --baseline /tmp/ringws-before --out /tmp/compare-ab
# or every server at a fixed message rate, 3 interleaved rounds, reported as medians:
#   benches/compare/run.sh --sizes 1024 --connections 100 --rate 40000 --repeat 3 --out /tmp/compare-rate
# Results go to benches/compare/results/ unless --out says otherwise.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

cargo build --release --manifest-path "$repo/Cargo.toml" --bin ringws
cargo build --release --manifest-path "$here/Cargo.toml"

# exec: the harness becomes this process, so Ctrl-C reaches it and it stops every server and load
# generator it started (each runs in a process group of its own).
exec "$here/target/release/compare" \
    --ringws "$repo/target/release/ringws" \
    --peers-dir "$here/target/release" \
    "$@"
