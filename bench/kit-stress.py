#!/usr/bin/env python3
"""The guest kit's exec stress at full count: boots the kit, runs ROUNDS
rounds of a shell pipeline of static busybox applets that use thread-local
storage (`echo | grep -o | sed | md5sum`: 3 fork+execs and 2 forks a round), checks each
round's answer, and counts crash lines on the console (segfault at, general
protection fault, traps:, BUG:, Oops, WARNING:).

usage: kit-stress.py [--cpus N] [--rounds R] [--busy]
  --busy  keeps every host core busy with a spinning process meanwhile

Prints one line: vCPUs, busy host or not, execs, wrong answers, crash lines,
guest seconds. The Linux tier runs a shorter stress in tests/linux_boot.rs.
"""
import argparse
import os
import re
import select
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBER = os.path.join(ROOT, "target/release/ember")
PROMPT = rb"ember:[^\n]*# (?:\x1b\[6n)?$"
CRASH = re.compile(rb"segfault at|general protection fault|traps:|BUG:|Oops|WARNING:")
ROUND = ('r=$(echo hello world | grep -o wor | sed s/o/0/ | md5sum); '
         '[ "$r" = "$want" ] || { bad=$((bad+1)); echo "WRONG round $i: [$r]"; }')


def read_until(p, pattern, timeout, buf):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r, _, _ = select.select([p.stdout], [], [], 1)
        if r:
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            m = re.search(pattern, buf, re.M)
            if m:
                return buf, m
    raise RuntimeError(f"no {pattern!r} within {timeout}s; got {buf[-400:]!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=667)
    ap.add_argument("--busy", action="store_true")
    args = ap.parse_args()
    spinners = []
    if args.busy:
        spinners = [subprocess.Popen(["sh", "-c", "while :; do :; done"])
                    for _ in range(os.cpu_count() or 1)]
    p = subprocess.Popen([EMBER, "run", "--cpus", str(args.cpus)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    try:
        buf, _ = read_until(p, PROMPT, 1800, b"")
        # "start42" is what the shell prints, not what an echo of the
        # typed line shows (with stdin a pipe there is no echo: the
        # output follows the prompt).
        p.stdin.write(b"want=$(echo w0r | md5sum); bad=0; i=0; echo start$((6*7))\n")
        p.stdin.flush()
        buf, _ = read_until(p, rb"start42\r?\n", 60, buf)
        t0 = time.time()
        loop = (f"while [ $i -lt {args.rounds} ]; do {ROUND}; i=$((i+1)); done; "
                'echo "done rounds=$((i)) bad=$((bad))"\n')
        p.stdin.write(loop.encode())
        p.stdin.flush()
        buf, m = read_until(p, rb"done rounds=(\d+) bad=(\d+)", 36000, buf)
        secs = time.time() - t0
        crashes = CRASH.findall(buf)
        print(f"kit_exec_stress  cpus={args.cpus} busy_host={'yes' if args.busy else 'no'}  "
              f"execs={3 * int(m.group(1))}  wrong={m.group(2).decode()}  crash_lines={len(crashes)}  "
              f"seconds={secs:.0f}  ({secs / args.rounds:.2f} s/round)")
        for line in buf.splitlines():
            if CRASH.search(line) or line.startswith(b"WRONG"):
                print("#  ", line.decode(errors="replace"))
    finally:
        p.kill()
        p.wait()
        for s in spinners:
            s.kill()
            s.wait()


if __name__ == "__main__":
    main()
