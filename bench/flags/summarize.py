#!/usr/bin/python3
"""Medians per measurement from a bench/flags results file, as markdown tables,
with the ratio to Unleash Edge run in the same run (rows named SET-edge-KIND)
and to Edge's published requests per CPU.

The published figures are from Unleash Edge's docs/benchmarking.md
(github.com/Unleash/unleash-edge, `hey -z 10s` against `docker run --cpus=N`,
other hardware): a 5-flag set (about 2 kB) and the Unleash demo instance's
350 flags / 200 strategies (about 100 kB); the frontend API without a context.
"""

import json
import statistics
import sys
from collections import defaultdict

# (set, endpoint) -> (req/s with 1 CPU, req/s with 8 CPUs), Edge's tables.
EDGE = {
    ("small", "client"): (32_360, 129_381),
    ("large", "client"): (3_236, 23_207),
    ("small", "frontend"): (39_000, 141_090),
    ("large", "frontend"): (6_900, 40_921),
}

# The version bench/flags/run builds and runs as the peer.
EDGE_HERE = "20.1.0"

rows = defaultdict(list)
noisy = defaultdict(list)
for line in open(sys.argv[1]):
    d = json.loads(line)
    (noisy if d.get("noisy") else rows)[d["name"]].append(d)
# A measurement with no quiet run at all keeps its noisy ones (marked below).
for name, runs in noisy.items():
    if name not in rows:
        rows[name] = runs


def med(name, *path):
    vals = []
    for r in rows.get(name, []):
        for key in path:
            r = r.get(key) if isinstance(r, dict) else None
        if isinstance(r, (int, float)):
            vals.append(r)
    return statistics.median(vals) if vals else float("nan")


def fmt(x, digits=0):
    return "–" if x != x else f"{x:,.{digits}f}"


for set_ in ("small", "large"):
    sizes = rows.get(f"{set_}-sizes", [{}])[0]
    if sizes:
        print(f"\n{set_}: {sizes.get('flags')} flags, client API body "
              f"{sizes.get('client_bytes', 0) / 1000:.1f} kB, frontend answer "
              f"{sizes.get('frontend_bytes', 0) / 1000:.1f} kB "
              f"({sizes.get('frontend_enabled')} flags on for the context)")

print()


def paired(name, peer):
    """Ratios ours / peer of the requests per second, round by round."""
    theirs = {r["round"]: r["rps"] for r in rows.get(peer, []) if "rps" in r}
    return [r["rps"] / theirs[r["round"]] for r in rows.get(name, [])
            if r.get("round") in theirs and theirs[r["round"]]]


print("| set | endpoint | server | req/s (1 CPU) | p50 | p99 | max | server CPU | wrk CPU "
      "| others / steal | ours / Edge here (per round) | Edge published 1 CPU | ours / that "
      "| Edge 8 CPUs / 8 | ours / that |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
LABELS = {
    "client": "`GET /api/client/features`",
    "client-304": "`GET /api/client/features`, `If-None-Match` → 304",
    "frontend-bare": "`GET /api/frontend`, no context (as Edge measured)",
    "frontend-get": "`GET /api/frontend?userId=…&properties[…]=…`",
    "frontend-post": "`POST /api/frontend` `{\"context\": …}`",
}


def line(set_, label, server, name, here):
    rps = med(name, "rps")
    print(f"| {set_} | {label} | {server} | {fmt(rps)} | {med(name, 'p50_us') / 1000:.2f} ms "
          f"| {med(name, 'p99_us') / 1000:.2f} ms | {med(name, 'max_us') / 1000:.1f} ms "
          f"| {fmt(med(name, 'server_cpu_pct'))}% "
          f"| {fmt(med(name, 'tool_cpu_pct'))}% | {fmt(med(name, 'others_cpu_pct'))}% / "
          f"{fmt(med(name, 'steal_pct'))}% | {here} |")


for set_ in ("small", "large"):
    for kind, label in LABELS.items():
        name = f"{set_}-{kind}"
        if name not in rows:
            continue
        rps = med(name, "rps")
        ratios = paired(name, f"{set_}-edge-{kind}")
        here = (f"**{statistics.median(ratios):.2f}x** ("
                + ", ".join(f"{r:.2f}" for r in ratios) + ")") if ratios else "–"
        edge = EDGE.get((set_, kind.split("-")[0])) if kind != "client-304" else None
        if edge:
            one, eight = edge
            cmp = (f"{one:,} | {rps / one:.2f}x | {eight / 8:,.0f} | {rps / (eight / 8):.2f}x")
        else:
            cmp = "– | – | – | –"
        line(set_, label, "cordon", name, f"{here} | {cmp}")
        if f"{set_}-edge-{kind}" in rows:
            line(set_, label, f"Edge {EDGE_HERE}", f"{set_}-edge-{kind}", "– | – | – | – | –")

print()
print("| set | streaming clients | flips × clients | p50 | p99 | max | slowest client p99 "
      "| admin answer p50 / p99 |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for set_ in ("small", "large"):
    for k in (1, 100):
        name = f"{set_}-propagation-k{k}"
        if name not in rows:
            continue
        print(f"| {set_} | {k} | {fmt(med(name, 'samples'))} "
              f"| {med(name, 'all', 'p50_ms'):.2f} ms | {med(name, 'all', 'p99_ms'):.2f} ms "
              f"| {med(name, 'all', 'max_ms'):.2f} ms | {med(name, 'slowest_client', 'p99_ms'):.2f} ms "
              f"| {med(name, 'admin_rtt', 'p50_ms'):.2f} / {med(name, 'admin_rtt', 'p99_ms'):.2f} ms |")

dropped = {n: len(v) for n, v in noisy.items() if rows[n] is not v}
kept = [n for n, v in noisy.items() if rows[n] is v]
if dropped:
    print("\nleft out of the medians (other processes or steal took >= 5% of a CPU): "
          + ", ".join(f"{n} x{c}" for n, c in sorted(dropped.items())))
if kept:
    print("\nNOISY (no quiet run; medians of noisy runs): " + ", ".join(sorted(kept)))

worst = max((med(f"{s}-propagation-k{k}", "all", "p99_ms") for s in ("small", "large")
             for k in (1, 100) if f"{s}-propagation-k{k}" in rows), default=float("nan"))
print(f"\npropagation p99 target < 100 ms: worst p99 {worst:.2f} ms "
      f"({'met' if worst < 100 else 'NOT met'})")
print(f"rounds per measurement: {max((len(v) for v in rows.values()), default=0)}; "
      f"median load average during measurements: {fmt(statistics.median(r['loadavg'] for v in rows.values() for r in v if 'loadavg' in r), 2)}")
