#!/bin/bash
# Start-up RSS of a wsplice binary, one worker thread, no admin, no access log: three starts,
# /proc/PID/status once it printed "ready", and the worker thread's stack pages (smaps of the
# mapping its stack pointer is in).
#   start-rss.sh flags BIN    started with flags (as bench-results/2026-11-29-embedded-2)
#   start-rss.sh config BIN   started from a TOML file (as tests/gateway.rs starts it)
# `cat BIN >/dev/null` first: the kernel maps text in 64 KiB fault-around windows only from
# pages already in the page cache.
MODE=$1 B=$2; shift 2; cat "$B" > /dev/null
CFG=$(mktemp --suffix .toml)
printf 'listen = ["127.0.0.1:0"]\nworkers = 1\nworker_model = "threads"\n\n[[route]]\nprefix = "/"\nbackends = ["127.0.0.1:9"]\n' > "$CFG"
for i in 1 2 3; do
  if [ "$MODE" = config ]; then
    coproc P { exec "$B" --config "$CFG" "$@" 2>/dev/null; }
  else
    coproc P { exec "$B" --listen 127.0.0.1:0 --route /=127.0.0.1:9 --workers 1 --worker-model threads "$@" 2>/dev/null; }
  fi
  pid=$P_PID
  while read -r -u ${P[0]} line; do [ "$line" = ready ] && break; done
  sleep 0.3
  # The worker's stack: the mapping holding its saved stack pointer (field 29 of stat: kstkesp
  # is 0 for other tasks on recent kernels, so take the [stack]-less anonymous mapping that
  # /proc/PID/task/TID/syscall's sp falls in).
  wtid=$(for t in /proc/$pid/task/*; do [ "$(cat $t/comm)" = wsplice-w0 ] && basename $t; done)
  sp=$(awk '{print $(NF-1)}' /proc/$pid/task/$wtid/syscall 2>/dev/null)
  wstack=$(python3 - "$pid" "$sp" <<'PY'
import sys, re
pid, sp = sys.argv[1], int(sys.argv[2], 16) if sys.argv[2:] and sys.argv[2].startswith('0x') else None
cur = None; out = ''
for line in open(f'/proc/{pid}/smaps'):
    m = re.match(r'^([0-9a-f]+)-([0-9a-f]+) ', line)
    if m:
        lo, hi = int(m.group(1), 16), int(m.group(2), 16)
        cur = sp is not None and lo <= sp < hi
    elif cur and line.startswith('Rss:'):
        out = line.split()[1]
print(out or '?')
PY
)
  printf '%s %s run%d: %s worker-stack-rss: %s kB\n' "$MODE" "$(basename "$B")" $i \
    "$(grep -E 'VmRSS|RssFile|RssAnon|Threads' /proc/$pid/status | awk '{printf "%s %s ", $1, $2}')" "$wstack"
  kill -INT $pid; sleep 0.2; kill -INT $pid 2>/dev/null; sleep 0.5; kill -KILL $pid 2>/dev/null; wait $pid 2>/dev/null
done
rm -f "$CFG"
