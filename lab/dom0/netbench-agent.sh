#!/bin/sh
# netbench-agent.sh: the Linux PV guests of `./run.sh bench net`
# (lab/modes/benchnet.sh; configs/guest-net.cfg with lab.phase=netbench;
# lab/dom0/guest.sh runs it after loading the modules, xen-netfront among them).
#
# Setup (as net-agent.sh): waits up to 30 s for eth0, gives it lab.ip=A.B.C.D/N,
# brings it up, adds a default route via lab.gw=, waits up to 10 s for carrier:
#   GUEST-RESULT net-if PASS|FAIL <detail>
#   GUEST-DONE netbench
# Then dom0 writes "<seq> <verb> <args...>" to this domain's data/netbench/cmd
# (relative to /local/domain/<own domid>); each new <seq> runs once (as
# bench-agent.sh's data/bench/cmd):
#   NB-BEGIN <seq> <verb> t=<uptime>
#   NB-J <line of fio's JSON output>      (tx, rxwait: every line)
#   NB-P <rtt in ms>                      (ping: one line per reply)
#   NB-E <line of stderr>                 (at most 10)
#   NB-END <seq> <verb> rc=<status> [key=value ...]
# Verbs (each bounded in time; the figures are fio's or ping's, dom0 judges):
#   rx tcp|udp PORT BS SECS   starts a fio net receiver in the background and
#                             ends once its socket is bound (ready=yes|no).
#                             tcp: --listen, ends at the sender's EOF;
#                             udp: time_based SECS from the sender's first
#                             datagram (fio's link-open message)
#   rxwait SECS               waits at most SECS for that receiver to end and
#                             prints its JSON; still running then: killed,
#                             rc=timeout, no JSON (never a partial figure)
#   tx tcp|udp HOST PORT BS SECS RAMP
#                             a fio net sender, time_based SECS after RAMP s of
#                             warm-up (not counted), JSON printed
#   ping HOST COUNT INTERVAL  busybox ping; NB-P per reply; sent= received=
#                             median= mean= min= max= (ms)
#   waitping HOST SECS        one-packet pings until a reply: ok=yes|no after=S
# fio is the static fio of the guest's initramfs (its "net" engine); its stdout
# starts with "fio: waiting for connection" on a tcp receiver: dom0 and
# bench/netreport.py read from the first "{".
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "GUEST-$*"; }
cmdarg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^lab\.$1=//p" | tail -n 1; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.1f", b - a }'; }
D=/sys/class/net/eth0
ip=$(cmdarg ip)
gw=$(cmdarg gw)

t0=$(up)
i=0
while [ ! -e $D ] && [ $i -lt 150 ]; do i=$((i + 1)); sleep 0.2; done
if [ ! -e $D ]; then
    say "RESULT net-if FAIL no eth0 within 30 s of loading xen-netfront"
    dmesg | grep -iE 'netfront|vif|xen' | tail -n 12 | sed 's/^/GUEST-INFO dmesg: /'
else
    ip link set eth0 up
    [ -n "$ip" ] && ip addr add "$ip" dev eth0
    [ -n "$gw" ] && ip route add default via "$gw" 2>/dev/null
    i=0
    while [ "$(cat $D/carrier 2>/dev/null)" != 1 ] && [ $i -lt 50 ]; do i=$((i + 1)); sleep 0.2; done
    c=$(cat $D/carrier 2>/dev/null)
    v=PASS; [ "$c" = 1 ] || v=FAIL
    say "RESULT net-if $v eth0 mac=$(cat $D/address) ip=$ip gw=$gw carrier=${c:-?} tx_queues=$(ls -d $D/queues/tx-* 2>/dev/null | wc -l) $(since "$t0") s after xen-netfront was loaded"
fi
say "DONE netbench"

# fio_net ARGS...: the options every fio net job shares.
fio_net() { fio --ioengine=net --size=100g --output-format=json "$@"; }

# The receiver runs in a subshell that records fio's pid and, once fio has
# ended, its status (/tmp/rx.rc): a finished child is not mistaken for a
# running one (kill -0 succeeds on a zombie until the shell reaps it).
RXON=no RXOUT=/tmp/rx.json
rx_kill() { [ -s /tmp/rx.pid ] && kill -9 "$(cat /tmp/rx.pid)" 2>/dev/null; }
do_rx() { # do_rx PROTO PORT BS SECS
    [ $RXON = yes ] && [ ! -e /tmp/rx.rc ] && rx_kill
    rm -f $RXOUT /tmp/rx.err /tmp/rx.rc /tmp/rx.pid
    port=$2
    case $1 in
        tcp) set -- --protocol=tcp --listen --port="$2" --bs="$3" ;;
        udp) set -- --protocol=udp --port="$2" --bs="$3" --time_based --runtime="$4" ;;
        *) R="rc=usage"; return ;;
    esac
    (
        fio_net --name=rx --rw=read "$@" >$RXOUT 2>/tmp/rx.err </dev/null &
        echo $! >/tmp/rx.pid
        wait $!
        echo $? >/tmp/rx.rc
    ) &
    RXON=yes
    # Ready once the port is bound (busybox netstat), at most 10 s.
    ts=$(up) ready=no
    while awk -v a="$ts" -v b="$(up)" 'BEGIN { exit !(b - a < 10) }'; do
        netstat -ltun 2>/dev/null | awk '{ print $4 }' | grep -q ":$port\$" && { ready=yes; break; }
        [ -e /tmp/rx.rc ] && break
        sleep 0.1
    done
    R="rc=0 ready=$ready"
    [ $ready = yes ] || R="rc=notready ended=$(cat /tmp/rx.rc 2>/dev/null || echo no)"
}
do_rxwait() { # do_rxwait SECS
    [ $RXON = yes ] || { R="rc=norx"; return; }
    ts=$(up)
    until [ -e /tmp/rx.rc ]; do
        awk -v a="$ts" -v b="$(up)" -v s="$1" 'BEGIN { exit !(b - a >= s) }' && break
        sleep 0.2
    done
    if [ -e /tmp/rx.rc ]; then
        sed 's/^/NB-J /' $RXOUT
        R="rc=$(cat /tmp/rx.rc) waited=$(since "$ts")"
    else
        rx_kill
        R="rc=timeout waited=$(since "$ts")"
    fi
    head -n 10 /tmp/rx.err 2>/dev/null | sed 's/^/NB-E /'
    RXON=no
}
do_tx() { # do_tx PROTO HOST PORT BS SECS RAMP
    timeout $(($5 + $6 + 40)) fio --ioengine=net --size=100g --output-format=json --name=tx --rw=write \
        --protocol="$1" --hostname="$2" --port="$3" --bs="$4" --time_based --runtime="$5" --ramp_time="$6" \
        >/tmp/tx.json 2>/tmp/tx.err </dev/null
    rc=$?
    sed 's/^/NB-J /' /tmp/tx.json
    head -n 10 /tmp/tx.err | sed 's/^/NB-E /'
    R="rc=$rc"
}
do_ping() { # do_ping HOST COUNT INTERVAL
    ping -c "$2" -i "$3" -W 2 "$1" >/tmp/ping.txt 2>&1
    rc=$?
    sed -n 's/^.* time=\([0-9.]*\) ms.*/NB-P \1/p' /tmp/ping.txt
    s=$(sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) packets received.*/sent=\1 received=\2/p' /tmp/ping.txt)
    m=$(sed -n 's/^.* time=\([0-9.]*\) ms.*/\1/p' /tmp/ping.txt | sort -n | awk '
        { v[NR] = $1; t += $1 }
        END { if (NR == 0) { print "median=- mean=-"; exit }
              m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
              printf "median=%.3f mean=%.3f min=%.3f max=%.3f", m, t / NR, v[1], v[NR] }')
    R="rc=$rc ${s:-sent=? received=0} $m"
}

last=""
echo "NB-AGENT ready t=$(up)"
while :; do
    cmd=$(xenstore-read data/netbench/cmd 2>/dev/null)
    seq=${cmd%% *}
    if [ -n "$cmd" ] && [ "$seq" != "$last" ]; then
        last=$seq
        set -- $cmd
        verb=$2
        shift 2
        echo "NB-BEGIN $seq $verb t=$(up)"
        R="rc=unknown-verb"
        case $verb in
            rx) do_rx "$@" ;;
            rxwait) do_rxwait "$1" ;;
            tx) do_tx "$@" ;;
            ping) do_ping "$@" ;;
            waitping)
                ts=$(up) ok=no
                while awk -v a="$ts" -v b="$(up)" -v s="$2" 'BEGIN { exit !(b - a < s) }'; do
                    ping -c 1 -W 1 "$1" >/dev/null 2>&1 && { ok=yes; break; }
                done
                R="rc=0 ok=$ok after=$(since "$ts")" ;;
        esac
        echo "NB-END $seq $verb $R"
        continue
    fi
    # Returns after the first change (the first event is the registration's own).
    xenstore-watch -n 2 data/netbench/cmd >/dev/null 2>&1 || sleep 1
done
