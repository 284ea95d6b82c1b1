#!/usr/bin/env bash
# The one command that runs ringws's whole test suite on a fresh machine:
#   1. the Python venv for the interop clients and kosoku, the Autobahn case-file runner
#      (tests/interop/.venv, from requirements.txt),
#   2. the Node packages for the other interop client (npm ci in tests/interop/node),
#   2b. Debian's chromium (the browser test of the feed page), shellcheck (tests/tuning.rs lints the
#       tuning scripts with it), prometheus (promtool and a Prometheus server for tests/ops.rs),
#       haproxy (tests/ops.rs drains a backend behind it; tests/cluster.rs balances nodes with it),
#       nats-server, redis-server and nginx (tests/cluster.rs and tests/deploy.rs), with apt-get as
#       root if missing,
#   3. every Rust test of the workspace (unit, integration, interop, benches in test mode), then doc tests.
#      As root this includes the tests marked #[ignore = "needs root ..."] (sysctl writes, TCP_REPAIR,
#      mount namespaces, other users); without root they are listed at the end as not run. Tests named
#      measurement_* are measurements, not checks, and are never run here.
# Steps 1 and 2 are skipped when what is installed matches the pinned files, 2b when the tools are
# there. Exits non-zero on any failure.
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
# kosoku's copy of Autobahn's case 12/13 file needs one Python 3 fix (idempotent; see the script).
"$venv/bin/python" "$interop/python/patch_kosoku.py" || die "patching kosoku failed"

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

# ---- System tools -----------------------------------------------------------------------------------
# tests/browser.rs loads the feed's live page in Debian's headless chromium (driven over DevTools);
# tests/tuning.rs runs shellcheck on the tuning scripts (and fails without it); tests/ops.rs runs
# promtool and a Prometheus server (package prometheus) and HAProxy (package haproxy, in /usr/sbin,
# which is not on every user's PATH).
is_root=false
[[ $(id -u) -eq 0 ]] && is_root=true
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v shellcheck >/dev/null || missing+=(shellcheck)
{ command -v prometheus && command -v promtool; } >/dev/null || missing+=(prometheus)
# tests/cluster.rs runs real brokers and a load balancer in front of several nodes, tests/deploy.rs
# checks deploy/ with the tools that read it. Some live in /usr/sbin, often not on a user's PATH.
has() { command -v "$1" >/dev/null || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]]; }
has haproxy || missing+=(haproxy)
has nats-server || missing+=(nats-server)
has redis-server || missing+=(redis-server)
has nginx || missing+=(nginx)
if ((${#missing[@]})); then
    if $is_root && command -v apt-get >/dev/null; then
        say "installing ${missing[*]} for the tests (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null \
            || die "apt-get install ${missing[*]} failed"
    else
        die "${missing[*]} not found (Debian, as root: apt-get install ${missing[*]})"
    fi
fi

# ---- Rust ------------------------------------------------------------------------------------------
# 1,000 concurrent clients need ~2,000 descriptors between the test and the server it spawns.
if (( $(ulimit -n) < 4096 )); then
    ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi

# The tests marked #[ignore = "needs root ..."], as "FILE: NAME" lines (the awk program is quoted on
# purpose: $0 is awk's).
# shellcheck disable=SC2016
root_only=$(find tests engine protocol src examples -name '*.rs' -not -path '*/target/*' -print0 2>/dev/null \
    | sort -z \
    | xargs -0 awk '/^[ \t]*#\[ignore = "needs root/ { want = 1; next }
        want && match($0, /fn [a-z0-9_]+/) { print FILENAME ": " substr($0, RSTART + 3, RLENGTH - 3); want = 0 }')
root_count=$(grep -c . <<<"$root_only" || true)

# Everything but the benches, with the root-only tests when root. The criterion benches (harness =
# false) run in test mode in a second call: criterion 0.5 refuses libtest's --include-ignored and --skip.
# `--bench '*'` selects the bench targets only (`--benches` would run the libraries' tests again).
if $is_root; then
    cargo test --workspace --lib --bins --tests --examples -- --include-ignored --skip measurement_
else
    cargo test --workspace --lib --bins --tests --examples
fi
cargo test --workspace --bench '*'
cargo test --doc --workspace

if $is_root; then
    say "the $root_count root-only tests ran too (as root)"
elif ((root_count)); then
    say "not run: needs root: $root_count tests (run scripts/test.sh as root to include them):"
    while IFS= read -r test; do
        printf '    %s\n' "$test" >&2
    done <<<"$root_only"
fi
