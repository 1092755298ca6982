#!/bin/bash
# run-peer.sh CMD...: the same bulk run against any proxy started by CMD on 127.0.0.1:19101
W=/work/main/target/wsbench/release/wsbench
$W backend --listen 127.0.0.1:19100 > /tmp/np/backend.log 2>&1 & BP=$!
"$@" > /tmp/np/peer.log 2>&1 & PP=$!
sleep 1
$W bulk --target ws://127.0.0.1:19101/ -c 300 --bytes 16M --msg-size 64K --threads 1 --timeout 40 > /tmp/np/bulk.json 2>&1
tail -1 /tmp/np/bulk.json | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(d["ok"], d["errors"], round(d["results"]["secs"],1))'
kill $PP $BP; wait $PP $BP 2>/dev/null
