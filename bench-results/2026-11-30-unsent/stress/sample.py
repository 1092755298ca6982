import subprocess, re, time, sys, json
# sample.py OUT SECONDS: every 0.5 s, skmem by socket class, plus /proc/net/sockstat TCP mem
out = open(sys.argv[1], "w"); end = time.time() + float(sys.argv[2])
pat = re.compile(r"skmem:\(r(\d+),rb(\d+),t(\d+),tb(\d+),f\d+,w(\d+),o\d+,bl\d+,d(\d+)\)")
while time.time() < end:
    t0 = time.time()
    txt = subprocess.run(["ss", "-tnmi", "state", "established"], capture_output=True, text=True).stdout
    cls = {}
    lines = txt.splitlines()
    cur = None
    for ln in lines:
        parts = ln.split()
        if not ln[:1].isspace() and len(parts) >= 4 and ":" in parts[2] and ":" in parts[3]:
            l, p = parts[2], parts[3]
            if l.endswith(":19101"): cur = "proxy_front"
            elif p.endswith(":19101"): cur = "client"
            elif p.endswith(":19100"): cur = "proxy_back"
            elif l.endswith(":19100"): cur = "backend"
            else: cur = None
        m = pat.search(ln)
        if m and cur:
            r, rb, t, tb, w, d = map(int, m.groups())
            c = cls.setdefault(cur, [0, 0, 0, 0, 0, 0, 0, 0])
            c[0] += 1; c[1] += r; c[2] += rb; c[3] += t; c[4] += tb; c[5] += d; c[6] = max(c[6], rb); c[7] += w
            cur = None
    mem = [l for l in open("/proc/net/sockstat") if l.startswith("TCP:")][0].split()
    mem = int(mem[mem.index("mem") + 1])
    out.write(json.dumps({"t": round(t0, 2), "mem_pages": mem, "cls": cls}) + "\n"); out.flush()
    time.sleep(max(0, 0.5 - (time.time() - t0)))
