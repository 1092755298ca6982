#!/usr/bin/env python3
# Machine CPU per unit of work from a tools/compare raw.jsonl, and net of `direct` (the same
# load with no proxy): (peer - direct) per unit, and that over HAProxy's, taken within each
# repeat.   python3 net.py bench-results/2026-11-30-machine-w1
import json, sys, statistics as st
d = sys.argv[1]
recs = [json.loads(l) for l in open(d + "/raw.jsonl")]
def unit(rec):
    b = rec.get("bench") or {}; r = b.get("results") or {}
    s = rec["scenario"]
    if s == "bulk": return (r.get("relayed_bytes") or 0) / 1e9, "s/GB"
    if s == "churn": return (r.get("cycles_ok") or 0) / 1e6, "µs/hs"
    if s.startswith("echo_max"): return (r.get("received") or 0) / 1e6, "µs/msg"
for scen in ("bulk", "churn", "echo_max", "echo_max1k"):
    per = {}
    for rec in recs:
        if rec["scenario"] != scen: continue
        u, lab = unit(rec)
        if not u: continue
        per.setdefault(rec["repeat"], {})[rec["peer"]] = rec["machine_cpu_s"] / u
    peers = sorted({p for x in per.values() for p in x})
    print(f"## {scen} ({lab}): machine per unit, median; and (peer - direct) / (haproxy - direct) paired")
    for p in peers:
        vals = [x[p] for x in per.values() if p in x]
        net = [(x[p] - x["direct"]) / (x["haproxy"] - x["direct"]) for x in per.values() if p in x and "direct" in x and "haproxy" in x]
        netabs = [x[p] - x["direct"] for x in per.values() if p in x and "direct" in x]
        print(f"  {p:16s} {st.median(vals):8.3f}  net {st.median(netabs):7.3f}  net/haproxy {st.median(net):.2f} ({min(net):.2f}-{max(net):.2f})")
