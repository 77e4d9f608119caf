#!/usr/bin/python3
"""Medians per measurement from a bench/gateway results file, and the ratios
the issue's targets are about."""

import json
import statistics
import sys
from collections import defaultdict

rows = defaultdict(list)
for line in open(sys.argv[1]):
    d = json.loads(line)
    rows[d["name"]].append(d)


def med(name, key):
    vals = [r[key] for r in rows.get(name, []) if key in r]
    return statistics.median(vals) if vals else float("nan")


print(f"\n{'measurement':<28}{'req/s':>10}{'p50 us':>10}{'p99 us':>10}{'MiB/s':>10}")
for name in sorted(rows):
    print(f"{name:<28}{med(name, 'rps'):>10.0f}{med(name, 'p50_us'):>10.0f}"
          f"{med(name, 'p99_us'):>10.0f}{med(name, 'mib_per_s'):>10.0f}")
print()
print(f"req/s, 8 conns: cordon / mitmproxy = {med('cordon-c8', 'rps') / med('mitmproxy-c8', 'rps'):.1f}x")


def added(name, key):
    """Median over rounds of (NAME - direct) within the same round."""
    direct = {r["round"]: r[key] for r in rows.get("direct-c1", [])}
    diffs = [r[key] - direct[r["round"]] for r in rows.get(name, []) if r["round"] in direct]
    return statistics.median(diffs) if diffs else float("nan")


for key in ("p50_us", "p99_us"):
    print(f"added {key[:3]} latency, 1 conn (median of per-round differences): "
          f"cordon {added('cordon-c1', key):.0f} us, mitmproxy {added('mitmproxy-c1', key):.0f} us")
print(f"bulk: cordon / slirp4netns (MTU 1500) = "
      f"{med('cordon-bulk', 'mib_per_s') / med('slirp4netns-mtu1500-bulk', 'mib_per_s'):.2f}x, "
      f"/ slirp4netns (MTU 65520) = {med('cordon-bulk', 'mib_per_s') / med('slirp4netns-mtu65520-bulk', 'mib_per_s'):.2f}x")
