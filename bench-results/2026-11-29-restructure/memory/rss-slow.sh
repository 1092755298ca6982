#!/usr/bin/env bash
# Idle RSS per connection at 9,000 with a slow connect rate (1,000/s: few handshakes in flight, so the
# allocator peak of in-flight handshakes does not vary with load), fresh proxy per run, before/after
# interleaved, proxy on CPU 0 and generator + backend on CPU 1. Output: rss-slow.txt.
set -uo pipefail
B=/work/wt-bench/target/wsbench/release/wsbench
RATE=${RATE:-1000}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
taskset -c 1 $B --threads 1 backend --listen 127.0.0.1:18280 > /dev/null 2>&1 & BE=$!
trap 'kill $BE ${PX:-} 2>/dev/null' EXIT
sleep 0.5
for rep in 1 2 3; do
  for relay in splice copy auto; do
    for name in before after; do
      taskset -c 0 /work/$name-bin/wsplice --listen 127.0.0.1:18290 --route /=127.0.0.1:18280 --workers 1 --relay $relay > /dev/null 2>&1 & PX=$!
      for _ in $(seq 50); do port_open 18290 && break; sleep 0.1; done
      taskset -c 1 $B --threads 1 hold --target ws://127.0.0.1:18290/x -n 1000 --rate 3000 --hold 1 --pid $PX > /dev/null 2>&1
      sleep 1
      base=$($B proc --pid $PX | python3 -c 'import json,sys; print(json.load(sys.stdin)["rss_kb"])')
      out=$(taskset -c 1 $B --threads 1 hold --target ws://127.0.0.1:18290/x -n 9000 --rate $RATE --hold 2 --pid $PX 2>/dev/null | tail -1)
      python3 -c '
import json,sys
r=json.loads(sys.argv[1])["results"]; base=int(sys.argv[2])
print(sys.argv[3], sys.argv[4], sys.argv[5], "base_kb", base, "held_kb", r["proc"]["rss_kb"], "open_s %.2f" % r["open_s"],
      "B/conn %.0f" % ((r["proc"]["rss_kb"] - base) * 1024 / r["alive_at_sample"]))' "$out" "$base" "$relay" "$name" "$rep"
      kill $PX; wait $PX 2>/dev/null; PX=""
    done
  done
done
