#!/bin/bash
# open-loop echo 1000 conns, 5000 msg/s: per-thread CPU, faults, ctx switches, syscalls per binary
W=${WSBENCH:-target/wsbench/release/wsbench}
taskset -c 1 $W --threads 1 backend --listen 127.0.0.1:18780 > /dev/null 2>&1 & BP=$!
sleep 0.5
for b in "$@"; do
  name=${b%%=*}; bin=${b#*=}
  taskset -c 0 $bin --listen 127.0.0.1:18790 --route /=127.0.0.1:18780 --workers 1 --relay auto > /dev/null 2>&1 & P=$!
  sleep 0.7
  taskset -c 1 $W --threads 1 echo --target ws://127.0.0.1:18790/ --sources 127.0.0.2-127.0.0.40 -c 1000 --size 64 --duration 14 --rate 5000 --connect-rate 3000 > /tmp/ol-$name.json 2>/dev/null &
  G=$!
  sleep 2
  for t in /proc/$P/task/*; do echo "$(cat $t/comm) $(awk "{print \$14, \$15}" $t/stat)"; done > /tmp/t0
  perf stat -x, -e 'task-clock,page-faults,context-switches,cpu-migrations,syscalls:sys_enter_brk,syscalls:sys_enter_mmap,syscalls:sys_enter_munmap,syscalls:sys_enter_madvise,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_futex,syscalls:sys_enter_clock_gettime' -p $P -- sleep 10 2> /tmp/ol-$name.perf
  for t in /proc/$P/task/*; do echo "$(cat $t/comm) $(awk "{print \$14, \$15}" $t/stat)"; done > /tmp/t1
  wait $G
  echo "== $name"; paste /tmp/t0 /tmp/t1 | awk '{print $1, "u=" $5-$2, "s=" $6-$3}' | tr '\n' ';'; echo
  awk -F, '{printf "%s=%s ", $3, $1}' /tmp/ol-$name.perf | sed 's/syscalls:sys_enter_//g'; echo
  kill $P; wait $P 2>/dev/null
done
kill $BP
