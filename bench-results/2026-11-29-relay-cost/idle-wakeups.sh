#!/usr/bin/env bash
# idle wakeups: hold 1000 idle tunnels (default 1 h idle timeout), count the proxy's epoll_wait calls in 10 s
W=/work/main/target/wsbench/release/wsbench
for round in 1 2 3; do
for name in before after; do
  bin=/work/cg/pump/wsplice; [ $name = after ] && bin=/work/cg/wheel/wsplice
  $W --threads 1 backend --listen 127.0.0.1:18480 >/dev/null 2>&1 & BP=$!
  $bin --listen 127.0.0.1:18490 --route /=127.0.0.1:18480 --workers 1 >/dev/null 2>&1 & PP=$!
  sleep 0.5
  $W --threads 1 hold --target ws://127.0.0.1:18490/x -n 1000 --hold 14 > /tmp/idle/hold-$name.json 2>/dev/null & HP=$!
  sleep 3
  out=$(perf stat -e 'syscalls:sys_enter_epoll_wait' -p $PP -x, -- sleep 10 2>&1 | grep epoll_wait | cut -d, -f1)
  echo "$name round $round: epoll_wait calls in 10 s with 1000 idle tunnels: $out"
  wait $HP; kill $PP $BP 2>/dev/null; wait $PP $BP 2>/dev/null
done; done
