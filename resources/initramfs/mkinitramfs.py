#!/usr/bin/env python3
"""Builds the guest kit initramfs: a static busybox, its applet links, the
files under rootfs/, and /dev/console, as a newc cpio archive.

Written directly (no root needed for the device node, and byte-identical
for identical inputs: every mtime is 0, every owner root).

The archive is written uncompressed when OUTPUT does not end in .gz (the
kit's choice): on hosts that emulate the guest kernel, inflating a
compressed 2 MB archive took 10-17 s of boot, and even gzip with stored
blocks costs a CRC and two more copies of every byte (1 s more of guest
CPU than the bare archive, resources/kernel/BOOT-SPEED.md). With OUTPUT
ending in .gz it is gzip-wrapped with stored (level 0) deflate blocks.

Only a few applets get a link in /bin (LINKED): busybox's shell runs every
applet without one (Debian's busybox-static is built standalone and prefers
its applets, in `env` and `xargs` too). Each link is an entry the kernel
unpacks through four path walks, on an emulating host ~20 ms: the 269 links
of every applet took 5.3 s of a 36 s boot (unpack 8.9 s -> 3.6 s without
them, resources/kernel/BOOT-SPEED.md). `busybox --install -s` in the guest
makes them all.

usage: mkinitramfs.py BUSYBOX ROOTFS_DIR OUTPUT
"""
import gzip
import os
import stat
import subprocess
import sys


# Applets reached by path, not through the shell: /bin/sh for #! lines and
# system(3), true/false for an init or a test that runs one by path.
LINKED = ("false", "sh", "true")


def entry(name, mode, data=b"", rdev=(0, 0)):
    name_b = name.encode() + b"\0"
    fields = [
        0,  # ino (filled below)
        mode,
        0, 0,  # uid, gid
        1,  # nlink
        0,  # mtime
        len(data),
        0, 0,  # dev major/minor
        rdev[0], rdev[1],
        len(name_b),
        0,  # check
    ]
    return fields, name_b, data


def pad4(n):
    return (4 - n % 4) % 4


def archive(entries):
    out = bytearray()
    for ino, (fields, name_b, data) in enumerate(entries, start=1):
        fields[0] = ino
        out += b"070701" + b"".join(b"%08X" % f for f in fields)
        out += name_b + b"\0" * pad4(110 + len(name_b))
        out += data + b"\0" * pad4(len(data))
    trailer = entry("TRAILER!!!", 0)
    out += b"070701" + b"".join(b"%08X" % f for f in trailer[0]) + trailer[1]
    out += b"\0" * pad4(110 + len(trailer[1]))
    out += b"\0" * ((512 - len(out) % 512) % 512)
    return bytes(out)


def main():
    busybox, rootfs, output = sys.argv[1:4]
    applets = subprocess.run([busybox, "--list"], check=True,
                             capture_output=True, text=True).stdout.split()
    missing = set(LINKED) - set(applets)
    if missing:
        sys.exit(f"mkinitramfs: {busybox} has no applet {', '.join(sorted(missing))}")
    entries = []
    for d in ["bin", "dev", "etc", "proc", "sys", "tmp", "root", "mnt"]:
        entries.append(entry(d, stat.S_IFDIR | 0o755))
    entries.append(entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    with open(busybox, "rb") as f:
        entries.append(entry("bin/busybox", stat.S_IFREG | 0o755, f.read()))
    for a in LINKED:
        entries.append(entry("bin/" + a, stat.S_IFLNK | 0o777, b"busybox"))
    entries.append(entry("init", stat.S_IFLNK | 0o777, b"bin/busybox"))
    for top, dirs, files in os.walk(rootfs):
        dirs.sort()
        rel = os.path.relpath(top, rootfs)
        for d in dirs:
            path = os.path.normpath(os.path.join(rel, d))
            if path not in ("etc",):
                entries.append(entry(path, stat.S_IFDIR | 0o755))
        for name in sorted(files):
            src = os.path.join(top, name)
            mode = 0o755 if os.access(src, os.X_OK) else 0o644
            with open(src, "rb") as f:
                entries.append(entry(os.path.normpath(os.path.join(rel, name)),
                                     stat.S_IFREG | mode, f.read()))
    data = archive(entries)
    tmp = output + ".tmp"
    with open(tmp, "wb") as f:
        if output.endswith(".gz"):
            f.write(gzip.compress(data, compresslevel=0, mtime=0))
        else:
            f.write(data)
    os.replace(tmp, output)
    print(f"mkinitramfs: {output}: {len(entries)} entries, {len(data)} bytes")


if __name__ == "__main__":
    main()
