#!/usr/bin/env python3
"""Time from launch to first output byte, and to exit, for several sandbox
commands, interleaved round-robin so machine noise hits all of them alike.

Usage: measure.py ROUNDS NAME=COMMAND... (COMMAND is run by /bin/sh -c)
Prints one JSON object per command with median and p95 in milliseconds, then
one per command after the first with the per-round ratio of its time to exit to
the first command's in the same round (median and the middle 80%): pairing
within a round cancels the slow drift of a noisy machine. The order of the
commands is reversed every other round so neither side always runs warm.
"""
import json, os, statistics, subprocess, sys, time


def once(cmd):
    t0 = time.perf_counter()
    p = subprocess.Popen(["/bin/sh", "-c", "exec " + cmd], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    first = p.stdout.read(1)
    t1 = time.perf_counter()
    p.stdout.read()
    p.wait()
    t2 = time.perf_counter()
    if not first or p.returncode != 0:
        raise SystemExit(f"{cmd!r} failed (exit {p.returncode}, output {first!r})")
    return (t1 - t0) * 1000, (t2 - t0) * 1000


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main():
    rounds = int(sys.argv[1])
    cmds = [a.split("=", 1) for a in sys.argv[2:]]
    first = {n: [] for n, _ in cmds}
    total = {n: [] for n, _ in cmds}
    for _, c in cmds:  # warm caches once
        once(c)
    for r in range(rounds):
        for n, c in (cmds if r % 2 == 0 else cmds[::-1]):
            f, t = once(c)
            first[n].append(f)
            total[n].append(t)
    for n, c in cmds:
        print(json.dumps({
            "name": n, "command": c, "rounds": rounds,
            "first_output_median_ms": round(statistics.median(first[n]), 2),
            "first_output_p95_ms": round(pct(first[n], 0.95), 2),
            "exit_median_ms": round(statistics.median(total[n]), 2),
            "exit_p95_ms": round(pct(total[n], 0.95), 2),
            "exit_ms": [round(x, 1) for x in total[n]],
        }))
    base = cmds[0][0]
    for n, _ in cmds[1:]:
        ratios = [t / b for t, b in zip(total[n], total[base])]
        print(json.dumps({
            "ratio": f"{n}/{base}", "rounds": rounds,
            "exit_ratio_median": round(statistics.median(ratios), 4),
            "exit_ratio_p10": round(pct(ratios, 0.10), 4),
            "exit_ratio_p90": round(pct(ratios, 0.90), 4),
        }))


main()
