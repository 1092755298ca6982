#!/usr/bin/env bash
# perf (cpu-clock sampling) on the proxy during closed-loop echo and churn; before/after interleaved.
set -uo pipefail
B=/work/wt-bench/target/wsbench/release/wsbench
OUT=$1; mkdir -p "$OUT"
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
taskset -c 1 $B --threads 1 backend --listen 127.0.0.1:18280 > /dev/null 2>&1 & BE=$!
trap 'kill $BE ${PX:-} 2>/dev/null' EXIT
sleep 0.5
for rep in 1 2; do
for relay in copy splice; do
  for scen in echo churn; do
    [ $relay = splice ] && [ $scen = churn ] && continue
    for name in before after; do
      taskset -c 0 /work/$name-bin/wsplice --listen 127.0.0.1:18290 --route /=127.0.0.1:18280 --workers 1 --relay $relay > /dev/null 2>&1 & PX=$!
      for _ in $(seq 50); do port_open 18290 && break; sleep 0.1; done
      taskset -c 1 $B --threads 1 echo --target ws://127.0.0.1:18290/x -c 10 --duration 1 > /dev/null 2>&1
      f="$OUT/$relay-$name-$scen-$rep"
      perf record -q -F 2000 -e cpu-clock -g -p $PX -o $f.data 2>/dev/null & PF=$!
      sleep 0.3
      if [ $scen = echo ]; then args=(echo -c 100 --size 64); else args=(churn -c 32); fi
      read u0 s0 < <(sed 's/.*) //' /proc/$PX/stat | awk '{print $12, $13}')
      taskset -c 1 $B --threads 1 "${args[@]}" --target ws://127.0.0.1:18290/x --duration 10 > $f.json 2>/dev/null
      read u1 s1 < <(sed 's/.*) //' /proc/$PX/stat | awk '{print $12, $13}')
      kill -INT $PF; wait $PF 2>/dev/null
      kill $PX; wait $PX 2>/dev/null; PX=""
      echo "$relay $name $scen $rep user_ticks $((u1-u0)) sys_ticks $((s1-s0)) $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"]; print("units", r.get("received") or r.get("cycles_ok"))' $f.json)" | tee -a "$OUT/ticks.txt"
    done
  done
done
done
