#!/usr/bin/env bash
# Builds target/guest/initramfs.cpio (uncompressed: see mkinitramfs.py) from Debian's static busybox
# and resources/initramfs/rootfs, and target/guest/initramfs-test.cpio, the same plus
# /bin/ember-regcheck (resources/initramfs/regcheck.c, a 700 KB static check the Linux tier
# runs): kept out of the kit a user boots, where its 700 KB cost ~0.9 s of unpacking on an
# emulating host. Takes about a second; always rebuilt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../target/guest"
mkdir -p "$out"
busybox=/bin/busybox
if ! file_desc=$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null) || [[ "$file_desc" != *"ok installed"* ]]; then
    echo "build-initramfs: busybox-static is not installed (apt-get install busybox-static)" >&2
    exit 1
fi
stage=$(mktemp -d "${TMPDIR:-/tmp}/ember-initramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT
cp -a "$here/initramfs/rootfs/." "$stage/"
mkdir -p "$stage/bin"
python3 "$here/initramfs/mkinitramfs.py" "$busybox" "$stage" "$out/initramfs.cpio"
# No -mavx: only the check's inline assembly uses YMM, and only where glibc
# says AVX is on, so the binary runs on any x86-64 CPU. Static glibc, as
# busybox: it asks glibc's own view of AVX (which GLIBC_TUNABLES changes).
gcc -O2 -static -s -Wall -Werror -o "$stage/bin/ember-regcheck" "$here/initramfs/regcheck.c"
python3 "$here/initramfs/mkinitramfs.py" "$busybox" "$stage" "$out/initramfs-test.cpio"
