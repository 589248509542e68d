#!/usr/bin/env bash
# Installs the Debian 12 packages Ember's build, guest kit and tests need.
# Does nothing when they are all present. Usage: resources/install-deps.sh [--bench]
set -euo pipefail

packages=(
    build-essential      # gcc, make, and binutils (as, ld, objcopy) for tiny test guests
    bc bison flex libelf-dev libssl-dev lz4 xz-utils patch perl   # kernel build
    linux-source-6.1     # the guest kit kernel's source
    busybox-static       # the guest kit's user space
    python3              # initramfs builder
    e2fsprogs            # ext4 images for the disk tests (mkfs.ext4, debugfs)
    iproute2             # network namespace and TAP for the net test
    curl                 # the API tests drive the socket as a user would
)
if [ "${1:-}" = "--bench" ]; then
    packages+=(qemu-system-x86 hyperfine strace)   # the peer VMM, a timer, and system-call timestamps (bench/phases.py)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: cargo is missing; install Rust 1.85 or newer (rustup) and retry" >&2
    exit 1
fi
