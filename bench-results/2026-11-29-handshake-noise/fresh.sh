#!/bin/bash
W=/work/main/target/wsbench/release/wsbench
B=${B:-/work/cg/s8/wsplice}
taskset -c 1 $W --threads 1 backend --listen 127.0.0.1:18680 > /dev/null 2>&1 & BP=$!
sleep 0.5
for rep in $(seq 1 ${N:-6}); do
  taskset -c 0 $B --config $(dirname "$0")/ka-on.toml > /tmp/ka/proxy.log 2>&1 & P=$!
  sleep 0.7
  st0=$(awk "/^cpu /{print \$9}" /proc/stat); tw=$(awk '/^TCP:/{print $7}' /proc/net/sockstat)
  u0=$(awk "{print \$14}" /proc/$P/stat); s0=$(awk "{print \$15}" /proc/$P/stat); t0=$((u0+s0))
  taskset -c 1 $W --threads 1 churn --target ws://127.0.0.1:18690/ $SRC -c 16 --duration ${D:-10} > /tmp/ka/fr-$rep.json 2>/dev/null
  u1=$(awk "{print \$14}" /proc/$P/stat); s1=$(awk "{print \$15}" /proc/$P/stat); t1=$((u1+s1))
  st1=$(awk "/^cpu /{print \$9}" /proc/stat); ok=$(python3 -c "import json;d=json.loads(open('/tmp/ka/fr-$rep.json').read().splitlines()[-1]);print(d['results']['cycles_ok'])")
  echo "rep $rep: pid $P tw_before $tw handshakes $ok user $((u1-u0)) sys $((s1-s0)) steal $((st1-st0)) us/hs $(python3 -c "print(round(($t1-$t0)*10000/$ok,1))")"
  kill $P; wait $P 2>/dev/null
  sleep ${GAP:-1}
done
kill $BP
