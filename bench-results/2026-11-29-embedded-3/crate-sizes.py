#!/usr/bin/env python3
"""Bytes of code and data per crate in an unstripped binary (`nm --size-sort -S -C`).
usage: crate-sizes.py BIN [TOP]  -- prints the crates by size, then the TOP biggest symbols.
A symbol is charged to the first path segment of its demangled name (`<T as Trait>` to T's crate);
names without a path (C: musl, ring's asm and C) go to `[C]`."""
import re, subprocess, sys
from collections import Counter
b = sys.argv[1]; top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
out = subprocess.run(['nm', '--size-sort', '-S', '-C', b], capture_output=True, text=True).stdout
by = Counter(); kinds = Counter(); syms = []
for line in out.splitlines():
    parts = line.split(' ', 3)
    if len(parts) < 4: continue
    size = int(parts[1], 16); kind = parts[2].lower(); name = parts[3]
    n = name.lstrip('<&*').replace('dyn ', '').replace('mut ', '')
    m = re.match(r'([A-Za-z_][A-Za-z0-9_]*)::', n)
    crate = m.group(1) if m else '[C]'
    key = 'text' if kind in 't' else 'data'
    by[(crate, key)] += size; kinds[key] += size
    syms.append((size, kind, name))
crates = Counter()
for (c, k), v in by.items(): crates[c] += v
print(f"total symbols: text {kinds['text']:,} B, data {kinds['data']:,} B")
for c, v in crates.most_common(25):
    print(f"{v:>10,}  {c:<20} (text {by[(c,'text')]:,}, data {by[(c,'data')]:,})")
print()
for size, kind, name in sorted(syms, reverse=True)[:top]:
    print(f"{size:>8,} {kind} {name[:150]}")
