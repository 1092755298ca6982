#!/bin/bash
# churn CPU per handshake, alternating: nginx, wsplice main, wsplice close-on-first-FIN variant.
# Proxy pinned to CPU 0, generator and backend to CPU 1. A fresh proxy per run.
W=/work/main/target/wsbench/release/wsbench
MAIN=/work/cg/s8/wsplice
FIN=${FIN:?a build with close-on-first-fin.diff applied}
D=${D:-8}
# nginx as tools/compare runs it (one worker), on port 18691 in front of the same backend.
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p /tmp/ngx
sed -e "s|@WORKERS@|1|g" -e "s|@PORT@|18691|g" -e "s|@BACKEND_PORT@|18680|g" -e "s|@TMP@|/tmp/ngx|g" \
    -e "s|@USER_LINE@|$([ "$(id -u)" = 0 ] && echo 'user root;')|g" "$ROOT/tools/nginx.conf.in" > /tmp/ngx/nginx.conf
taskset -c 1 $W --threads 1 backend --listen 127.0.0.1:18680 > /dev/null 2>&1 & BP=$!
sleep 0.5
ticks() { local s=0; for p in "$@"; do s=$((s + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $s; }
for round in $(seq 1 ${N:-4}); do
  order="nginx main fin"; [ $((round % 2)) = 0 ] && order="fin main nginx"
  for who in $order; do
    case $who in
      nginx) taskset -c 0 /usr/sbin/nginx -p /tmp/ngx -c /tmp/ngx/nginx.conf -e /tmp/ngx/err.log > /dev/null 2>&1 & sleep 0.8; PIDS=$(pgrep -f "nginx: worker"); URL=ws://127.0.0.1:18691/notice ;;
      main) taskset -c 0 $MAIN --config $(dirname "$0")/ka-on.toml > /dev/null 2>&1 & PIDS=$!; sleep 0.8; URL=ws://127.0.0.1:18690/ ;;
      fin) taskset -c 0 $FIN --config $(dirname "$0")/ka-on.toml > /dev/null 2>&1 & PIDS=$!; sleep 0.8; URL=ws://127.0.0.1:18690/ ;;
    esac
    t0=$(ticks $PIDS)
    taskset -c 1 $W --threads 1 churn --target $URL --sources 127.0.0.2-127.0.0.40 -c 16 --duration $D > /tmp/attr/c.json 2>/dev/null
    t1=$(ticks $PIDS)
    ok=$(python3 -c "import json;d=json.loads(open('/tmp/attr/c.json').read().splitlines()[-1]);print(d['results']['cycles_ok'], d.get('ok'))")
    n=${ok% *}
    echo "round $round $who handshakes $ok us/hs $(python3 -c "print(round(($t1-$t0)*10000/$n,1))")"
    if [ $who = nginx ]; then /usr/sbin/nginx -p /tmp/ngx -c /tmp/ngx/nginx.conf -s quit 2>/dev/null; sleep 1; pkill -f "nginx: master" ; else kill $PIDS; wait $PIDS 2>/dev/null; fi
    sleep 1
  done
done
kill $BP
