#!/usr/bin/env python3
"""Turns an EMBER_GUEST_PROFILE file (lines `cpu rip`, one sample per vCPU
every 2 ms of wall time) into a table of guest functions by share of samples.

usage: guest-profile.py PROFILE VMLINUX [--top N] [--cpu N] [--windows N]

--windows N splits each vCPU's samples into N equal spans of wall time and
prints the top functions of each (which phase of a boot costs what).

User-mode samples (RIP below the kernel half) count as [user]. Symbols come
from `nm -n VMLINUX`.
"""
import argparse
import bisect
import collections
import subprocess


def symbols(vmlinux):
    out = subprocess.run(["nm", "-n", vmlinux], check=True, capture_output=True, text=True).stdout
    addrs, names = [], []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            addrs.append(int(parts[0], 16))
            names.append(parts[2])
    return addrs, names


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("profile")
    ap.add_argument("vmlinux")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--cpu", type=int)
    ap.add_argument("--windows", type=int)
    args = ap.parse_args()
    addrs, names = symbols(args.vmlinux)
    if args.windows:
        return windows(args, addrs, names)
    counts = collections.Counter()
    total = 0
    with open(args.profile) as f:
        for line in f:
            cpu, rip = line.split()
            if args.cpu is not None and int(cpu) != args.cpu:
                continue
            rip = int(rip, 16)
            total += 1
            if rip < 0xFFFF800000000000:
                counts["[user]"] += 1
                continue
            i = bisect.bisect_right(addrs, rip) - 1
            counts[names[i] if i >= 0 else "[unknown]"] += 1
    print(f"{total} samples ({total * 2 / 1000:.1f} vCPU-seconds at 2 ms)")
    for name, n in counts.most_common(args.top):
        print(f"{100 * n / total:6.2f}%  {n * 2 / 1000:7.2f} s  {name}")


def name_of(rip, addrs, names):
    if rip < 0xFFFF800000000000:
        return "[user]"
    i = bisect.bisect_right(addrs, rip) - 1
    return names[i] if i >= 0 else "[unknown]"


def windows(args, addrs, names):
    per_cpu = collections.defaultdict(list)
    with open(args.profile) as f:
        for line in f:
            cpu, rip = line.split()
            if args.cpu is None or int(cpu) == args.cpu:
                per_cpu[cpu].append(name_of(int(rip, 16), addrs, names))
    top = min(args.top, 6)
    for cpu, samples in sorted(per_cpu.items()):
        n = len(samples)
        print(f"cpu {cpu}: {n} samples, {n * 2 / 1000:.1f} s")
        for w in range(args.windows):
            span = samples[w * n // args.windows:(w + 1) * n // args.windows]
            if not span:
                continue
            best = collections.Counter(span).most_common(top)
            shares = ", ".join(f"{name} {100 * k // len(span)}%" for name, k in best)
            print(f"  from {w * n // args.windows * 2 / 1000:6.1f} s: {shares}")


if __name__ == "__main__":
    main()
