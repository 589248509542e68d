#!/usr/bin/env python3
"""A tiny guest's run split into phases, for Ember and for the peers that are
installed, from system-call timestamps (strace -f -ttt, with seccomp-bpf so
that untraced calls cost nothing):

  spawn -> KVM_CREATE_VM       process start, argument parsing, /dev/kvm
  KVM_CREATE_VM -> KVM_RUN     VM set-up: memory, kernel load, irqchip, vCPUs
  KVM_RUN -> first byte        the guest's first instruction to its first
                               COM1 byte reaching stdout
  last byte -> exit            the guest's end to the process's exit (the
                               VMM's teardown, VM close included if it waits)

The guest prints "ready\n" and ends: for Ember a 64-bit ELF that resets
through the i8042 (exit 0); for QEMU -M microvm a multiboot ELF that writes
isa-debug-exit (exit 1); Firecracker (--no-api, a config file) the same ELF
as Ember. A peer that is not installed is skipped with a note.

The KVM floor (cargo bench --bench floor) is printed beside it: what the
host's KVM costs for each phase at least. strace slows every traced call
and every thread start (it attaches to each new thread), so the traced
phases compare VMMs with each other, not with wall-clock figures; the two
untraced rows after them (spawn -> first byte, last byte -> exit, timed by
this script on the pipe) are what a caller sees.

usage: bench/phases.py [RUNS]   (default 20)
"""
import json
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
PRELUDE = open(os.path.join(ROOT, "tests/guests/prelude.S")).read()

EMBER_GUEST = """
        .globl _start
_start: lea msg(%rip), %rbx
        call puts
        mov $I8042_CMD, %dx
        mov $0xfe, %al
        out %al, (%dx)
        hlt
        PUTS_FN
msg:    .asciz "ready\\n"
"""

MULTIBOOT_GUEST = """
        .code32
        .text
        .align 4
        .long 0x1BADB002
        .long 0
        .long -(0x1BADB002)
        .globl _start
_start: mov $0x3f8, %dx
        mov $msg, %ebx
1:      movb (%ebx), %al
        test %al, %al
        jz 2f
        out %al, (%dx)
        inc %ebx
        jmp 1b
2:      xor %eax, %eax
        out %al, $0xf4
        hlt
msg:    .asciz "ready\\n"
"""

PHASES = ["spawn_to_create_vm", "create_vm_to_first_run", "first_run_to_first_byte", "last_byte_to_exit"]
LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")


def build(body, bits, d):
    src, obj, elf = (os.path.join(d, f"guest{bits}" + s) for s in (".S", ".o", ".elf"))
    with open(src, "w") as f:
        f.write((PRELUDE if bits == 64 else "") + body)
    subprocess.run(["as", f"--{bits}", "-o", obj, src], check=True)
    emul = "elf_x86_64" if bits == 64 else "elf_i386"
    text = "0x200000" if bits == 64 else "0x100000"
    subprocess.run(["ld", "-m", emul, "--build-id=none", "-z", "max-page-size=4096",
                    "-e", "_start", f"-Ttext={text}", "-o", elf, obj], check=True)
    return elf


def phases(cmd, trace):
    """Runs cmd under strace; returns the four phase lengths in seconds."""
    out = subprocess.run(["strace", "-f", "--seccomp-bpf", "-ttt", "-o", trace,
                          "-e", "trace=execve,ioctl,write,writev,exit_group"] + cmd,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, timeout=60)
    assert out.stdout == b"ready\n", f"{cmd[0]} printed {out.stdout!r}"
    spawn = create = run = first = last = end = None
    main = None
    for line in open(trace):
        m = LINE.match(line)
        if not m:
            continue
        pid, t, call = int(m.group(1)), float(m.group(2)), m.group(3)
        if main is None:
            main, spawn = pid, t
        if create is None and "KVM_CREATE_VM" in call:
            create = t
        elif run is None and "KVM_RUN" in call:
            run = t
        elif call.startswith(("write(1,", "writev(1,")):
            first = first or t
            last = t
        elif pid == main and call.startswith("+++ exited"):
            end = t
    return [create - spawn, run - create, first - run, end - last]


def untraced(cmd):
    """Spawn -> first stdout byte, and last byte ("\\n") -> exit, in seconds,
    without strace: the two ends a caller sees."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    first = p.stdout.read(1)
    t1 = time.perf_counter()
    rest = p.stdout.read(5)
    t2 = time.perf_counter()
    p.wait(timeout=60)
    t3 = time.perf_counter()
    assert first + rest == b"ready\n", f"{cmd[0]} printed {first + rest!r}"
    return [t1 - t0, t3 - t2]


def floor_figures(runs):
    out = subprocess.run(["cargo", "bench", "--quiet", "--bench", "floor", "--", str(runs)],
                         cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    steps = dict(re.findall(r"(\w+) (\d+\.\d+)", out.splitlines()[0].split("(")[0]))
    f = {k: float(v) for k, v in steps.items()}
    return [f["open"] + f["create_vm"], f["memory_slot"] + f["irqchip"] + f["vcpu"],
            f["run_to_exit"], f["close"]]


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    if not shutil.which("strace"):
        print("phases: strace is not installed (apt-get install strace); skipped")
        return
    d = tempfile.mkdtemp(prefix="ember-phases-")
    trace = os.path.join(d, "trace")
    vmms = [("ember", [EMBER, "run", "--memory", "64M", "--kernel", build(EMBER_GUEST, 64, d)])]
    qemu = shutil.which("qemu-system-x86_64")
    if qemu:
        vmms.append(("qemu", [qemu, "-M", "microvm,isa-serial=on", "-enable-kvm",
                              "-cpu", "host,-arch-capabilities", "-m", "64", "-display", "none",
                              "-nodefaults", "-serial", "stdio", "-no-reboot",
                              "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                              "-kernel", build(MULTIBOOT_GUEST, 32, d)]))
    fc = shutil.which("firecracker")
    if fc:
        # Firecracker loads the same 64-bit ELF as Ember and ends on the
        # i8042 reset too; configured from a file, without its API socket.
        cfg = os.path.join(d, "fc.json")
        with open(cfg, "w") as f:
            json.dump({"boot-source": {"kernel_image_path": vmms[0][1][-1], "boot_args": "console=ttyS0"},
                       "drives": [], "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}, f)
        vmms.append(("firecracker", [fc, "--no-api", "--config-file", cfg, "--level", "Error"]))
    print(f"# a tiny guest's run by phase, ms: median (min-max) of {runs}, under strace -f")
    print("%-24s" % "phase" + "".join("%-24s" % v for v, _ in vmms) + "kvm_floor")
    samples = {v: [phases(cmd, trace) for _ in range(runs)] for v, cmd in vmms}
    floor = floor_figures(runs)
    for i, p in enumerate(PHASES):
        row = "%-24s" % p
        for v, _ in vmms:
            s = [x[i] * 1000 for x in samples[v]]
            row += "%-24s" % f"{statistics.median(s):.2f} ({min(s):.2f}-{max(s):.2f})"
        print(row + f"{floor[i]:.2f}")
    print(f"# without strace, as a caller sees it: median (min-max) of {runs}")
    plain = {v: [untraced(cmd) for _ in range(runs)] for v, cmd in vmms}
    for i, p in enumerate(["spawn_to_first_byte", "last_byte_to_exit"]):
        row = "%-24s" % p
        for v, _ in vmms:
            s = [x[i] * 1000 for x in plain[v]]
            row += "%-24s" % f"{statistics.median(s):.2f} ({min(s):.2f}-{max(s):.2f})"
        print(row + f"{sum(floor[:3]) if i == 0 else floor[3]:.2f}")
    if not qemu:
        print("# qemu: qemu-system-x86_64 not installed; skipped")
    if not fc:
        print("# firecracker: not on PATH; skipped")
    shutil.rmtree(d)


if __name__ == "__main__":
    main()
