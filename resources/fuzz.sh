#!/usr/bin/env bash
# Builds every fuzz target (cargo-fuzz, nightly, AddressSanitizer) and runs
# each for SECONDS (default 600) from the seeds in fuzz/seeds/TARGET; new
# inputs go to a scratch corpus, crashes to fuzz/artifacts/TARGET.
# Usage: resources/fuzz.sh [SECONDS] [TARGET...]    (make fuzz FUZZ_SECONDS=N)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
shift || true

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz: no nightly toolchain (cargo-fuzz needs one): rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz from the crate registry"
    cargo +nightly install cargo-fuzz --locked --quiet
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi
cd fuzz
cargo +nightly fuzz build --sanitizer address
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "seeds/$t"
    echo "fuzz: $t for ${seconds}s"
    if ! cargo +nightly fuzz run --sanitizer address "$t" "$scratch/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$scratch/$t.log" 2>&1; then
        tail -40 "$scratch/$t.log" >&2
        echo "fuzz: $t failed; a crash's input is in fuzz/artifacts/$t" >&2
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$scratch/$t.log" || true
done
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no crash"
