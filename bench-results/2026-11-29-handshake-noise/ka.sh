#!/bin/bash
# churn CPU per handshake: wsplice default vs [keepalive] idle = 0, pinned, alternating
W=/work/main/target/wsbench/release/wsbench
B=/work/cg/s8/wsplice
taskset -c 1 $W --threads 1 backend --listen 127.0.0.1:18680 > /dev/null 2>&1 & BP=$!
sleep 0.5
for rep in 1 2 3 4; do
for mode in on off; do
  args=(--config $(dirname "$0")/ka-$mode.toml)
  taskset -c 0 $B "${args[@]}" > /tmp/ka/proxy-$mode.log 2>&1 & P=$!
  sleep 0.7
  t0=$(awk '{print $14+$15}' /proc/$P/stat)
  taskset -c 1 $W --threads 1 churn --target ws://127.0.0.1:18690/ -c 16 --duration 10 > /tmp/ka/churn-$mode-$rep.json 2>/dev/null
  t1=$(awk '{print $14+$15}' /proc/$P/stat)
  ok=$(python3 -c "import json;d=json.loads(open('/tmp/ka/churn-$mode-$rep.json').read().splitlines()[-1]);print(d['results']['cycles_ok'])")
  echo "$mode rep $rep: handshakes $ok cpu_ticks $((t1-t0)) us/hs $(python3 -c "print(round(($t1-$t0)*10000/$ok,1))")"
  kill $P; wait $P 2>/dev/null
  sleep 1
done
done
kill $BP
