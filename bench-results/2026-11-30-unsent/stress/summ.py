import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
pk = max(rows, key=lambda r: r["mem_pages"])
print("peak tcp mem pages", pk["mem_pages"], "=%.0f MiB" % (pk["mem_pages"]*4096/2**20))
for k in ["client", "proxy_front", "proxy_back", "backend"]:
    mx = lambda i: max((r["cls"].get(k, [0]*8)[i] for r in rows), default=0)
    print("%-12s n=%4d  max sum r=%6.0f MiB  max sum rb=%6.0f MiB  max sum t=%6.0f MiB  max sum tb=%6.0f MiB  drops=%d max rb=%.1f MiB max sum w=%.0f MiB" % (
        k, mx(0), mx(1)/2**20, mx(2)/2**20, mx(3)/2**20, mx(4)/2**20, mx(5), mx(6)/2**20, mx(7)/2**20))
