#!/usr/bin/env python3
"""Turns a tools/callgrind-compare directory (raw.jsonl + *.cg callgrind dumps) into summary.md:
per relay mode and scenario, user-space instructions, heap allocations and syscalls per unit of
work for each binary against the first (baseline), and the functions whose self cost per unit
changed most. Standard library only.

    python3 tools/callgrind_report.py DIR NAME=PATH NAME=PATH...
"""
import json
import os
import re
import sys

ALLOC_FNS = {"malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc", "memalign"}


def parse_callgrind(path):
    """Total Ir, self Ir per function name, calls into the libc allocator, from one dump.

    Self cost: every cost line under `fn=` except the one after `calls=` (that one is the
    callee's inclusive cost). Names are compressed as `(id) name` on first use, `(id)` after."""
    names = {}  # (kind, id) -> name; fn and cfn share one table, as do fl/fi/fe/cfi/cfl

    def resolve(kind, val):
        m = re.match(r"\((\d+)\)(?: (.*))?$", val)
        if not m:
            return val
        if m.group(2) is not None:
            names[(kind, m.group(1))] = m.group(2)
        return names.get((kind, m.group(1)), "?")

    self_ir, allocs, total = {}, 0, None
    fn, cfn, after_calls = None, None, False
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                if after_calls:
                    after_calls = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and fn is not None:
                    self_ir[fn] = self_ir.get(fn, 0) + int(parts[-1])
                continue
            key, _, val = line.partition("=")
            if key == "fn":
                fn = resolve("fn", val)
            elif key == "cfn":
                cfn = resolve("fn", val)
            elif key in ("fl", "fi", "fe", "cfi", "cfl"):
                resolve("fl", val)
            elif key in ("ob", "cob"):
                resolve("ob", val)
            elif key == "calls":
                after_calls = True
                if cfn in ALLOC_FNS or (cfn or "").removeprefix("__libc_") in ALLOC_FNS:
                    allocs += int(val.split()[0])
            elif line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
    if total is None:
        total = sum(self_ir.values())
    return total, self_ir, allocs


def parse_perf(path):
    """Syscall counts from `perf stat -x,` output: name -> count (`sys_enter` is the total)."""
    out = {}
    for line in open(path):
        f = line.strip().split(",")
        if len(f) > 2 and f[0].isdigit():
            out[f[2].split(":")[-1].replace("sys_enter_", "")] = int(f[0])
    return out


def short(fn):
    """A function name without the generic noise, for tables."""
    fn = re.sub(r"/rustc/[0-9a-f]+/", "", fn)
    return fn if len(fn) <= 110 else fn[:107] + "..."


def main(d, bins):
    recs = [json.loads(l) for l in open(os.path.join(d, "raw.jsonl")) if l.strip()]
    names = [b.split("=", 1)[0] for b in bins]
    base = names[0]
    data = {}  # (relay, scen, name) -> {u (callgrind units), total, self_ir, allocs, nu (native units), syscalls}
    for r in recs:
        x = data.setdefault((r["relay"], r["scenario"], r["name"]), {"u": 0, "nu": 0, "total": 0, "self_ir": {},
                                                                      "allocs": 0, "syscalls": {}})
        if r["pass"] == "callgrind":
            x["total"], x["self_ir"], x["allocs"] = parse_callgrind(os.path.join(d, r["file"]))
            x["u"] = r["units"] or 0
        else:
            x["syscalls"] = parse_perf(os.path.join(d, r["file"]))
            x["nu"] = r["units"] or 0
            x["user_s"], x["sys_s"] = r.get("user_cpu_s"), r.get("sys_cpu_s")
    L = ["# Instructions, allocations and syscalls per unit of work (callgrind + perf tracepoints)\n"]
    L.append("- binaries: " + "; ".join(f"`{b.split('=', 1)[0]}` = {b.split('=', 1)[1]}" for b in bins)
             + f" (baseline: `{base}`)")
    for b in bins:
        rev = os.path.join(os.path.dirname(b.split("=", 1)[1]), "REV")
        if os.path.exists(rev):
            L.append(f"- `{b.split('=', 1)[0]}` commit: {open(rev).read().strip()}")
    L.append("- units: echo64/echo4096 = one echoed message (a round trip, relayed twice by the proxy), 10 "
             "connections, closed loop; churn = one connect → handshake → one 64 B echo → close cycle, 4 workers.")
    L.append("- Ir = user-space instructions executed by the proxy (all threads), counted by callgrind: exact, "
             "independent of other load on the machine. Allocations = calls into the libc allocator "
             "(malloc/calloc/realloc/...), also from callgrind.")
    L.append("- Syscalls: a second, native run of the same scenarios (no valgrind, whose own syscalls would be "
             "counted), counted with perf's syscall tracepoints; user and system CPU of that run from /proc (10 ms ticks, "
             "moved by other load on the machine). How many events one epoll wake-up carries depends "
             "on timing, so epoll_wait per message moves with load; the others are per-message work.")
    L.append("- Under callgrind the proxy runs ~50× slower than natively, so more events are ready per wake-up; "
             "compare the binaries with each other, not with native CPU figures.\n")
    relays = sorted({k[0] for k in data}, key=lambda x: ["splice", "copy", "auto"].index(x) if x in ("splice", "copy", "auto") else 9)
    for relay in relays:
        L.append(f"## relay = {relay}\n")
        L.append("| scenario | binary | units (callgrind / native) | Ir / unit | vs " + base + " | allocs / unit | "
                 "native user / sys CPU µs per unit | syscalls / unit | syscalls by name / unit |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for scen in ("echo64", "echo4096", "churn"):
            b0 = data.get((relay, scen, base))
            for n in names:
                x = data.get((relay, scen, n))
                if not x or not x["u"]:
                    continue
                ipu = x["total"] / x["u"]
                vs = "–" if n == base or not b0 or not b0["u"] else f"{(ipu / (b0['total'] / b0['u']) - 1) * 100:+.1f} %"
                sc, nu = x["syscalls"], x["nu"] or 1
                tot = sc.get("sys_enter", 0)
                by = ", ".join(f"{k} {v / nu:.2f}" for k, v in sorted(sc.items(), key=lambda kv: -kv[1])
                               if k != "sys_enter" and v / nu >= 0.01)
                cpu = "–"
                if x.get("user_s") is not None:
                    cpu = f"{x['user_s'] / nu * 1e6:.2f} / {x['sys_s'] / nu * 1e6:.2f}"
                L.append(f"| {scen} | {n} | {x['u']:,} / {x['nu']:,} | {ipu:,.0f} | {vs} | {x['allocs'] / x['u']:.2f} | "
                         f"{cpu} | {tot / nu:.2f} | {by} |")
        L.append("")
        for scen in ("echo64", "echo4096", "churn"):
            b0 = data.get((relay, scen, base))
            for n in names[1:]:
                x = data.get((relay, scen, n))
                if not b0 or not x or not b0["u"] or not x["u"]:
                    continue
                fns = set(b0["self_ir"]) | set(x["self_ir"])
                rows = []
                for fn in fns:
                    a = b0["self_ir"].get(fn, 0) / b0["u"]
                    c = x["self_ir"].get(fn, 0) / x["u"]
                    rows.append((c - a, fn, a, c))
                rows.sort(key=lambda r: -abs(r[0]))
                delta = x["total"] / x["u"] - b0["total"] / b0["u"]
                L.append(f"### {relay} / {scen}: where {n} differs from {base} (self Ir per unit; total {delta:+,.0f})\n")
                L.append("Functions were renamed and split by the restructure, so a function present on one side only "
                         "shows its whole cost as the difference; read increases and decreases together.\n")
                L.append(f"| self Ir/unit difference | {base} | {n} | function |")
                L.append("|---:|---:|---:|---|")
                for dlt, fn, a, c in rows[:25]:
                    if abs(dlt) < 1:
                        break
                    L.append(f"| {dlt:+,.0f} | {a:,.0f} | {c:,.0f} | `{short(fn)}` |")
                L.append("")
    with open(os.path.join(d, "summary.md"), "w") as fh:
        fh.write("\n".join(L) + "\n")
    print(os.path.join(d, "summary.md"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
