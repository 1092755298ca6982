#!/bin/bash
# 9,000 idle tunnels: RssAnon / RssFile of the proxy before and while held, per binary
W=${WSBENCH:-target/wsbench/release/wsbench}
taskset -c 1 $W --threads 1 backend --listen 127.0.0.1:18580 > /dev/null 2>&1 & BP=$!
sleep 0.5
for b in "$@"; do
  name=${b%%=*}; bin=${b#*=}
  taskset -c 0 $bin --listen 127.0.0.1:18590 --route /=127.0.0.1:18580 --workers 1 > /dev/null 2>&1 & P=$!
  sleep 1
  a0=$(awk '/RssAnon/{print $2}' /proc/$P/status); f0=$(awk '/RssFile/{print $2}' /proc/$P/status)
  taskset -c 1 $W --threads 1 hold --target ws://127.0.0.1:18590/ --sources 127.0.0.2-127.0.0.40 -n ${N:-9000} --rate 3000 --hold 6 > /dev/null 2>&1 &
  G=$!
  sleep 6
  a1=$(awk '/RssAnon/{print $2}' /proc/$P/status); f1=$(awk '/RssFile/{print $2}' /proc/$P/status)
  wait $G
  echo "$name anon ${a0}->${a1} kB ($(( (a1-a0)*1024/${N:-9000} )) B/conn) file ${f0}->${f1} kB ($(( (f1-f0)*1024/${N:-9000} )) B/conn)"
  kill $P; wait $P 2>/dev/null
done
kill $BP
