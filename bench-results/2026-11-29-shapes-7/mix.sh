#!/bin/bash
# Which bytes `auto` spliced and which it copied, per shape cell, for two binaries: one pinned
# worker (CPU 0), wsbench shapes for 3 s (CPU 1), then wsplice's /metrics.
#   DIR=/dir/with/s9/and/s8 bench-results/2026-11-29-shapes-7/mix.sh   (from the repository root)
set -u
W=${WSBENCH:-target/wsbench/release/wsbench}
DIR=${DIR:-/work/cg}
T=$(mktemp -d)
for bin in s9 s8; do
for cell in "16K whole" "16K stream" "1K whole" "64K stream" "1M whole" "32K whole"; do
  set -- $cell
  cat > "$T/cfg.toml" <<T
listen = ["127.0.0.1:47300"]
workers = 1
admin = "127.0.0.1:47390"
[[route]]
prefix = "/"
backends = ["127.0.0.1:47301"]
T
  taskset -c 0 "$DIR/$bin/wsplice" --config "$T/cfg.toml" >"$T/proxy.log" 2>&1 &
  P=$!; sleep 0.5
  taskset -c 1 "$W" --threads 1 shapes --proxy "x=ws://127.0.0.1:47300/@$P" --backend 127.0.0.1:47301 --sizes "$1" --writers "$2" --duration 3 >/dev/null 2>&1
  m=$(curl -s 127.0.0.1:47390/metrics)
  sp=$(echo "$m" | awk '$1=="wsplice_bytes_spliced_total"{print $2}')
  cp=$(echo "$m" | awk '$1=="wsplice_bytes_copied_total"{print $2}')
  echo "$bin $1 $2 spliced=$sp copied=$cp share=$(python3 -c "print(round($sp/max(1,$sp+$cp),3))")"
  kill $P; wait $P 2>/dev/null
done; done
rm -rf "$T"
