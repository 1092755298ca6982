#!/usr/bin/env python3
"""Summarises a tools/shapes run: per cell (size x writer) and relay mode, the medians over the
repeats of the proxy's CPU per GB relayed and per echoed message, and auto's distance from the
better of copy and splice. Load average and foreign CPU (others' share of the machine) are
reported beside the figures: the machine is shared. A second table pairs the modes within each
repeat (every repeat runs all modes back to back): auto's s/GB over the better of copy and
splice of the same repeat, so that a slow minute of the machine falls on both sides.

    tools/shapes_report.py DIR        (DIR/raw/shapes.json from tools/shapes)
"""
import json
import os
import statistics
import sys


def human(n):
    for unit, f in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= f and n % f == 0:
            return f"{n // f} {unit}"
    return f"{n} B"


def main(d):
    cells = {}  # (size, writer) -> relay -> list of cell dicts
    errors = []
    path = os.path.join(d, "raw", "shapes.json")
    try:
        rec = json.loads(open(path).read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        sys.exit(f"{path}: no JSON line")
    for c in rec.get("cells", []):
        relay, rep = c["proxy"], c["repeat"]
        if c.get("errors"):
            errors.append(f"{relay} repeat {rep} {c['size']} {c['writer']}: {c['errors']}")
        cells.setdefault((c["size"], c["writer"]), {}).setdefault(relay, []).append(c)
    names = {r for v in cells.values() for r in v}
    relays = [r for r in ("copy", "splice", "auto") if r in names] + sorted(names - {"copy", "splice", "auto"})
    order = {"whole": 0, "split": 1, "stream": 2}
    med = lambda xs: statistics.median(xs) if xs else float("nan")
    print("# Shape matrix: wsplice CPU per unit of work by relay mode\n")
    print("Medians over the repeats. `s/GB`: the proxy's CPU seconds per GB of frame bytes it")
    print("relayed (both directions); `µs/msg`: per echoed message (relayed up and down).")
    print("`auto/best`: auto's s/GB over the better of copy and splice in that cell; `spread %`:")
    print("the largest (max - min) / median of one mode's repeats in that cell (the noise to read it against).")
    print("`load`: 1-minute load average at the cell's start (median, max); `foreign`: CPU used")
    print("by other processes during the cell, % of the machine (median, max).\n")
    head = "| size | writer | " + " | ".join(f"{r} s/GB | {r} µs/msg" for r in relays)
    head += " | auto/best | spread % | MB/s (auto) | load (med, max) | foreign % (med, max) |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    worst = []
    for (size, writer) in sorted(cells, key=lambda k: (k[0], order.get(k[1], 9))):
        per = cells[(size, writer)]
        row = [human(size), writer]
        gb = {}
        for r in relays:
            xs = per.get(r, [])
            gb[r] = med([c["proxy_cpu_s_per_gb"] for c in xs if c.get("proxy_cpu_s_per_gb") is not None])
            us = med([c["proxy_cpu_us_per_msg"] for c in xs if c.get("proxy_cpu_us_per_msg") is not None])
            row += [f"{gb[r]:.3f}", f"{us:.2f}"]
        ratio = float("nan")
        if {"copy", "splice", "auto"} <= set(gb):
            ratio = gb["auto"] / min(gb["copy"], gb["splice"])
            worst.append((ratio, human(size), writer))
        row.append(f"{ratio:.3f}")
        # The largest (max - min) / median of s/GB over the repeats among the modes: how far
        # apart repeats of one cell land on this machine, to read the ratio against.
        spreads = []
        for r in relays:
            xs = [c["proxy_cpu_s_per_gb"] for c in per.get(r, []) if c.get("proxy_cpu_s_per_gb") is not None]
            if len(xs) > 1:
                spreads.append((max(xs) - min(xs)) / statistics.median(xs) * 100)
        row.append(f"{max(spreads):.0f}" if spreads else "-")
        autos = per.get("auto", [])
        row.append(f"{med([c['relayed_bytes'] / c['wall_s'] / 1e6 for c in autos]):.0f}" if autos else "-")
        allc = [c for xs in per.values() for c in xs]
        loads = [c["loadavg_before"][0] for c in allc if c.get("loadavg_before")]
        fpct = [c["foreign_cpu_pct"] for c in allc]
        row.append(f"{med(loads):.1f}, {max(loads):.1f}" if loads else "-")
        row.append(f"{med(fpct):.0f}, {max(fpct):.0f}" if fpct else "-")
        print("| " + " | ".join(row) + " |")
    if worst:
        over = [w for w in worst if w[0] > 1.05]
        print(f"\nCells where auto is more than 5 % above the better mode: {len(over)} of {len(worst)}"
              + ("" if not over else ": " + ", ".join(f"{s} {w} ({r:.2f})" for r, s, w in sorted(over, reverse=True))))
    paired(cells, relays, order)
    if errors:
        print("\nErrors:\n" + "\n".join(f"- {e}" for e in errors))


def paired(cells, relays, order):
    """Per cell, each auto-like column (auto and any --also binary) over min(copy, splice) of the
    same repeat: median, range, and in how many repeats it was within 5 %."""
    cols = [r for r in relays if r not in ("copy", "splice")]
    if not cols or "copy" not in relays or "splice" not in relays:
        return
    rows = []
    for (size, writer) in sorted(cells, key=lambda k: (k[0], order.get(k[1], 9))):
        per = cells[(size, writer)]
        by_rep = {}
        for r, xs in per.items():
            for c in xs:
                if c.get("proxy_cpu_s_per_gb") is not None:
                    by_rep.setdefault(c["repeat"], {})[r] = c["proxy_cpu_s_per_gb"]
        row = [human(size), writer]
        for col in cols:
            rs = [v[col] / min(v["copy"], v["splice"]) for v in by_rep.values()
                  if {"copy", "splice", col} <= set(v) and min(v["copy"], v["splice"]) > 0]
            if rs:
                row.append(f"{statistics.median(rs):.3f} ({min(rs):.2f}-{max(rs):.2f}; "
                           f"{sum(x <= 1.05 for x in rs)}/{len(rs)})")
            else:
                row.append("-")
        rows.append(row)
    print("\nPaired within each repeat: s/GB over the better of copy and splice *of the same repeat*;")
    print("median (range; repeats within 5 %).\n")
    head = "| size | writer | " + " | ".join(f"{c} / best" for c in cols) + " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
