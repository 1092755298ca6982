#!/usr/bin/env bash
# bursts.sh BIN RELAY SIZE WRITER OUT  -- syscall return sizes of the proxy during one shapes cell
set -eu
BIN=$1; RELAY=$2; SIZE=$3; WRITER=$4; OUT=$5
cd /work/main
fp() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BP=$(fp); PP=$(fp)
$BIN --listen 127.0.0.1:$PP --route /=127.0.0.1:$BP --workers 1 --relay $RELAY >/dev/null 2>&1 &
PX=$!
sleep 0.5
target/wsbench/release/wsbench --threads 2 shapes --proxy "$RELAY=ws://127.0.0.1:$PP/@$PX" --repeats 1 --backend 127.0.0.1:$BP -c 8 --sizes $SIZE --writers $WRITER --duration 4 > $OUT.json 2>/dev/null &
WB=$!
sleep 1.5
perf record -q -o $OUT.perf -e syscalls:sys_exit_recvfrom,syscalls:sys_exit_sendto,syscalls:sys_exit_splice,syscalls:sys_exit_epoll_wait,syscalls:sys_exit_ioctl -p $PX -- sleep 1 >/dev/null 2>&1
wait $WB || true
kill $PX; wait $PX 2>/dev/null || true
perf script -i $OUT.perf 2>/dev/null | python3 -c '
import sys,collections,re
c=collections.Counter(); b=collections.defaultdict(collections.Counter)
for l in sys.stdin:
    m=re.search(r"sys_exit_(\w+): 0x([0-9a-f]+)",l)
    if not m: continue
    name=m.group(1); v=int(m.group(2),16)
    if v>1<<63: v-= 1<<64
    c[name]+=1
    if v<=0: k=str(v)
    else: k="%dK"%(1<<max(0,(v-1).bit_length()-10)) if v>1024 else "<=1K"
    b[name][k]+=1
for n in c:
    print(n,c[n],dict(sorted(b[n].items(),key=lambda x:-x[1])[:8]))
'
