#!/usr/bin/env bash
# Fuzzes the parsers imapbak owns with cargo-fuzz (libFuzzer), N seconds per
# target (default 60), and prints the executions each target ran.
#
#   bash scripts/fuzz.sh                 # every target, 60 s each
#   bash scripts/fuzz.sh 300             # every target, 5 min each
#   bash scripts/fuzz.sh 120 journal     # only the named targets
#
# Not part of scripts/test.sh: CI stays fast, and the unit tests beside each
# parser keep one regression test per finding. The machine's toolchain is
# stable; cargo-fuzz needs nightly-only flags (-Z sanitizer), which
# RUSTC_BOOTSTRAP=1 unlocks on a stable compiler. The committed seeds in
# fuzz/corpus/<target>/ are read, never written: new inputs go to
# fuzz/found/<target>/ (ignored by git), and a crash lands in
# fuzz/artifacts/<target>/ with the command that replays it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
shift || true
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build
failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "found/$t" "corpus/$t"
    log="found/$t.log"
    echo "==> $t: ${seconds}s" >&2
    if cargo fuzz run "$t" "found/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
        tail -40 "$log" >&2
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    summary+=("$(printf '%-15s %-6s %12s execs in %ss' "$t" "$status" "${runs:-?}" "$seconds")")
done

printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing found a failure in: ${failed[*]} (inputs in fuzz/artifacts/, logs in fuzz/found/)" >&2
    exit 1
fi
