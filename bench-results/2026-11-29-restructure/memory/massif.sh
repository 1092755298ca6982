#!/usr/bin/env bash
# Heap of the proxy (valgrind massif: live bytes + allocator overhead) right after start and with
# 9,000 idle tunnels held: deterministic bytes per idle tunnel, not moved by other load.
# Proxy on CPU 0, generator + backend on CPU 1. Run: RELAYS="copy splice" ./massif.sh OUTDIR
set -uo pipefail
B=/work/wt-bench/target/wsbench/release/wsbench
OUT=${1:-.}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
taskset -c 1 $B --threads 1 backend --listen 127.0.0.1:18280 > /dev/null 2>&1 & BE=$!
trap 'kill $BE ${PX:-} 2>/dev/null' EXIT
sleep 0.5
heap() { vgdb --pid=$1 detailed_snapshot $2 > /dev/null 2>&1; sleep 1; awk -F= '/mem_heap_B|mem_heap_extra_B/{s+=$2} END{print s}' $2; }
for relay in ${RELAYS:-copy splice}; do
  for name in before after; do
    taskset -c 0 valgrind --tool=massif --massif-out-file=/dev/null /work/$name-bin/wsplice --listen 127.0.0.1:18290 \
        --route /=127.0.0.1:18280 --workers 1 --relay $relay > /dev/null 2>&1 & PX=$!
    for _ in $(seq 100); do port_open 18290 && break; sleep 0.2; done
    h0=$(heap $PX "$OUT/heap-0-$relay-$name.ms")
    taskset -c 1 $B --threads 1 hold --target ws://127.0.0.1:18290/x -n 9000 --rate 500 --hold 25 --pid $PX > "$OUT/h.json" 2>/dev/null & H=$!
    sleep 23; h9=$(heap $PX "$OUT/heap-9000-$relay-$name.ms")
    wait $H
    alive=$(tail -1 "$OUT/h.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["results"]["alive_at_sample"])')
    echo "$relay $name heap_before $h0 heap_with_9000 $h9 alive $alive bytes_per_conn $(( (h9 - h0) / 9000 ))"
    kill $PX; wait $PX 2>/dev/null; PX=""
  done
done
rm -f "$OUT/h.json"
