#!/usr/bin/env python3
"""Turns a tools/compare result directory (raw.jsonl + meta.json) into summary.md and SVG
bar charts. Standard library only (no matplotlib needed).

    python3 tools/compare_report.py bench-results/<date>-<label>
"""
import html
import json
import os
import statistics
import sys

# (key, column title, unit, higher_is_better, decimals)
METRICS = [
    ("rss_kb_per_conn_1k", "RSS/conn @1k", "KiB", False, 1),
    ("rss_kb_per_conn_9k", "RSS/conn @9k", "KiB", False, 1),
    ("pss_kb_per_conn_9k", "PSS/conn @9k", "KiB", False, 1),
    ("rss_mib_9k", "RSS @9k held", "MiB", False, 1),
    ("hold9k_open_s", "open 9k", "s", False, 2),
    ("echo_p50_us", "echo p50", "µs", False, 0),
    ("echo_p99_us", "echo p99", "µs", False, 0),
    ("echo_p999_us", "echo p99.9", "µs", False, 0),
    ("echo_cpu_s", "echo CPU", "s", False, 2),
    ("echo_cpu_us_per_msg", "echo CPU/msg", "µs", False, 2),
    ("echo_max_msgs", "echo closed-loop", "msg/s", True, 0),
    ("echo_max_cpu_us_per_msg", "closed-loop CPU/msg", "µs", False, 2),
    ("echo_max1k_msgs", "closed loop 1k conns", "msg/s", True, 0),
    ("echo_max1k_cpu_us_per_msg", "closed loop 1k CPU/msg", "µs", False, 2),
    ("echo_max_machine_us_per_msg", "closed-loop machine CPU/msg", "µs", False, 2),
    ("echo_max1k_machine_us_per_msg", "closed loop 1k machine CPU/msg", "µs", False, 2),
    ("fanout_p50_ms", "fanout p50", "ms", False, 1),
    ("fanout_p99_ms", "fanout p99", "ms", False, 1),
    ("fanout_last_ms", "fanout last", "ms", False, 1),
    ("bulk_mib_s", "bulk each way", "MiB/s", True, 0),
    ("bulk_cpu_s_per_gb", "bulk CPU", "s/GB", False, 3),
    ("bulk_machine_s_per_gb", "bulk machine CPU", "s/GB", False, 3),
    ("churn_hs", "churn", "hs/s", True, 0),
    ("churn_cpu_ms_per_hs", "churn CPU", "ms/hs", False, 3),
    ("churn_machine_ms_per_hs", "churn machine CPU", "ms/hs", False, 3),
    ("http_small_rps", "HTTP 64 B", "req/s", True, 0),
    ("http_small_cpu_us_per_req", "HTTP 64 B CPU/req", "µs", False, 1),
    ("http_small_p99_us", "HTTP 64 B p99", "µs", False, 0),
    ("http_small_machine_us_per_req", "HTTP 64 B machine CPU/req", "µs", False, 1),
    ("http_1m_rps", "HTTP 1 MiB", "req/s", True, 0),
    ("http_1m_cpu_us_per_req", "HTTP 1 MiB CPU/req", "µs", False, 0),
    ("http_1m_p99_us", "HTTP 1 MiB p99", "µs", False, 0),
    ("http_1m_machine_us_per_req", "HTTP 1 MiB machine CPU/req", "µs", False, 0),
    ("foreign_pct", "others' CPU (max)", "%", False, 0),
]
CHARTS = ["rss_kb_per_conn_9k", "echo_p99_us", "fanout_last_ms", "bulk_mib_s", "bulk_cpu_s_per_gb", "churn_hs",
          "http_small_rps", "http_small_cpu_us_per_req", "http_1m_rps", "http_1m_cpu_us_per_req"]
PEER_ORDER = ["direct", "floor", "nginx", "haproxy", "haproxy-splice", "wsplice", "wsplice-copy"]


def g(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d or d[p] is None:
            return None
        d = d[p]
    return d


def cpu_delta(rec):
    a, b = g(rec, "proc_after", "cpu_s"), g(rec, "proc_before", "cpu_s")
    return None if a is None or b is None else a - b


def foreign_pct(rec):
    """CPU used by processes other than proxy, backend and load generator during the run, in
    percent of the machine (wall time x CPUs)."""
    b = rec.get("bench") or {}
    wall, ncpu, busy = rec.get("wall_s"), rec.get("ncpu"), rec.get("sys_busy_cpu_s")
    if not wall or not ncpu or busy is None:
        return None
    be = g(rec, "backend_after", "cpu_s"), g(rec, "backend_before", "cpu_s")
    ours = (cpu_delta(rec) or 0) + ((be[0] - be[1]) if None not in be else 0) + (b.get("self_cpu_s") or 0)
    return max(0.0, busy - ours) / (wall * ncpu) * 100


def machine_cpu(rec):
    """The whole machine's busy CPU seconds during the run (every process, irq and softirq
    included): load generator and backend too, whose work per unit is the same through every
    peer, so the differences between peers are what each proxy costs the machine, including
    work it leaves to softirq on other CPUs (a queued send transmitted when the ACK arrives)."""
    return rec.get("machine_cpu_s")


def size_metrics(sizes):
    """Echo metrics for the message sizes after the first (scenarios echo@SIZE, echo_max@SIZE):
    the same keys as the first size's, suffixed with @SIZE."""
    extra = []
    for size in sizes[1:]:
        for key, title, unit, hib, dec in METRICS:
            if key.startswith("echo"):
                extra.append((f"{key}@{size}", f"{title} {size} B", unit, hib, dec))
    return extra


def cpu_per_msg_us(r):
    """Proxy CPU per echoed message (one round trip: client -> backend -> client), from the
    CPU the load generator sampled around the message phase only (connection set-up excluded)."""
    cpu, n = r.get("proxy_cpu_s"), r.get("received")
    return cpu / n * 1e6 if cpu is not None and n else None


def extract(rec):
    """Metrics from one raw.jsonl record (one scenario run)."""
    s, b, out = rec["scenario"], rec.get("bench"), {}
    if "@" in s:  # echo@SIZE / echo_max@SIZE: the first size's metrics, suffixed
        base, size = s.split("@", 1)
        sub = extract(dict(rec, scenario=base))
        return {(k if k == "foreign_pct" else f"{k}@{size}"): v for k, v in sub.items()}
    fp = foreign_pct(rec)
    if fp is not None:
        out["foreign_pct"] = fp
    if not b:
        return out
    r = b.get("results") or {}
    if s in ("hold1k", "hold9k"):
        tag = s[4:]
        held = r.get("alive_at_sample") or r.get("opened") or 0
        at, base = g(r, "proc", "rss_kb"), g(rec, "proc_before", "rss_kb")
        if held and at is not None and base is not None:
            out["rss_kb_per_conn_" + tag] = (at - base) / held
        pat, pbase = g(r, "proc", "pss_kb"), g(rec, "proc_before", "pss_kb")
        if held and pat is not None and pbase is not None:
            out["pss_kb_per_conn_" + tag] = (pat - pbase) / held
        if at is not None:
            out["rss_mib_" + tag] = at / 1024
        out[s + "_open_s"] = r.get("open_s")
        out[s + "_opened"] = r.get("opened")
    elif s == "echo":
        out["echo_p50_us"] = g(r, "latency", "p50_us")
        out["echo_p99_us"] = g(r, "latency", "p99_us")
        out["echo_p999_us"] = g(r, "latency", "p999_us")
        out["echo_msgs"] = r.get("msgs_per_s")
        out["echo_cpu_s"] = cpu_delta(rec)
        out["echo_cpu_us_per_msg"] = cpu_per_msg_us(r)
        out["echo_actual_p50_us"] = g(r, "latency_from_actual_send", "p50_us")
        out["echo_actual_p99_us"] = g(r, "latency_from_actual_send", "p99_us")
    elif s in ("echo_max", "echo_max1k"):
        out[s + "_msgs"] = r.get("msgs_per_s")
        out[s + "_cpu_us_per_msg"] = cpu_per_msg_us(r)
        mc, n = machine_cpu(rec), r.get("received")
        if mc is not None and n:  # the whole run (connection set-up included) per message
            out[s + "_machine_us_per_msg"] = mc / n * 1e6
    elif s == "fanout":
        for k, m in (("median_p50_us", "fanout_p50_ms"), ("median_p99_us", "fanout_p99_ms"), ("median_last_us", "fanout_last_ms")):
            if r.get(k) is not None:
                out[m] = r[k] / 1000
        out["fanout_cpu_s"] = cpu_delta(rec)
    elif s == "bulk":
        out["bulk_mib_s"] = r.get("mib_per_s_each_way")
        cpu, relayed = cpu_delta(rec), r.get("relayed_bytes")
        if cpu is not None and relayed:
            out["bulk_cpu_s_per_gb"] = cpu / (relayed / 1e9)
        if machine_cpu(rec) is not None and relayed:
            out["bulk_machine_s_per_gb"] = machine_cpu(rec) / (relayed / 1e9)
    elif s == "churn":
        out["churn_hs"] = r.get("handshakes_per_s")
        out["churn_failures"] = r.get("failures")
        cpu, ok = cpu_delta(rec), r.get("cycles_ok")
        if cpu is not None and ok:
            out["churn_cpu_ms_per_hs"] = cpu * 1000 / ok
        if machine_cpu(rec) is not None and ok:
            out["churn_machine_ms_per_hs"] = machine_cpu(rec) * 1000 / ok
    elif s in ("http_small", "http_1m"):
        out[s + "_rps"] = r.get("requests_per_s")
        out[s + "_p99_us"] = g(r, "latency", "p99_us")
        # CPU sampled by the load generator around the request phase only.
        cpu, n = r.get("proxy_cpu_s"), r.get("requests")
        if cpu is not None and n:
            out[s + "_cpu_us_per_req"] = cpu / n * 1e6
        if machine_cpu(rec) is not None and n:  # the whole run, connection set-up included
            out[s + "_machine_us_per_req"] = machine_cpu(rec) / n * 1e6
    return {k: v for k, v in out.items() if v is not None}


def fmt(v, dec):
    if v is None:
        return "–"
    return f"{v:,.{dec}f}"


def bar_chart(path, title, unit, rows, higher_better):
    """Horizontal bar chart, one bar per peer."""
    rows = [(p, v) for p, v in rows if v is not None]
    if not rows:
        return False
    w, left, bar_h, gap, top = 640, 130, 22, 8, 44
    h = top + len(rows) * (bar_h + gap) + 24
    vmax = max(v for _, v in rows) or 1
    colors = {"direct": "#9e9e9e", "floor": "#616161", "nginx": "#2e7d32", "haproxy": "#1565c0", "haproxy-splice": "#64b5f6",
              "wsplice": "#e65100", "wsplice-copy": "#ffb74d"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{html.escape(title)} ({html.escape(unit)})</text>',
           f'<text x="10" y="36" fill="#555">{"higher" if higher_better else "lower"} is better</text>']
    for i, (p, v) in enumerate(rows):
        y = top + i * (bar_h + gap)
        bw = max(1, (w - left - 90) * v / vmax)
        out.append(f'<text x="{left - 6}" y="{y + bar_h * 0.7}" text-anchor="end">{html.escape(p)}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{bw:.1f}" height="{bar_h}" fill="{colors.get(p, "#777")}"/>')
        out.append(f'<text x="{left + bw + 4:.1f}" y="{y + bar_h * 0.7}">{v:,.{3 if v < 1 else 1 if v < 100 else 0}f}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return True


def spread_pct(vals):
    """Noise of one peer's figure: (max - min) of its repeats, in % of their median."""
    m = statistics.median(vals)
    return (max(vals) - min(vals)) / abs(m) * 100 if len(vals) > 1 and m else None


def versus(meta, per, med, cols):
    """Tables comparing each --wsplice-bin with the first one (the baseline), per relay mode:
    medians, difference, and the noise (spread of the repeats) of both."""
    bins = [b["name"] for b in meta.get("wsplice_bins", [])]
    if len(bins) < 2:
        return []
    L = []
    for relay in meta.get("wsplice_relays", ["splice"]):
        sfx = "" if relay == "splice" else "-" + relay
        base = bins[0] + sfx
        for other in (b + sfx for b in bins[1:]):
            if base not in med or other not in med:
                continue
            L.append(f"## {other} vs {base} (relay = {relay})\n")
            L.append("Medians over repeats; noise = (max − min) of the repeats in % of the median, per peer. "
                     "`beyond noise` when the difference is larger than the larger of the two noises.\n")
            L.append(f"| figure | {base} | {other} | difference | noise {base} / {other} | verdict |")
            L.append("|---|---:|---:|---:|---:|---|")
            for key, title, unit, hib, dec in cols:
                a, b = med[base].get(key), med[other].get(key)
                if a is None or b is None or key == "foreign_pct":
                    continue
                if unit == "KiB":  # per-connection memory: bytes, so that 130 vs 140 shows
                    a, b, unit, dec = a * 1024, b * 1024, "B", 0
                diff = (b - a) / abs(a) * 100 if a else None
                na, nb = spread_pct(per[base][key]), spread_pct(per[other][key])
                noise = max(x for x in (na, nb, 0.0) if x is not None)
                if diff is None or len(per[base][key]) < 2:
                    verdict = "–"
                elif abs(diff) <= noise:
                    verdict = "within noise"
                else:
                    verdict = "better, beyond noise" if (diff > 0) == hib else "**WORSE, beyond noise**"
                L.append(f"| {title} ({unit}) | {fmt(a, dec)} | {fmt(b, dec)} | "
                         f"{'–' if diff is None else f'{diff:+.1f} %'} | "
                         f"{'–' if na is None else f'{na:.1f}'} / {'–' if nb is None else f'{nb:.1f}'} % | {verdict} |")
            L.append("")
    return L


def paired(by_rep, peers, cols):
    """Ratios taken within each repeat (peer ÷ reference, both measured minutes apart in the same
    repeat), then their median and range. The machine's speed drifts between stretches of
    minutes (bench-results/2026-11-29-handshake-noise), which moves every peer of a repeat alike;
    a ratio of medians can pair one peer's slow repeat with another's fast one, a paired ratio
    cannot."""
    L = []
    rcols = [cc for cc in cols if cc[0] != "foreign_pct" and not cc[0].startswith(("rss_", "pss_"))]
    for ref in ("nginx", "haproxy"):
        if ref not in by_rep:
            continue
        rows = []
        for p in peers:
            if p == ref or p == "direct":
                continue
            cells, any_cell = [], False
            for k, _, _, _, _ in rcols:
                a, b = by_rep.get(p, {}).get(k, {}), by_rep[ref].get(k, {})
                rs = [a[r] / b[r] for r in a if r in b and b[r] not in (None, 0) and a[r] is not None]
                if rs:
                    any_cell = True
                    cells.append(f"{statistics.median(rs):.2f}× ({min(rs):.2f}-{max(rs):.2f})" if len(rs) > 1
                                 else f"{rs[0]:.2f}×")
                else:
                    cells.append("–")
            if any_cell:
                rows.append(f"| {p} | " + " | ".join(cells) + " |")
        if rows:
            L.append(f"### Paired ratio to {ref}: peer ÷ {ref} within each repeat, median (range)\n")
            L.append("| peer | " + " | ".join(t for _, t, _, _, _ in rcols) + " |")
            L.append("|---|" + "---:|" * len(rcols))
            L.extend(rows)
            L.append("")
    return L


def main(d):
    global METRICS
    meta = json.load(open(os.path.join(d, "meta.json"))) if os.path.exists(os.path.join(d, "meta.json")) else {}
    METRICS = METRICS + size_metrics(meta.get("scenarios", {}).get("echo_sizes", []))
    recs = [json.loads(l) for l in open(os.path.join(d, "raw.jsonl")) if l.strip()]
    per = {}  # peer -> metric -> [values over repeats]
    by_rep = {}  # peer -> metric -> {repeat: value}
    errs = {}  # peer -> {scenario: {reason: count}}
    for rec in recs:
        p = rec["peer"]
        for k, v in extract(rec).items():
            per.setdefault(p, {}).setdefault(k, []).append(v)
            by_rep.setdefault(p, {}).setdefault(k, {})[rec.get("repeat")] = v
        b = rec.get("bench")
        if b is None:
            errs.setdefault(p, {}).setdefault(rec["scenario"], {})["no result (rc %s)" % rec.get("rc")] = 1
        elif b.get("errors"):
            e = errs.setdefault(p, {}).setdefault(rec["scenario"], {})
            for k, v in b["errors"].items():
                e[k] = e.get(k, 0) + v
    med = {p: {k: statistics.median(v) for k, v in m.items()} for p, m in per.items()}
    # Memory per connection is only meaningful on the first (cold) repeat: a proxy process keeps
    # the memory its first hold grew (allocators do not give it back), so later repeats measure
    # a delta against an already-grown baseline and understate every peer (HAProxy's fell from
    # 3.9 KiB to 0.03 KiB). Use the first repeat for those columns.
    # With --fresh every repeat starts on a fresh process, so the median is cold too.
    for p, m in per.items():
        for k in ("rss_kb_per_conn_1k", "rss_kb_per_conn_9k", "pss_kb_per_conn_9k"):
            if m.get(k) and not meta.get("fresh"):
                med[p][k] = m[k][0]
                per[p][k] = m[k][:1]
    for p in med:
        if per[p].get("foreign_pct"):
            med[p]["foreign_pct"] = max(per[p]["foreign_pct"])
    peers = [p for p in PEER_ORDER if p in med] + [p for p in med if p not in PEER_ORDER]
    m = meta.get("machine", {})
    L = []
    L.append(f"# wsplice vs peers — {meta.get('label', os.path.basename(d))}\n")
    L.append(f"- date: {meta.get('date', '?')}; workers: {meta.get('workers', '?')}; quick: {bool(meta.get('quick'))}; "
             f"repeats: {meta.get('repeats', '?')} (table values are medians over repeats, "
             + ("memory per connection included: every repeat ran on freshly started peers (--fresh))"
                if meta.get("fresh") else "except memory per connection: first repeat, see below)"))
    L.append(f"- command: `{meta.get('command', '')}`")
    L.append(f"- machine: {m.get('nproc', '?')} CPUs ({m.get('cpu', '?')}), {round(m.get('mem_kib', 0) / 1048576, 1)} GiB, "
             f"kernel {m.get('kernel', '?')}")
    L.append(f"- open files: {m.get('nofile_soft', '?')} soft / {m.get('nofile_hard', '?')} hard per process. This caps every "
             "process (load generator, backend, each proxy process): a proxied WebSocket costs the proxy two fds, so one "
             "proxy process tops out near 9,900 connections; 9,000 is the largest hold/fanout measured.")
    v = meta.get("versions", {})
    L.append(f"- peers: {v.get('nginx', '')}; {v.get('haproxy', '')}; wsplice {v.get('wsplice_git', '')}")
    for b in meta.get("wsplice_bins", []):
        L.append(f"- wsplice binary `{b['name']}`: {b['path']} (commit {b.get('rev') or '?'}, sha256 {b.get('sha256', '?')}…, "
                 f"built {b.get('mtime', '?')})")
    if meta.get("interleaved"):
        L.append(f"- order: {meta['interleaved']}")
    L.append(f"- CPU placement: {meta.get('placement', '?')}. Everything runs over loopback on this one machine; "
             "`direct` is the load generator against the backend with no proxy (its CPU/RSS columns are empty).\n")
    L.append("## Peers\n")
    L.append("| peer | status | detail |\n|---|---|---|")
    for ps in meta.get("peers", []):
        L.append(f"| {ps['peer']} | {ps['status']} | {ps['detail'].replace('|', '/')} |")
    L.append("")
    L.append("## Results\n")
    cols = [mm for mm in METRICS if any(mm[0] in med[p] for p in peers)]
    L.append("| peer | " + " | ".join(f"{t} ({u})" for _, t, u, _, _ in cols) + " |")
    L.append("|---|" + "---:|" * len(cols))
    for p in peers:
        L.append(f"| {p} | " + " | ".join(fmt(med[p].get(k), dec) for k, _, _, _, dec in cols) + " |")
    L.append("")
    for ref in ("nginx", "haproxy", "floor"):
        if ref not in med:
            continue
        L.append(f"### Ratio to {ref} (peer ÷ {ref}; for throughput columns >1 is better, for the rest <1 is better)\n")
        rcols = [cc for cc in cols if cc[0] != "foreign_pct"]
        L.append("| peer | " + " | ".join(t for _, t, _, _, _ in rcols) + " |")
        L.append("|---|" + "---:|" * len(rcols))
        for p in peers:
            if p == ref:
                continue
            cells = []
            for k, _, _, _, _ in rcols:
                a, b = med[p].get(k), med[ref].get(k)
                cells.append(f"{a / b:.2f}×" if a is not None and b not in (None, 0) else "–")
            L.append(f"| {p} | " + " | ".join(cells) + " |")
        L.append("")
    L.extend(paired(by_rep, peers, cols))
    L.extend(versus(meta, per, med, cols))
    L.append("## Charts\n")
    for key in CHARTS:
        spec = next(mm for mm in METRICS if mm[0] == key)
        fn = f"chart-{key}.svg"
        if bar_chart(os.path.join(d, fn), spec[1], spec[2], [(p, med[p].get(key)) for p in peers], spec[3]):
            L.append(f"![{spec[1]}]({fn})")
    L.append("")
    L.append("## Interference: CPU used by other processes during each scenario (% of machine)\n")
    sizes = meta.get("scenarios", {}).get("echo_sizes", [])[1:]
    scen_order = (["hold1k", "hold9k", "echo", "echo_max"] + [f"{e}@{z}" for z in sizes for e in ("echo", "echo_max")]
                  + ["fanout", "bulk", "churn", "http_small", "http_1m"])
    ran = meta.get("scenarios", {}).get("run")
    if ran:
        scen_order = [x for x in scen_order if x in ran]
    fp = {}
    for rec in recs:
        v = foreign_pct(rec)
        if v is not None:
            fp.setdefault(rec["peer"], {}).setdefault(rec["scenario"], []).append(v)
    L.append("| peer | " + " | ".join(scen_order) + " |")
    L.append("|---|" + "---:|" * len(scen_order))
    for p in peers:
        L.append(f"| {p} | " + " | ".join(
            "/".join(f"{x:.0f}" for x in fp.get(p, {}).get(sc, [])) or "–" for sc in scen_order) + " |")
    L.append("\nValues above ~5 mean something else (another build, a fuzzer) competed for the CPUs during that "
             "scenario; treat its latency and throughput as a lower bound for that peer.\n")
    L.append("## Errors and integrity\n")
    if not errs:
        L.append("No errors: every payload was verified byte for byte, every connection opened and closed cleanly.")
    for p, sc in errs.items():
        for s, e in sc.items():
            L.append(f"- {p} / {s}: " + ", ".join(f"{k} ×{n}" for k, n in sorted(e.items())))
    L.append("")
    L.append("## What the columns mean\n")
    L.append("- **others' CPU (max)**: the largest share of the machine's CPU (wall × CPUs, in %) used during any "
             "scenario by processes other than the proxy, the backend and the load generator (system /proc/stat busy "
             "time minus the three). Above a few % the run shared the CPUs with something else and its latency "
             "numbers are suspect.")
    sc = meta.get("scenarios", {})
    L.append(f"- **RSS/conn @1k, @9k**: (RSS of the proxy's whole process tree with N idle WebSockets held − RSS just "
             f"before opening them) ÷ N, sampled from /proc after holding {sc.get('hold_s', '?')} s. PSS/conn is the "
             "same with proportional set size (shared pages counted once). `RSS @9k held` is the absolute tree RSS.")
    L.append("- **open 9k**: seconds to open 9,000 connections at the bounded connect rate "
             f"({sc.get('connect_rate', '?')}/s, so ≥ {9000 / (sc.get('connect_rate') or 1):.1f} s by construction).")
    e = sc.get("echo", {})
    L.append(f"- **echo p50/p99/p99.9**: {e.get('c')} connections × {e.get('size')} B at a fixed total {e.get('rate')} msg/s "
             f"for {e.get('secs')} s; round trip measured from the *intended* send time (coordinated-omission corrected; "
             "includes up to ~1 ms of tokio timer lateness on the sender, the same for every peer). **echo CPU**: proxy tree "
             "CPU seconds (user+sys) over that run.")
    L.append(f"- **echo closed-loop**: 100 connections, one {e.get('size')} B message in flight each, {e.get('secs')} s: messages/s.")
    L.append("- **CPU/msg** (echo, closed-loop): proxy tree CPU (user+sys, 10 ms ticks) sampled by the load generator "
             "around the message phase only (connection set-up excluded) ÷ messages echoed; one message is one round "
             "trip, so the proxy relays it twice.")
    if sc.get("echo_sizes", [])[1:]:
        L.append(f"- **… N B** columns: the same echo scenarios with N-byte messages (`echo@N`, `echo_max@N` in raw.jsonl).")
    f = sc.get("fanout", {})
    L.append(f"- **fanout**: {f.get('c')} connections, {f.get('m')} broadcasts of {f.get('size')} B pushed by the backend; per "
             "broadcast the p50/p99 delivery latency and the time until the last client got it (backend stamp → client "
             "receipt, same clock); the table shows the median over broadcasts.")
    bk = sc.get("bulk", {})
    L.append(f"- **bulk**: {bk.get('c')} connections each sending {bk.get('bytes_each_way')} B in 64 KiB binary messages and "
             "receiving the echo (verified byte for byte): MiB/s each way; **CPU s/GB** = proxy tree CPU seconds ÷ GB "
             "relayed (both directions counted).")
    c = sc.get("churn", {})
    L.append(f"- **churn**: {c.get('c')} workers for {c.get('secs')} s doing connect → handshake → one echo → close: "
             "handshakes/s; CPU ms per handshake for the proxy tree.")
    L.append("- **machine CPU** (closed loop per message, bulk per GB, churn per handshake, HTTP per request): the whole machine's busy "
             "time during the scenario (/proc/stat user + nice + system + irq + softirq, every process: the load "
             "generator and backend too, the same work through every peer; the closed loop's connection set-up "
             "included) ÷ units. It counts what a proxy leaves to softirq on other CPUs, which its own CPU does not "
             "(a send queued now and transmitted when the peer's ACK arrives, on the CPU that took the ACK). "
             "`direct` is the machine's cost without a proxy.")
    hp = sc.get("http", {})
    if hp:
        L.append(f"- **HTTP 64 B / 1 MiB**: plain HTTP/1.1, {hp.get('c')} keep-alive connections each sending GET and reading "
                 f"the whole response before the next (closed loop) for {hp.get('secs')} s, a {hp.get('small_bytes')}-byte or "
                 f"{hp.get('big_bytes')}-byte body from the backend, every body compared byte for byte: requests/s, "
                 "p99 latency, and **CPU/req** = proxy tree CPU (user+sys, sampled by the load generator around the request "
                 "phase) ÷ requests. nginx runs with an upstream keepalive pool (64) and its default response buffering.")
    with open(os.path.join(d, "summary.md"), "w") as fh:
        fh.write("\n".join(L) + "\n")
    print(os.path.join(d, "summary.md"))


if __name__ == "__main__":
    main(sys.argv[1])
