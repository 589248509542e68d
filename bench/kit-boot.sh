#!/usr/bin/env bash
# Times the guest kit's boot: spawn -> the `ember-kit: ready` line, with stdin
# an idle pipe, 2 vCPUs, 256M. usage: bench/kit-boot.sh [RUNS]
# EMBER, KERNEL and INITRD choose another build or kit (for an A/B against an
# older commit checked out in a worktree: EMBER=/wt/target/release/ember ...).
# CMDLINE replaces Ember's default guest arguments; LOG keeps the last
# run's console output in that file.
set -euo pipefail
cd "$(dirname "$0")/.."
ember=${EMBER:-target/release/ember}
kernel=${KERNEL:-target/guest/vmlinux}
initrd=${INITRD:-target/guest/initramfs.cpio}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
log=$dir/console
# stdin: a FIFO this script holds open for writing and never writes.
mkfifo "$dir/stdin"
exec 3<>"$dir/stdin"
for _ in $(seq "${1:-1}"); do
    : > "$log"
    start=$(date +%s.%N)
    timeout 600 "$ember" run --cpus 2 --memory 256M --kernel "$kernel" --initrd "$initrd" \
        ${CMDLINE:+--cmdline "$CMDLINE"} < "$dir/stdin" > "$log" 2>&1 &
    pid=$!
    until grep -q "ember-kit: ready" "$log"; do
        kill -0 "$pid" 2>/dev/null || { echo "kit-boot: ember ended before the ready line:" >&2; tail -5 "$log" >&2; exit 1; }
        sleep 0.2
    done
    end=$(date +%s.%N)
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    [ -z "${LOG:-}" ] || cp "$log" "$LOG"
    echo "kit_boot_to_ready_s  $(echo "$end - $start" | bc)  ($ember, $kernel, $initrd${CMDLINE:+, --cmdline \"$CMDLINE\"})"
done
