#!/usr/bin/env python3
"""Ember benchmarks. Each figure is printed with how it was measured.

  start_to_first_output  process start -> first byte a tiny guest writes to COM1
                         (its first instruction), median of 20
  tiny_guest_wall        process start -> exit for a tiny guest that prints a
                         line and resets, median of 20
  vmm_overhead_rss       Ember's RSS minus the guest RAM it has touched
                         (1 vCPU, 128M), idle tiny guest and the kit at its prompt
  kvm_floor              bare kvm-ioctls: each step of the least a VM needs
                         (create, memory slot, irqchip, vCPU, run to hlt,
                         close), median of 20, and what a PIT adds
  create_destroy         VM create+destroy rate in one process (tiny guest)
  poweroff_to_exit       a tiny guest prints "ready" and powers off through ACPI
                         S5 with stdin an idle pipe (never written, never
                         closed): its last COM1 byte -> Ember's exit, median of 20
  sigterm_to_exit        the same with a guest that drains the FIFO and sleeps:
                         SIGTERM -> exit 143, median of 20
  linux_boot_to_shell    the kit kernel + initramfs, spawn -> shell prompt,
                         Ember and QEMU -M microvm with the same kernel,
                         initramfs and arguments, as a ratio
"""
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBER = os.path.join(ROOT, "target/release/ember")
KIT = os.path.join(ROOT, "target/guest")
QUICK = "--quick" in sys.argv

PRELUDE = open(os.path.join(ROOT, "tests/guests/prelude.S")).read()


def build_guest(name, body):
    d = tempfile.mkdtemp(prefix="ember-bench-")
    src, obj, elf = (os.path.join(d, name + s) for s in (".S", ".o", ".elf"))
    with open(src, "w") as f:
        f.write(PRELUDE + "\n" + body)
    subprocess.run(["as", "--64", "-o", obj, src], check=True)
    subprocess.run(["ld", "-m", "elf_x86_64", "--build-id=none", "-z", "max-page-size=4096",
                    "-e", "_start", "-Ttext=0x200000", "-o", elf, obj], check=True)
    return elf


HELLO = open(os.path.join(ROOT, "tests/guests/hello.S")).read()
IDLE = open(os.path.join(ROOT, "tests/guests/idle.S")).read()


def median_ms(samples):
    return statistics.median(samples) * 1000


def start_to_first_output(elf, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        p = subprocess.Popen([EMBER, "run", "--kernel", elf], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        p.stdout.read(1)
        out.append(time.perf_counter() - t0)
        p.wait()
    return out


def tiny_wall(elf, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([EMBER, "run", "--kernel", elf], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, check=True)
        out.append(time.perf_counter() - t0)
    return out


SLEEPER = open(os.path.join(ROOT, "tests/guests/rx_then.S")).read()


def idle_pipe_exit(elf, n, signal=None):
    """Seconds from the guest's "ready\n" (or from SIGTERM) to Ember's exit,
    with stdin a pipe this process holds open and never writes."""
    out = []
    for _ in range(n):
        p = subprocess.Popen([EMBER, "run", "--memory", "64M", "--kernel", elf], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert p.stdout.read(6) == b"ready\n"
        t0 = time.perf_counter()
        if signal is not None:
            p.send_signal(signal)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            out.append(float("inf"))
            continue
        out.append(time.perf_counter() - t0)
        p.stdin.close()
    return out


def rss_split(pid, guest_kib):
    """(total RSS, RSS of the guest RAM mapping) in KiB, from smaps."""
    total = guest = 0
    size = rss = 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                size = rss = 0
            elif line.startswith("Size:"):
                size = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
                total += rss
                if size == guest_kib:
                    guest += rss
    return total, guest


def wait_for(proc, pattern, timeout):
    buf = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 1)
        if r:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            if re.search(pattern, buf):
                return buf
    raise RuntimeError(f"no {pattern!r} within {timeout}s; got {buf[-300:]!r}")


def vmm_overhead(cmd, guest_mib, ready, settle=0.5):
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    try:
        wait_for(p, ready, 900)
        time.sleep(settle)
        total, guest = rss_split(p.pid, guest_mib * 1024)
        return total, guest
    finally:
        p.kill()
        p.wait()


def linux_boot(cmd):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    try:
        wait_for(p, rb"ember-kit: ready", 900)
        return time.perf_counter() - t0
    finally:
        p.kill()
        p.wait()


def main():
    hello = build_guest("hello", HELLO)
    idle = build_guest("idle", IDLE)
    n = 5 if QUICK else 20
    print(f"# Ember benchmarks ({'quick' if QUICK else 'full'}), host: {os.uname().release}")

    s = start_to_first_output(hello, n)
    print(f"start_to_first_output_ms  median {median_ms(s):.1f}  min {min(s)*1000:.1f}  max {max(s)*1000:.1f}  (n={n}; ember run --kernel hello.elf, spawn -> first COM1 byte)")
    s = tiny_wall(hello, n)
    print(f"tiny_guest_wall_ms        median {median_ms(s):.1f}  min {min(s)*1000:.1f}  max {max(s)*1000:.1f}  (n={n}; ember run --kernel hello.elf, spawn -> exit 0)")

    s = idle_pipe_exit(build_guest("poweroff", ".set THEN, 3\n" + SLEEPER), n)
    print(f"poweroff_to_exit_ms       median {median_ms(s):.2f}  min {min(s)*1000:.2f}  max {max(s)*1000:.2f}  (n={n}; stdin an idle pipe; guest's last COM1 byte -> exit 0)")
    s = idle_pipe_exit(build_guest("sleeper", ".set THEN, 2\n" + SLEEPER), n, signal=15)
    print(f"sigterm_to_exit_ms        median {median_ms(s):.2f}  min {min(s)*1000:.2f}  max {max(s)*1000:.2f}  (n={n}; stdin an idle pipe; SIGTERM -> exit 143)")

    # The KVM floor, step by step: what any VMM pays here before doing anything.
    subprocess.run(["cargo", "bench", "--quiet", "--bench", "floor", "--", str(n)], cwd=ROOT, check=True)

    vms = "100" if QUICK else "1000"
    subprocess.run(["cargo", "bench", "--quiet", "--bench", "lifecycle", "--", idle, vms], cwd=ROOT, check=True)

    total, guest = vmm_overhead([EMBER, "run", "--kernel", idle, "--memory", "128M"], 128, rb"ready")
    print(f"vmm_overhead_rss_mib      {(total - guest)/1024:.1f}  (idle tiny guest, 1 vCPU, 128M: RSS {total/1024:.1f} MiB - guest RAM touched {guest/1024:.1f} MiB)")

    if os.path.exists(os.path.join(KIT, "vmlinux")):
        total, guest = vmm_overhead([EMBER, "run", "--memory", "128M"], 128, rb"ember:[^\n]*# $")
        print(f"vmm_overhead_rss_mib_kit  {(total - guest)/1024:.1f}  (kit Linux at its prompt, 1 vCPU, 128M: RSS {total/1024:.1f} MiB - guest RAM touched {guest/1024:.1f} MiB)")

        # What Ember's command line becomes on this host (`ember run --verbose`
        # prints it), so that QEMU boots with the same arguments.
        verbose = subprocess.run([EMBER, "run", "--verbose", "--kernel", hello], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).stderr
        args = re.search(r"kernel command line: (.*)", verbose).group(1).strip()
        ember = [EMBER, "run", "--cpus", "2", "--memory", "256M", "--cmdline", "console=ttyS0"]
        qemu = ["qemu-system-x86_64", "-M", "microvm,isa-serial=on,acpi=on", "-enable-kvm",
                "-cpu", "host,-arch-capabilities,kvm-pv-ipi=off,kvm-pv-unhalt=off,kvm-pv-sched-yield=off,kvm-asyncpf=off,kvm-steal-time=off",
                "-smp", "2", "-m", "256", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
                "-kernel", os.path.join(KIT, "vmlinux"), "-initrd", os.path.join(KIT, "initramfs.cpio"),
                "-append", args]
        runs = 1 if QUICK else 3
        e, q = [], []
        for _ in range(runs):  # alternating, so that a change in host load hits both
            e.append(linux_boot(ember))
            q.append(linux_boot(qemu))
        em, qm = statistics.median(e), statistics.median(q)
        print(f"linux_boot_to_shell_s     ember {em:.1f}  qemu {qm:.1f}  ratio ember/qemu {em/qm:.2f}  (n={runs} each; kit vmlinux+initramfs, 2 vCPUs, 256M, same arguments; spawn -> 'ember-kit: ready' line; emulated guest kernel: only the ratio means anything)")
        print(f"#   ember runs: {', '.join(f'{x:.1f}' for x in e)}; qemu runs: {', '.join(f'{x:.1f}' for x in q)}")
        print(f"#   arguments: {args}")
        print("#   firecracker: " + ("not run: with 2 vCPUs it needs a CPU template clearing PV_SEND_IPI on this host"
                                     if shutil.which("firecracker") else "not on PATH; skipped"))
    else:
        print("# kit not built (make guest): Linux figures skipped")


if __name__ == "__main__":
    main()
