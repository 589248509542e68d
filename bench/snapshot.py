#!/usr/bin/env python3
"""Snapshots of the guest kit at its prompt, next to a full boot of it.

For each guest size: boot the kit (spawn -> prompt, seconds), snapshot it
with `ember snapshot --stop` (time, state and memory file sizes, logical and
allocated), then restore it RUNS times, timing from the spawn of
`ember restore`:
  -> vCPUs running     Ember's "restored ...: N vCPU threads started" line
                       on stderr (--verbose), read as it arrives
  -> shell answer      the restored shell's output for `echo $((40+2))OK`,
                       typed the moment the vCPUs run
Medians with min-max. The booted shell's answer to the same line is timed
too: what an answer costs this guest at all. Firecracker's /snapshot/load
is not measured here (it is not installed on these machines).

A tiny guest is then snapshotted at 256M, 1G and 4G of RAM and restored
RUNS times each: restore -> vCPUs running as RAM grows, without a kit boot
per size. SIZES empty ("") skips the kit.

usage: bench/snapshot.py [RUNS] [SIZES]   (default 10 256M,1G)
CMDLINE replaces Ember's default guest arguments for the kit's boot (e.g.
"console=ttyS0 EMBER_CONSOLE=terminal" keeps the echo and line editing that
a console driven by a script turns off).
"""
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBER = os.path.join(ROOT, "target/release/ember")
PROMPT = b"ember:/# "


def read_until(proc_out, needle, limit, buf=b""):
    """Reads `proc_out` until `needle` shows up; returns (time seen, buffer)."""
    deadline = time.monotonic() + limit
    fd = proc_out.fileno()
    while needle not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{needle!r} not seen in {limit} s; got {buf[-300:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError(f"EOF before {needle!r}; got {buf[-300:]!r}")
            buf += chunk
    return time.monotonic(), buf


def boot_and_snapshot(tmp, size):
    sock = os.path.join(tmp, f"api-{size}.sock")
    state = os.path.join(tmp, f"state-{size}")
    mem = os.path.join(tmp, f"mem-{size}")
    start = time.monotonic()
    vm = subprocess.Popen(
        [EMBER, "run", "--memory", size, "--api-sock", sock]
        + (["--cmdline", os.environ["CMDLINE"]] if os.environ.get("CMDLINE") else []),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    seen, buf = read_until(vm.stdout, PROMPT, 600)
    boot = seen - start
    # Let the shell settle at its prompt.
    time.sleep(1)
    # The same question to the booted shell: what an answer costs this
    # guest at all, restore or not.
    answers = []
    for i in range(5):
        t = time.monotonic()
        vm.stdin.write(f"echo $(({40 + i}+2))OK\n".encode())
        vm.stdin.flush()
        seen, buf = read_until(vm.stdout, f"{42 + i}OK".encode(), 30, buf)
        answers.append((seen - t) * 1000)
        time.sleep(0.2)
    t0 = time.monotonic()
    subprocess.run([EMBER, "snapshot", "--api-sock", sock, state, mem, "--stop"], check=True)
    took = time.monotonic() - t0
    vm.wait(timeout=30)
    st = os.stat(mem)
    return boot, answers, took, state, mem, os.path.getsize(state), st.st_size, st.st_blocks * 512


def restore_once(state, mem):
    start = time.monotonic()
    p = subprocess.Popen(
        [EMBER, "--verbose", "restore", state, mem],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    running, _ = read_until(p.stderr, b"vCPU threads started", 30)
    p.stdin.write(b"echo $((40+2))OK\n")
    p.stdin.flush()
    answered, _ = read_until(p.stdout, b"42OK", 30)
    p.stdin.write(b"poweroff\n")
    p.stdin.flush()
    try:
        p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
    return (running - start) * 1000, (answered - start) * 1000


def tiny_guest(tmp):
    """tests/guests/counter.S, assembled and linked as the tests do."""
    prelude = open(os.path.join(ROOT, "tests/guests/prelude.S")).read()
    body = open(os.path.join(ROOT, "tests/guests/counter.S")).read()
    src, obj, elf = (os.path.join(tmp, n) for n in ("counter.S", "counter.o", "counter.elf"))
    with open(src, "w") as f:
        f.write(prelude + "\n" + body)
    subprocess.run(["as", "--64", "-o", obj, src], check=True)
    subprocess.run(["ld", "-m", "elf_x86_64", "--build-id=none", "-z", "max-page-size=4096",
                    "-e", "_start", "-Ttext=0x200000", "-o", elf, obj], check=True)
    return elf


def tiny_snapshot(tmp, elf, size):
    """Boots the counter guest with `size` of RAM and snapshots it."""
    sock = os.path.join(tmp, f"tiny-{size}.sock")
    state, mem = os.path.join(tmp, f"tiny-state-{size}"), os.path.join(tmp, f"tiny-mem-{size}")
    vm = subprocess.Popen([EMBER, "run", "--memory", size, "--kernel", elf, "--api-sock", sock],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    read_until(vm.stdout, b"n=", 60)
    subprocess.run([EMBER, "snapshot", "--api-sock", sock, state, mem, "--stop"], check=True)
    vm.wait(timeout=30)
    return state, mem


def tiny_restore(state, mem):
    """Spawn -> vCPUs running of one restore of a tiny guest (ms)."""
    start = time.monotonic()
    p = subprocess.Popen([EMBER, "--verbose", "restore", state, mem], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    running, _ = read_until(p.stderr, b"vCPU threads started", 30)
    read_until(p.stdout, b"n=", 30)
    p.kill()
    p.communicate()
    return (running - start) * 1000


def tiny_restores(tmp, sizes, runs):
    """Restore -> vCPUs running for a tiny guest of each size of RAM, the
    sizes taken in turn so that the machine's drift hits them alike."""
    elf = tiny_guest(tmp)
    snaps = {size: tiny_snapshot(tmp, elf, size) for size in sizes}
    times = {size: [] for size in sizes}
    for _ in range(runs):
        for size in sizes:
            times[size].append(tiny_restore(*snaps[size]))
    for state, mem in snaps.values():
        os.unlink(state)
        os.unlink(mem)
    return times


def fmt(xs, unit):
    return f"{statistics.median(xs):8.2f} {unit} ({min(xs):.2f}-{max(xs):.2f})"


def human(n):
    for unit in ["B", "KiB", "MiB", "GiB"]:
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    sizes = [s for s in (sys.argv[2] if len(sys.argv) > 2 else "256M,1G").split(",") if s]
    tmp = tempfile.mkdtemp(prefix="ember-snapbench-")
    try:
        print(f"# the guest kit at its prompt; {runs} restores per size; medians (min-max)")
        for size in sizes:
            boot, answers, took, state, mem, sbytes, mlen, malloc = boot_and_snapshot(tmp, size)
            rows = [restore_once(state, mem) for _ in range(runs)]
            print(f"\n## {size} guest")
            print(f"  full boot, spawn -> prompt        {boot:8.2f} s")
            print(f"  booted shell, typed -> answer    {fmt(answers, 'ms')}")
            print(f"  ember snapshot (pause, write, stop) {took * 1000:8.2f} ms")
            print(f"  state file                         {human(sbytes)}")
            print(f"  memory file                        {human(mlen)} ({human(malloc)} allocated)")
            print(f"  ember restore -> vCPUs running   {fmt([r[0] for r in rows], 'ms')}")
            print(f"  ember restore -> shell answer    {fmt([r[1] for r in rows], 'ms')}")
        print(f"\n## tiny guest (tests/guests/counter.S), {runs} restores per size")
        tiny = tiny_restores(tmp, ["256M", "1G", "4G"], runs)
        for size, times in tiny.items():
            print(f"  {size:>4}: ember restore -> vCPUs running {fmt(times, 'ms')}")
        where = "installed" if shutil.which("firecracker") else "not installed"
        print(f"\nFirecracker's /snapshot/load: not measured by this script "
              f"(Firecracker is {where} here)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
