#!/bin/sh
# bench-agent.sh DEVICE: run the benchmark's fio jobs on DEVICE when dom0 asks.
# Runs in the benchmark's Linux guests (on /dev/xvda) and in the Linux driver
# domain (on its /dev/nvme0n1, the "raw" set-up).
#
# dom0 writes "<seq> <tag> <fio options...>" to this domain's data/bench/cmd
# (relative xenstore paths are under /local/domain/<own domid>). The agent
# blocks in xenstore-watch (no polling load while other set-ups measure), runs
# each new <seq> once and prints on its console, which xenconsoled logs in dom0:
#   BENCH-BEGIN <seq> <tag> t=<uptime>
#   BENCH-J <line of fio's JSON output>     (every line)
#   BENCH-E <line of fio's stderr>          (at most 20)
#   BENCH-END <seq> rc=<fio status> secs=<wall time>
# A write landing between a read and the next watch is not lost for good: dom0
# rewrites the command until it sees BENCH-BEGIN.
dev=$1
up() { cut -d' ' -f1 /proc/uptime; }
last=""
echo "BENCH-AGENT ready on $dev t=$(up)"
while :; do
    cmd=$(xenstore-read data/bench/cmd 2>/dev/null)
    seq=${cmd%% *}
    if [ -n "$cmd" ] && [ "$seq" != "$last" ]; then
        last=$seq
        set -- $cmd
        shift
        tag=$1
        shift
        t0=$(up)
        echo "BENCH-BEGIN $seq $tag t=$t0"
        fio --name="$tag" --filename="$dev" --output-format=json "$@" >/tmp/fio.json 2>/tmp/fio.err
        rc=$?
        sed 's/^/BENCH-J /' /tmp/fio.json
        head -n 20 /tmp/fio.err | sed 's/^/BENCH-E /'
        echo "BENCH-END $seq rc=$rc secs=$(awk -v a="$t0" -v b="$(up)" 'BEGIN{printf "%.1f", b-a}')"
        continue
    fi
    # Returns after the first change (the first event is the registration's own).
    xenstore-watch -n 2 data/bench/cmd >/dev/null 2>&1 || sleep 1
done
