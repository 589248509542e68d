#!/usr/bin/env python3
"""Turns an EMBER_GUEST_PROFILE file (lines `cpu rip`, one sample per vCPU
every 2 ms of wall time) into a table of guest functions by share of samples.

usage: guest-profile.py PROFILE VMLINUX [--top N] [--cpu N]

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
    args = ap.parse_args()
    addrs, names = symbols(args.vmlinux)
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


if __name__ == "__main__":
    main()
