#!/usr/bin/env bash
# Runs the cargo-fuzz targets of ringws-protocol (protocol/fuzz) for a bounded time each:
#   scripts/fuzz.sh [SECONDS] [TARGET...]      (default: 30 s, every target, one after the other)
# Installs the nightly toolchain and cargo-fuzz first if they are missing (idempotent). Each target
# starts from its seeds (protocol/fuzz/seeds/<target>) plus the corpus it grew before
# (protocol/fuzz/corpus/<target>, git-ignored), built with optimizations, debug assertions and
# AddressSanitizer (cargo fuzz's defaults). Exits non-zero when a target crashes, fails an assertion,
# leaks or times out on an input; the input is saved under protocol/fuzz/artifacts/<target>/ and the
# end of libFuzzer's log is printed. Prints one line per target: executions, seconds, corpus size.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../protocol"

say() { printf 'fuzz.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

seconds=${1:-30}
[[ $seconds =~ ^[1-9][0-9]*$ ]] || die "SECONDS must be a positive integer, got '$seconds'"
shift || true

# ---- toolchain --------------------------------------------------------------------------------------
command -v rustup >/dev/null || die "rustup not found (the fuzz targets need the nightly toolchain)"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    say "installing the nightly toolchain (rustup, minimal profile)"
    rustup toolchain install nightly --profile minimal </dev/null || die "rustup toolchain install nightly failed"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz (cargo install --locked; a few minutes)"
    cargo install cargo-fuzz --locked </dev/null || die "cargo install cargo-fuzz failed"
fi

mapfile -t all < <(cargo +nightly fuzz list)
(( ${#all[@]} )) || die "cargo fuzz list found no targets"
targets=("$@")
(( ${#targets[@]} )) || targets=("${all[@]}")

# One build for all targets, so the time limits below are spent fuzzing.
say "building ${#all[@]} targets (nightly, release + debug assertions, AddressSanitizer)"
cargo +nightly fuzz build </dev/null

logs=fuzz/target/logs
mkdir -p "$logs"
for t in "${targets[@]}"; do
    [[ " ${all[*]} " == *" $t "* ]] || die "unknown target '$t' (targets: ${all[*]})"
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="$logs/$t.log"
    # -timeout: one input may take at most 10 s; -rss_limit_mb: the process stays under 2 GiB.
    # `timeout` bounds the whole run in case libFuzzer itself hangs (max_total_time plus the build
    # check and corpus loading).
    if ! timeout --kill-after=10 $((seconds + 120)) \
        cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        </dev/null >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        die "target '$t' failed (log: protocol/$log; input saved under protocol/fuzz/artifacts/$t/)"
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    printf 'fuzz %-10s %12s executions in %s s, corpus %s inputs: no crash\n' "$t" "${runs:-?}" "${secs:-?}" "$corpus"
done
