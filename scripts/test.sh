#!/usr/bin/env bash
# The one command that runs ringws's whole test suite on a fresh machine:
#   1. the Python venv for the interop client (tests/interop/.venv, from requirements.txt),
#   2. the Node packages for the other interop client (npm ci in tests/interop/node),
#   3. every Rust test of the workspace (unit, integration, interop, benches in test mode), then doc tests.
# Steps 1 and 2 are skipped when what is installed matches the pinned files. Exits non-zero on any failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'test.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

interop=tests/interop

# ---- Python interop client -------------------------------------------------------------------------
venv="$interop/.venv"
requirements="$interop/python/requirements.txt"
python_stamp="$venv/.requirements.sha256"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ ! -x "$venv/bin/python" ]] || [[ "$(cat "$python_stamp" 2>/dev/null)" != "$want" ]]; then
    command -v python3 >/dev/null || die "python3 not found (Debian: apt-get install python3 python3-venv)"
    say "creating the Python venv in $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" \
        || die "pip install -r $requirements failed"
    echo "$want" >"$python_stamp"
fi

# ---- Node interop client ---------------------------------------------------------------------------
node_dir="$interop/node"
node_stamp="$node_dir/node_modules/.ringws-lock.sha256"
want=$(cat "$node_dir/package.json" "$node_dir/package-lock.json" | sha256sum | cut -d' ' -f1)
if [[ "$(cat "$node_stamp" 2>/dev/null)" != "$want" ]]; then
    command -v node >/dev/null || die "node not found (Debian: apt-get install nodejs npm)"
    command -v npm >/dev/null || die "npm not found (Debian: apt-get install npm)"
    say "installing the Node packages in $node_dir (npm ci)"
    (cd "$node_dir" && npm ci --silent --no-audit --no-fund) || die "npm ci failed in $node_dir"
    echo "$want" >"$node_stamp"
fi

# ---- Browser tests (later) -------------------------------------------------------------------------
# Hook for the browser interop tests: install Debian's chromium here when they land, e.g.
#   command -v chromium >/dev/null || die "chromium not found (apt-get install chromium)"

# ---- Rust ------------------------------------------------------------------------------------------
# 1,000 concurrent clients need ~2,000 descriptors between the test and the server it spawns.
if (( $(ulimit -n) < 4096 )); then
    ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi

cargo test --workspace --all-targets
cargo test --doc --workspace
