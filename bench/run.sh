#!/usr/bin/env bash
# Prints Ember's figures, side by side with QEMU where one is named.
# Usage: bench/run.sh [--quick]   (needs `make guest` and a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
python3 bench/bench.py "$@"
# Per phase, next to QEMU (and Firecracker where installed) and the KVM floor.
exec python3 bench/phases.py "$([ "${1:-}" = --quick ] && echo 5 || echo 20)"
