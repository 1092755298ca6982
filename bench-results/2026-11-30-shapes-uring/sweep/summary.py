#!/usr/bin/env python3
"""Medians of copy and splice per cell from raw/shapes.err (the sweep ran without auto, so
tools/shapes_report.py has no auto column to compare)."""
import collections, json, os, statistics as st
d = collections.defaultdict(list)
for l in open(os.path.join(os.path.dirname(__file__), "raw", "shapes.err")):
    if l.startswith("shapes: {"):
        r = json.loads(l[len("shapes: "):])
        d[(r["size"], r["writer"], r["proxy"])].append((r["proxy_cpu_s_per_gb"], r["proxy_cpu_us_per_msg"]))
print("| size | writer | copy s/GB (µs/msg) | splice s/GB (µs/msg) | copy / splice | paired per repeat |")
print("| ---: | --- | ---: | ---: | ---: | --- |")
for s, w in sorted({(s, w) for s, w, _ in d}):
    c, p = d[(s, w, "copy")], d[(s, w, "splice")]
    cm, pm = st.median(x[0] for x in c), st.median(x[0] for x in p)
    paired = ", ".join(f"{a[0] / b[0]:.2f}" for a, b in zip(c, p))
    print(f"| {s} | {w} | {cm:.3f} ({st.median(x[1] for x in c):.1f}) | {pm:.3f} ({st.median(x[1] for x in p):.1f}) | {cm / pm:.2f} | {paired} |")
