#!/bin/bash
W=${WSBENCH:-target/wsbench/release/wsbench}
taskset -c 1 $W --threads 1 backend --listen 127.0.0.1:18880 > /dev/null 2>&1 & BP=$!
sleep 0.5
for b in "$@"; do
  name=${b%%=*}; bin=${b#*=}
  valgrind --tool=callgrind --callgrind-out-file=/tmp/olcg-$name.out $bin --listen 127.0.0.1:18890 --route /=127.0.0.1:18880 --workers 1 --relay auto > /tmp/olcg-$name.log 2>&1 & P=$!
  for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/18890) 2>/dev/null && break; sleep 0.2; done
  $W --threads 1 echo --target ws://127.0.0.1:18890/ --sources 127.0.0.2-127.0.0.40 -c 200 --size 64 --duration 10 --rate 1000 --connect-rate 500 2>/dev/null > /tmp/olcg-$name.json; python3 -c "import json,sys; d=json.load(open(sys.argv[1])); r=d[\"results\"]; print(\"echoes\", {k:v for k,v in r.items() if isinstance(v,(int,float))})" /tmp/olcg-$name.json
  kill -INT $P; sleep 1; kill -INT $P; wait $P 2>/dev/null
  callgrind_annotate /tmp/olcg-$name.out 2>/dev/null | head -30 > /tmp/olcg-$name.top
  grep -m1 "PROGRAM TOTALS" /tmp/olcg-$name.top
done
kill $BP
