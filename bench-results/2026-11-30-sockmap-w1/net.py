#!/usr/bin/env python3
# Machine CPU per unit of work from a tools/compare raw.jsonl, and net of `direct` (the same
# load with no proxy): (peer - direct) per unit, and that over the better of nginx's and
# HAProxy's in the same repeat.   python3 net.py bench-results/2026-11-30-sockmap-w1
import json, sys, statistics as st
d = sys.argv[1]
recs = [json.loads(l) for l in open(d + "/raw.jsonl")]
def unit(rec):
    b = rec.get("bench") or {}; r = b.get("results") or {}
    s = rec["scenario"]
    if s == "bulk": return (r.get("relayed_bytes") or 0) / 1e9, "s/GB", r.get("mib_per_s_each_way")
    if s == "churn": return (r.get("cycles_ok") or 0) / 1e6, "µs/hs", r.get("handshakes_per_s")
    if s.startswith("echo_max"): return (r.get("received") or 0) / 1e6, "µs/msg", r.get("msgs_per_s")
    return 0, "", None
for scen in ("echo_max", "echo_max1k", "bulk", "churn"):
    per, rate, proc = {}, {}, {}
    lab = ""
    for rec in recs:
        if rec["scenario"] != scen: continue
        u, lab, rt = unit(rec)
        if not u: continue
        per.setdefault(rec["repeat"], {})[rec["peer"]] = rec["machine_cpu_s"] / u
        rate.setdefault(rec["peer"], []).append(rt or 0)
        pc = (rec.get("bench") or {}).get("results", {}).get("proxy_cpu_s")
        if pc is not None: proc.setdefault(rec["peer"], []).append(pc / u)
    if not per: continue
    peers = sorted({p for x in per.values() for p in x})
    print(f"## {scen} ({lab}): rate; proxy process CPU per unit; machine CPU per unit; machine - direct; that / the better of nginx and HAProxy (paired, median and range)")
    for p in peers:
        vals = [x[p] for x in per.values() if p in x]
        netabs = [x[p] - x["direct"] for x in per.values() if p in x and "direct" in x]
        net = [(x[p] - x["direct"]) / min(x["nginx"] - x["direct"], x["haproxy"] - x["direct"])
               for x in per.values() if p in x and {"direct", "nginx", "haproxy"} <= x.keys()]
        pr = st.median(proc[p]) if proc.get(p) else float("nan")
        print(f"  {p:16s} rate {st.median(rate[p]):10.1f}  proc {pr:8.3f}  machine {st.median(vals):8.3f}  net {st.median(netabs):7.3f}  "
              f"net/better {st.median(net):.2f} ({min(net):.2f}-{max(net):.2f})")
