#!/usr/bin/env bash
# Builds the guest kit kernel: Debian's linux-source-6.1 + tinyconfig + ember.config
# + the kit's patches. Outputs target/guest/vmlinux and target/guest/bzImage.
#
# The build is cached by content: the key hashes the source package version, the
# config fragment, the patches and this script. A hit copies the cached kernel
# (a few ms); a miss builds it (5-8 minutes on 2 cores).
# Cache: ${EMBER_CACHE:-$HOME/.cache/ember}/kernel/<key>/
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out="$repo/target/guest"
tarball=/usr/src/linux-source-6.1.tar.xz
cache_root="${EMBER_CACHE:-$HOME/.cache/ember}/kernel"

if [ ! -f "$tarball" ]; then
    echo "build-kernel: $tarball is missing; install it with: apt-get install linux-source-6.1" >&2
    exit 1
fi

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( {
    echo "linux-source-6.1 $src_version"
    cat "$here/kernel/ember.config"
    cat "$here"/kernel/patches/*.patch
    cat "$0"
} | sha256sum | cut -c1-16)
cached="$cache_root/$key"

mkdir -p "$out"
if [ -f "$cached/vmlinux" ] && [ -f "$cached/bzImage" ]; then
    echo "build-kernel: cache hit $cached"
else
    echo "build-kernel: cache miss for key $key; building (5-8 minutes on 2 cores)"
    work=$(mktemp -d "${TMPDIR:-/var/tmp}/ember-kernel.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    tar -C "$work" -xf "$tarball"
    ksrc="$work/linux-source-6.1"
    for p in "$here"/kernel/patches/*.patch; do
        patch -d "$ksrc" -p1 --quiet --forward < "$p"
    done
    make -C "$ksrc" -s tinyconfig
    "$ksrc/scripts/kconfig/merge_config.sh" -m -O "$ksrc" "$ksrc/.config" "$here/kernel/ember.config" >/dev/null
    make -C "$ksrc" -s olddefconfig
    # Every fragment line must have survived olddefconfig (a renamed or
    # unsatisfiable option would silently vanish otherwise).
    missing=0
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=*) grep -qx "$line" "$ksrc/.config" || { echo "build-kernel: config did not take: $line" >&2; missing=1; } ;;
            "# CONFIG_"*" is not set") grep -qx "$line" "$ksrc/.config" || ! grep -q "^${line:2:-11}=" "$ksrc/.config" || { echo "build-kernel: config did not take: $line" >&2; missing=1; } ;;
        esac
    done < "$here/kernel/ember.config"
    [ "$missing" = 0 ] || exit 1
    make -C "$ksrc" -s -j"$(nproc)" vmlinux bzImage
    mkdir -p "$cached.tmp"
    cp "$ksrc/vmlinux" "$cached.tmp/vmlinux"
    cp "$ksrc/arch/x86/boot/bzImage" "$cached.tmp/bzImage"
    cp "$ksrc/.config" "$cached.tmp/config"
    rm -rf "$cached"
    mv "$cached.tmp" "$cached"
fi
cp "$cached/vmlinux" "$cached/bzImage" "$cached/config" "$out/"
echo "build-kernel: $out/vmlinux $out/bzImage"
