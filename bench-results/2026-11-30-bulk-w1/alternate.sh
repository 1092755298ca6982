#!/bin/bash
# The compare's bulk scenario (wsbench bulk: 4 connections, 64 KiB binary messages, 512 MiB each
# way per connection, through the wsbench echo backend) against two wsplice binaries in
# alternation, s9 (9e1be22, the 32 KiB rule) and s8 (before it), one pinned worker (CPU 0), the
# generator and backend on CPU 1; CPU from /proc/PID/stat (utime+stime, 10 ms ticks), bytes
# spliced and copied from /metrics. Run from a scratch directory (it writes cfg.toml there).
set -u
W=/work/main/target/wsbench/release/wsbench
taskset -c 1 $W backend --threads 1 --listen 127.0.0.1:47301 >/dev/null 2>&1 &
B=$!
sleep 0.3
for bin in s9 s8 s8 s9 s9 s8 s8 s9 s9 s8 s8 s9 s9 s8 s8 s9; do
  cat > cfg.toml <<T
listen = ["127.0.0.1:47300"]
workers = 1
admin = "127.0.0.1:47390"
[[route]]
prefix = "/"
backends = ["127.0.0.1:47301"]
T
  taskset -c 0 /work/cg/$bin/wsplice --config cfg.toml >proxy.log 2>&1 &
  P=$!; sleep 0.5
  t0=$(awk '{print $14+$15}' /proc/$P/stat)
  out=$(taskset -c 1 $W bulk --threads 1 --target ws://127.0.0.1:47300/ -c 4 --bytes 512M 2>/dev/null | tail -1)
  t1=$(awk '{print $14+$15}' /proc/$P/stat)
  m=$(curl -s 127.0.0.1:47390/metrics)
  sp=$(echo "$m" | awk '$1=="wsplice_bytes_spliced_total"{print $2}')
  cp=$(echo "$m" | awk '$1=="wsplice_bytes_copied_total"{print $2}')
  echo "$bin spliced=$sp copied=$cp share=$(python3 -c "print(round($sp/max(1,$sp+$cp),4))") cpu_ticks=$((t1-t0)) s_per_gb=$(python3 -c "print(round(($t1-$t0)/100/(($sp+$cp)/1e9),3))")"
  kill $P; wait $P 2>/dev/null
done
kill $B
