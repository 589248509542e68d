#!/usr/bin/env bash
# Prints Ember's figures, side by side with QEMU where one is named.
# Usage: bench/run.sh [--quick]   (needs `make guest` and a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec python3 bench/bench.py "$@"
