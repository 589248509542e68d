#!/usr/bin/env bash
# Builds target/guest/initramfs.cpio (uncompressed: see mkinitramfs.py) from Debian's static busybox and
# resources/initramfs/rootfs. Takes well under a second; always rebuilt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../target/guest"
mkdir -p "$out"
busybox=/bin/busybox
if ! file_desc=$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null) || [[ "$file_desc" != *"ok installed"* ]]; then
    echo "build-initramfs: busybox-static is not installed (apt-get install busybox-static)" >&2
    exit 1
fi
python3 "$here/initramfs/mkinitramfs.py" "$busybox" "$here/initramfs/rootfs" "$out/initramfs.cpio"
