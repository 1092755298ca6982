#!/bin/bash
# Start-up RSS of a wsplice binary: three starts with one worker thread, no admin, no access log;
# /proc/PID/status once it printed "ready". `cat BIN >/dev/null` first (the binary in the page
# cache: the kernel maps its text in 64 KiB fault-around windows only from cached pages).
# usage: start-rss.sh BIN [extra args]: start 3 times, print VmRSS RssFile RssAnon threads after "ready"
B=$1; shift; cat "$B" > /dev/null
for i in 1 2 3; do
  coproc P { exec "$B" --listen 127.0.0.1:0 --route /=127.0.0.1:9 --workers 1 --worker-model threads "$@" 2>/dev/null; }
  pid=$P_PID
  while read -r -u ${P[0]} line; do [ "$line" = ready ] && break; done
  sleep 0.3
  printf '%s run%d: %s\n' "$(basename $(dirname $B))" $i "$(grep -E 'VmRSS|RssFile|RssAnon|Threads' /proc/$pid/status | awk '{printf "%s %s ", $1, $2}')"
  kill -INT $pid; sleep 0.2; kill -INT $pid 2>/dev/null; sleep 0.5; kill -KILL $pid 2>/dev/null; wait $pid 2>/dev/null
done
