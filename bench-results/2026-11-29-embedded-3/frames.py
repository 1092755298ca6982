#!/usr/bin/env python3
"""Stack frame sizes of an unstripped x86_64 binary, from its prologues (objdump -d -C):
pushes + `sub $N,%rsp` + a probe loop's `sub $N,%r11` (frames over a page are probed, every page
touched). usage: frames.py BIN [MIN_BYTES]  -- functions with frames >= MIN_BYTES (default 2048)."""
import re, subprocess, sys
b = sys.argv[1]; lo = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
p = subprocess.Popen(['objdump', '-d', '-C', '--no-show-raw-insn', b], stdout=subprocess.PIPE, text=True)
name = None; n = 0; frame = 0; res = []
def done():
    if name is not None and frame >= lo: res.append((frame, name))
for line in p.stdout:
    m = re.match(r'^[0-9a-f]+ <(.*)>:$', line)
    if m:
        done(); name = m.group(1); n = 0; frame = 0; continue
    if name is None: continue
    n += 1
    if n > 40: continue
    if re.search(r'\tpush +%', line): frame += 8
    m = re.search(r'\tsub +\$0x([0-9a-f]+),%r(sp|11)$', line)
    if m: frame += int(m.group(1), 16)
    # A probe loop's body (sub $0x1000,%rsp) runs until %rsp reaches %r11: already counted.
    if m and m.group(2) == '11': frame -= 0x1000
done()
for f, nm in sorted(res, reverse=True):
    print(f"{f:>8,}  {nm[:160]}")
