#!/usr/bin/env python3
"""Container runs: `ember run --rootfs R -- CMD` wall time by start path and
its parts, start-up with 10 files vs 100,000 files in the root, and the
throughput of CMD's stdout and of a 9P volume.

Usage: bench/container.py [RUNS] [MIB]   (defaults 3 and 8; needs root, KVM,
the kit kernel and target/release/ember; busybox-static for the root)

On a host whose KVM emulates guest kernel code (kvm_pvm) every figure here
is dominated by that emulation: compare them with each other, not with a
hardware host. Peers (podman + crun/krun) are not installed here: skipped.
"""
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBER = os.path.join(ROOT, "target/release/ember")
KERNEL = os.path.join(ROOT, "target/guest/vmlinux")


def rootfs(at, extra_files=0):
    os.makedirs(os.path.join(at, "bin"))
    shutil.copy("/bin/busybox", os.path.join(at, "bin/busybox"))
    for a in ["sh", "cat", "head", "true"]:
        os.symlink("busybox", os.path.join(at, "bin", a))
    if extra_files:
        many = os.path.join(at, "many")
        os.makedirs(many)
        for i in range(extra_files):
            open(os.path.join(many, f"f{i}"), "w").close()
    return at


def run(args, stdout=subprocess.DEVNULL):
    start = time.monotonic()
    p = subprocess.run([EMBER, "run", "--kernel", KERNEL] + args,
                       stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE)
    wall = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"ember run {' '.join(args)}: exit {p.returncode}: {p.stderr.decode()[-500:]}")
    return wall, p


def median(xs):
    return f"{statistics.median(xs):.2f} s (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    tmp = tempfile.mkdtemp(prefix="ember-bench-container-")
    try:
        small = rootfs(os.path.join(tmp, "small"))
        big = rootfs(os.path.join(tmp, "big"), 100_000)
        vol = os.path.join(tmp, "vol")
        os.makedirs(vol)
        with open(os.path.join(vol, "data"), "wb") as f:
            f.write(os.urandom(mib << 20))
        true = ["--", "/bin/busybox", "true"]
        # The first run makes the template if there is none (one boot).
        first, _ = run(["--rootfs", small] + true)
        print(f"first run (makes the template if none)  {first:.2f} s")
        t_small = [run(["--rootfs", small] + true)[0] for _ in range(runs)]
        t_big = [run(["--rootfs", big] + true)[0] for _ in range(runs)]
        print(f"template restore, /bin/true, 10 files      {median(t_small)}")
        print(f"template restore, /bin/true, 100000 files  {median(t_big)}")
        log = os.path.join(tmp, "console.log")
        boot, _ = run(["--boot", "--rootfs", small, "--console-log", log,
                       "--cmdline", "loglevel=7"] + true)
        stamps = {}
        for line in open(log, errors="replace"):
            m = re.match(r"\[\s*([0-9.]+)\] (.*)", line)
            if not m:
                continue
            t, what = float(m.group(1)), m.group(2)
            for key, pat in [("init", "Run /init"), ("mount", "ember-init: mounting"),
                             ("cmd", "ember-init: starting CMD"), ("end", "ember-init: CMD ended"),
                             ("off", "reboot: Power down")]:
                if pat in what:
                    stamps[key] = t
        print(f"boot, /bin/true                            {boot:.2f} s wall")
        if len(stamps) == 5:
            print(f"  guest clock: kernel to init {stamps['init']:.2f} s, init to mounting "
                  f"{stamps['mount'] - stamps['init']:.2f} s, mounting {stamps['cmd'] - stamps['mount']:.2f} s, "
                  f"CMD {stamps['end'] - stamps['cmd']:.2f} s, CMD end to power-off "
                  f"{stamps['off'] - stamps['end']:.2f} s; the rest of the wall time is the kernel "
                  f"before its clock starts, Ember's set-up and exit")
        base, _ = run(["--rootfs", small, "-v", f"{vol}:/v"] + true)
        t_9p, _ = run(["--rootfs", small, "-v", f"{vol}:/v", "--", "/bin/sh", "-c", "cat /v/data > /dev/null"])
        t_out, p = run(["--rootfs", small, "--", "/bin/busybox", "head", "-c", str(mib << 20), "/dev/zero"],
                       stdout=subprocess.PIPE)
        assert len(p.stdout) == mib << 20, len(p.stdout)
        print(f"9P volume read, {mib} MiB to /dev/null       {mib / max(t_9p - base, 1e-3):.2f} MiB/s "
              f"({t_9p:.2f} s run, {base:.2f} s without the read)")
        print(f"CMD stdout to Ember's, {mib} MiB             {mib / max(t_out - t_small[0], 1e-3):.2f} MiB/s "
              f"({t_out:.2f} s run)")
        print("peers: podman + crun/krun not installed here; skipped")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
