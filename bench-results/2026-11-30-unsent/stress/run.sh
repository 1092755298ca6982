#!/bin/bash
# run.sh TAG CMD...: backend, proxy from CMD, sampler, bulk run
W=/work/main/target/wsbench/release/wsbench
TAG=$1; shift
nstat -n >/dev/null
$W backend --listen 127.0.0.1:19100 > ./backend.log 2>&1 & BP=$!
"$@" > ./proxy-$TAG.log 2>&1 & PP=$!
sleep 1
python3 sample.py ./s-$TAG.jsonl 45 & SP=$!
$W bulk --target ws://127.0.0.1:19101/ -c 300 --bytes 16M --msg-size 64K --threads 1 --timeout 40 > ./bulk-$TAG.json 2>&1
kill $SP
r=$(tail -1 ./bulk-$TAG.json | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(d["ok"], d["errors"], round(d["results"]["secs"],1))')
echo "$TAG: $r  $(nstat 2>/dev/null | egrep 'TcpExtTCPRcvQDrop|TcpExtTCPMemoryPressures |TcpRetransSegs' | awk '{printf "%s=%s ",$1,$2}')"
python3 ./summ.py ./s-$TAG.jsonl
kill $PP $BP; wait $PP $BP 2>/dev/null
