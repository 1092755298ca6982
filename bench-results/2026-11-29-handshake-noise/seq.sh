#!/bin/bash
W=/work/main/target/wsbench/release/wsbench
B=/work/cg/s8/wsplice
taskset -c 1 $W --threads 1 backend --listen 127.0.0.1:18680 > /dev/null 2>&1 & BP=$!
sleep 0.5
taskset -c 0 $B --config $(dirname "$0")/ka-on.toml > /tmp/ka/proxy.log 2>&1 & P=$!
sleep 0.7
for rep in $(seq 1 ${N:-6}); do
  tw=$(awk '/^TCP:/{print $7}' /proc/net/sockstat)
  t0=$(awk '{print $14+$15}' /proc/$P/stat)
  taskset -c 1 $W --threads 1 churn --target ws://127.0.0.1:18690/ $SRC -c 16 --duration ${D:-10} > /tmp/ka/seq-$rep.json 2>/dev/null
  t1=$(awk '{print $14+$15}' /proc/$P/stat)
  ok=$(python3 -c "import json;d=json.loads(open('/tmp/ka/seq-$rep.json').read().splitlines()[-1]);print(d['results']['cycles_ok'])")
  echo "rep $rep: tw_before $tw handshakes $ok us/hs $(python3 -c "print(round(($t1-$t0)*10000/$ok,1))")"
  sleep ${GAP:-1}
done
kill $P $BP
