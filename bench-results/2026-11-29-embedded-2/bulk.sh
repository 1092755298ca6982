#!/usr/bin/env bash
# Proxy CPU per GiB of bulk echo (wsbench bulk: 4 connections x 256 MiB, 64 KiB messages, each
# byte sent up and echoed back, so 1 GiB each way), per binary, REPEATS times, interleaved.
#   bulk.sh RELAY REPEATS NAME=BIN...    (one worker on CPU 0; wsbench backend and client on CPU 1)
# Prints one JSON line per run: proxy user+sys CPU seconds (/proc/PID/stat), wall, foreign CPU.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WSBENCH=$ROOT/target/wsbench/release/wsbench
RELAY=$1 REPEATS=$2; shift 2
BP=18480 PP=18490
TCK=$(getconf CLK_TCK)
taskset -c 1 "$WSBENCH" --threads 1 backend --listen 127.0.0.1:$BP > /tmp/bulk-backend.out 2>&1 &
BPID=$!
trap 'kill $BPID 2>/dev/null' EXIT
sleep 1
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
busy() { awk 'NR == 1 {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
for r in $(seq 1 "$REPEATS"); do
  for nb in "$@"; do
    name=${nb%%=*} bin=${nb#*=}
    taskset -c 0 "$bin" --listen 127.0.0.1:$PP --route /=127.0.0.1:$BP --workers 1 \
        --worker-model threads --relay "$RELAY" > /tmp/bulk-proxy.out 2>&1 &
    px=$!
    for _ in $(seq 50); do grep -qx ready /tmp/bulk-proxy.out && break; sleep 0.1; done
    t0=$(ticks $px) b0=$(busy) w0=$(date +%s.%N)
    taskset -c 1 "$WSBENCH" --threads 1 bulk --target ws://127.0.0.1:$PP/ -c 4 --bytes 256M > /tmp/bulk-client.out 2>&1
    t1=$(ticks $px) b1=$(busy) w1=$(date +%s.%N)
    kill -INT $px; kill -INT $px 2>/dev/null || true; wait $px 2>/dev/null || true
    ok=$(grep -c '"ok":true' /tmp/bulk-client.out || true)
    python3 -c "
import json,sys
t=($t1-$t0)/$TCK; b=($b1-$b0)/$TCK; w=$w1-$w0
print(json.dumps({'run':$r,'name':'$name','relay':'$RELAY','proxy_cpu_s_per_GiB_each_way':round(t,2),'wall_s':round(w,2),'foreign_cpu_s':round(b-t,2),'client_ok':$ok}))"
  done
done
