#!/bin/bash
# churn (connect, upgrade, one echo, close): syscalls per handshake, per binary
W=/work/main/target/wsbench/release/wsbench
$W --threads 1 backend --listen 127.0.0.1:18680 > /dev/null 2>&1 & BP=$!
sleep 0.5
for b in "$@"; do
  name=${b%%=*}; bin=${b#*=}
  $bin --listen 127.0.0.1:18690 --route /=127.0.0.1:18680 --workers 1 > /dev/null 2>&1 & P=$!
  sleep 0.7
  $W --threads 1 churn --target ws://127.0.0.1:18690/ -c 16 --duration 8 > /tmp/churn-$name.json 2>/dev/null &
  G=$!
  sleep 2
  perf stat -x, -e 'raw_syscalls:sys_enter' -e 'syscalls:sys_enter_*' -p $P -- sleep 4 2> /tmp/churn-$name.perf
  wait $G
  echo "== $name $(grep -o '"handshakes[^,]*' /tmp/churn-$name.json | head -2)"
  awk -F, '$1+0>0 {print $1, $3}' /tmp/churn-$name.perf | sed 's/syscalls:sys_enter_//' | sort -rn | head -25 | tr '\n' ';'; echo
  kill $P; wait $P 2>/dev/null
done
kill $BP
