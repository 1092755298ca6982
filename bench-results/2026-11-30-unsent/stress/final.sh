#!/bin/bash
# final.sh TAG CMD...: one stress run through run.sh, then one summary line
TAG=$1; shift
line=$(./run.sh "$TAG" "$@" 2>/dev/null | head -1)
python3 - "$TAG" "$line" <<'PY'
import json, sys, re
tag, line = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(f"s-{tag}.jsonl")]
pk = max(rows, key=lambda r: r["mem_pages"])
c = pk["cls"]; g = lambda k, i: c.get(k, [0]*8)[i] / 2**20
own = g("proxy_front",1)+g("proxy_back",1)+g("proxy_front",7)+g("proxy_back",7)
gen = g("client",1)+g("backend",1)+g("client",7)+g("backend",7)
m = re.match(r"\S+: (\w+) (\{.*?\}) ([\d.]+)\s*(.*)", line)
ok, err, secs, ctr = m.groups()
ctr = dict(x.split("=") for x in ctr.split())
print(f"| {tag} | {ok} | {secs} | {ctr.get('TcpExtTCPMemoryPressures','0')} | {ctr.get('TcpExtTCPRcvQDrop','0')} | {pk['mem_pages']*4096/2**20:.0f} | {own:.0f} | {gen:.0f} |")
PY
