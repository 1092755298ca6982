#!/bin/bash
# run.sh BIN [user-prefix...]
W=/work/main/target/wsbench/release/wsbench
BIN=$1; shift
$W backend --listen 127.0.0.1:19100 > /tmp/np/backend.log 2>&1 & BP=$!
"$@" $BIN -c /tmp/np/w.toml > /tmp/np/proxy.log 2>&1 & PP=$!
sleep 1
$W bulk --target ws://127.0.0.1:19101/ -c 300 --bytes 16M --msg-size 64K --threads 1 --timeout 40 > /tmp/np/bulk.json 2>&1
r=$(tail -1 /tmp/np/bulk.json | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(d["ok"], d["errors"], round(d["results"]["secs"],1))')
if echo "$r" | grep -q False; then ss -tanpmi > /tmp/np/ss-all.txt; curl -s 127.0.0.1:19102/metrics > /tmp/np/metrics.txt; fi
echo "$r"
kill $PP $BP; wait $PP $BP 2>/dev/null
