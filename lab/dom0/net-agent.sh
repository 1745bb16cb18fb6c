#!/bin/sh
# net-agent.sh: MODE net's Linux PV guest (configs/guest-net.cfg, lab.phase=net;
# lab/dom0/guest.sh runs it after loading the modules, xen-netfront among them).
#
# Setup: waits up to 30 s for eth0 (netfront), gives it the static address of
# lab.ip=A.B.C.D/N, brings it up, adds a default route via lab.gw= (QEMU's
# user-mode network: 10.0.2.2), waits up to 10 s for carrier, reports
#   GUEST-RESULT net-if PASS|FAIL <detail>
#   GUEST-FEATURES net mac=... mtu=... carrier=... tx_queues=N rx_queues=N
#       and the offloads `ethtool -k eth0` shows (sg, tso4, tso6, tx-csum-ipv4, ...)
#   GUEST-DONE net
# and starts a listener on TCP port 5001 that reads each connection to its end:
#   NET-RECV bytes=N sha256=S          (one line per connection)
# Then the agent: dom0 writes "<seq> <verb> <args...>" to this domain's
# data/net/cmd (as bench-agent.sh's data/bench/cmd); each new <seq> runs once:
#   NET-BEGIN <seq> <verb> t=<uptime>
#   NET-END <seq> <verb> key=value ...     (figures only: dom0 judges)
# Verbs (each bounded in time):
#   ping HOST COUNT           sent= received= rtt=min/avg/max (ms)
#   waitping HOST SECS        ok=yes|no after=S (one-packet pings until a reply)
#   tcp HOST MIB              MIB MiB of random data to HOST:5001 with nc:
#                             bytes= secs= sha256= rc= (retries while refused)
#   echo HOST PORT            one line to a TCP echo service: ok=yes|no
#   spoof MAC PEER GW         eth0's MAC set to MAC (neighbours flushed), then
#                             4 pings to PEER and 3 to GW; MAC restored, 3 pings
#                             to PEER: peer-replies= gw-replies= restored-peer-replies=
#   load PEER GW              background traffic until stop: 16 MiB streams to
#                             PEER:5001 in a loop and (unless GW is -) a bulk
#                             stream through the echo service 10.0.2.100:7 and
#                             pings to GW; NET-LOAD lines once a second:
#                             eth0=present|absent tx_bytes= rx_bytes= ...
#   stop                      ends load's jobs
#   stats                     eth0=present|absent and its counters
#   wget URL                  rc= bytes= lines=, then NET-W <line> (first 40)
#   features                  GUEST-FEATURES net again
# /init has mounted /proc, /sys, /dev, /tmp, /run and set PATH; output goes to
# the console, which xenconsoled logs in dom0 (guest-<name>.log).
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "GUEST-$*"; }
cmdarg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^lab\.$1=//p" | tail -n 1; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.1f", b - a }'; }
D=/sys/class/net/eth0
ip=$(cmdarg ip)
gw=$(cmdarg gw)

features() {
    txq=$(ls -d $D/queues/tx-* 2>/dev/null | wc -l)
    rxq=$(ls -d $D/queues/rx-* 2>/dev/null | wc -l)
    ethtool -k eth0 >/tmp/ethtool-k.txt 2>&1
    # ek NAME: on|off of one ethtool -k line ("\ttx-checksum-ipv4: on [fixed]").
    ek() { sed -n "s/^[[:space:]]*$1: \([a-z]*\).*/\1/p" /tmp/ethtool-k.txt | head -n 1; }
    say "FEATURES net mac=$(cat $D/address) mtu=$(cat $D/mtu) carrier=$(cat $D/carrier 2>/dev/null) tx_queues=$txq rx_queues=$rxq sg=$(ek scatter-gather) tso4=$(ek tx-tcp-segmentation) tso6=$(ek tx-tcp6-segmentation) tx-csum-ipv4=$(ek tx-checksum-ipv4) tx-csum-ipv6=$(ek tx-checksum-ipv6) rx-csum=$(ek rx-checksumming) gso=$(ek generic-segmentation-offload) gro=$(ek generic-receive-offload)"
}

# Setup.
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
    say "RESULT net-if $v eth0 mac=$(cat $D/address) ip=$ip gw=$gw carrier=${c:-?} $(since "$t0") s after xen-netfront was loaded"
    features
    dmesg | grep -iE 'netfront|xen_net' | tail -n 5 | sed 's/^/GUEST-INFO dmesg: /'
fi

# The listener: every connection to port 5001 read to its end. nc's stdin is a
# FIFO opened read-write: it never ends, so nc never half-closes (busybox nc
# shuts its sending side down when its stdin ends, and the sender stops then).
# The byte count goes through a second FIFO to wc (busybox dd prints no byte total).
mkfifo /tmp/never /tmp/rxcount
(
    while :; do
        wc -c </tmp/rxcount >/tmp/rx.n &
        nc -l -p 5001 <>/tmp/never 2>/dev/null | tee /tmp/rxcount | sha256sum >/tmp/rx.sum
        wait $!
        echo "NET-RECV bytes=$(tr -d ' ' </tmp/rx.n) sha256=$(cut -d' ' -f1 /tmp/rx.sum) t=$(up)"
    done
) &
say "DONE net"

# ping_counts FILE: "sent=N received=M rtt=a/b/c" from busybox ping's summary.
ping_counts() {
    s=$(sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) packets received.*/sent=\1 received=\2/p' "$1")
    r=$(sed -n 's/^round-trip min\/avg\/max = \([0-9./]*\) ms.*/\1/p' "$1")
    echo "${s:-sent=? received=0} rtt=${r:--}"
}
replies() { sed -n 's/.* \([0-9]*\) packets received.*/\1/p' "$1"; }

stats() {
    if [ -e $D ]; then
        s=$D/statistics
        echo "eth0=present tx_bytes=$(cat $s/tx_bytes) rx_bytes=$(cat $s/rx_bytes) tx_packets=$(cat $s/tx_packets) rx_packets=$(cat $s/rx_packets) tx_dropped=$(cat $s/tx_dropped) rx_dropped=$(cat $s/rx_dropped) rx_errors=$(cat $s/rx_errors)"
    else
        echo "eth0=absent"
    fi
}

do_tcp() { # do_tcp HOST MIB
    f=/tmp/tx-$2.bin
    [ -f $f ] || dd if=/dev/urandom of=$f bs=1048576 count="$2" 2>/dev/null
    sum=$(sha256sum $f | cut -d' ' -f1)
    n=0 rc=1
    while [ $n -lt 10 ]; do
        n=$((n + 1))
        ts=$(up)
        timeout 120 nc "$1" 5001 <$f >/dev/null 2>/tmp/nc.err
        rc=$?
        # Refused (no listener yet) fails at once; anything else is the result.
        grep -q "can't connect" /tmp/nc.err || break
        sleep 1
    done
    echo "bytes=$(stat -c %s $f) secs=$(since "$ts") sha256=$sum rc=$rc attempts=$n err=$(head -c 80 /tmp/nc.err | tr ' \n' '_ ')"
}

do_spoof() { # do_spoof MAC PEER GW
    mac0=$(cat $D/address)
    ip link set eth0 down
    ip link set eth0 address "$1" 2>/tmp/spoof.err
    ip link set eth0 up
    [ -n "$gw" ] && ip route add default via "$gw" 2>/dev/null
    ip neigh flush dev eth0 >/dev/null 2>&1
    now=$(cat $D/address)
    ping -c 4 -W 1 "$2" >/tmp/sp1.txt 2>&1
    ping -c 3 -W 1 "$3" >/tmp/sp2.txt 2>&1
    ip link set eth0 down
    ip link set eth0 address "$mac0"
    ip link set eth0 up
    [ -n "$gw" ] && ip route add default via "$gw" 2>/dev/null
    ip neigh flush dev eth0 >/dev/null 2>&1
    # The peer may have cached the spoofed MAC if a frame got through: give ARP time.
    ping -c 3 -W 2 "$2" >/tmp/sp3.txt 2>&1
    echo "mac=$now (set to $1, restored $mac0 -> $(cat $D/address)) peer-replies=$(replies /tmp/sp1.txt) gw-replies=$(replies /tmp/sp2.txt) restored-peer-replies=$(replies /tmp/sp3.txt) err=$(head -c 60 /tmp/spoof.err | tr ' \n' '_ ')"
}

LOADPIDS=""
# do_load PEER GW: runs in the agent's own shell (not in $(...): its jobs would
# hold the substitution's pipe open); the jobs write to the console.
do_load() {
    if [ "$1" != - ]; then
        (while :; do dd if=/dev/zero bs=65536 count=256 2>/dev/null | timeout 60 nc "$1" 5001 >/dev/null 2>&1 || sleep 0.5; done) >/dev/console 2>&1 &
        LOADPIDS="$LOADPIDS $!"
    fi
    if [ "$2" != - ]; then
        (while :; do dd if=/dev/zero bs=65536 count=64 2>/dev/null | timeout 30 nc 10.0.2.100 7 >/dev/null 2>&1 || sleep 0.5; done) >/dev/console 2>&1 &
        LOADPIDS="$LOADPIDS $!"
        ping -i 1 "$2" >/dev/null 2>&1 &
        LOADPIDS="$LOADPIDS $!"
    fi
    (while :; do echo "NET-LOAD $(stats) t=$(up)"; sleep 1; done) >/dev/console 2>&1 &
    LOADPIDS="$LOADPIDS $!"
    R="jobs=$(echo $LOADPIDS | wc -w) peer=$1 gw=$2"
}
do_stop() {
    # Subshell loops first, then whatever they started (nc, dd, ping).
    for p in $LOADPIDS; do kill $p 2>/dev/null; done
    LOADPIDS=""
    killall -q ping dd 2>/dev/null
    for p in $(pidof nc); do
        # Not the listener's nc (it reads our FIFO).
        ls -l /proc/$p/fd/0 2>/dev/null | grep -q never || kill $p 2>/dev/null
    done
    R="stopped"
}

do_wget() {
    timeout 20 wget -q -O /tmp/wget.out "$1" 2>/tmp/wget.err
    rc=$?
    echo "rc=$rc bytes=$(stat -c %s /tmp/wget.out 2>/dev/null || echo 0) lines=$(wc -l </tmp/wget.out 2>/dev/null || echo 0) err=$(head -c 80 /tmp/wget.err | tr ' \n' '_ ')"
}

# eth0 appearing or going (xl network-detach / network-attach).
(
    had=no; [ -e $D ] && had=yes
    while :; do
        now=no; [ -e $D ] && now=yes
        [ $now != $had ] && { [ $now = yes ] && echo "NET-EVENT eth0 present t=$(up)" || echo "NET-EVENT eth0 absent t=$(up)"; had=$now; }
        sleep 0.5
    done
) &

last=""
echo "NET-AGENT ready t=$(up)"
while :; do
    cmd=$(xenstore-read data/net/cmd 2>/dev/null)
    seq=${cmd%% *}
    if [ -n "$cmd" ] && [ "$seq" != "$last" ]; then
        last=$seq
        set -- $cmd
        verb=$2
        shift 2
        echo "NET-BEGIN $seq $verb t=$(up)"
        case $verb in
            ping) ping -c "$2" -W 2 "$1" >/tmp/ping.txt 2>&1; r="host=$1 $(ping_counts /tmp/ping.txt)" ;;
            waitping)
                ts=$(up) ok=no
                while awk -v a="$ts" -v b="$(up)" -v s="$2" 'BEGIN { exit !(b - a < s) }'; do
                    ping -c 1 -W 1 "$1" >/dev/null 2>&1 && { ok=yes; break; }
                done
                r="host=$1 ok=$ok after=$(since "$ts")" ;;
            tcp) r="host=$1 $(do_tcp "$1" "$2")" ;;
            echo)
                line="ferrite-echo-$seq-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
                echo "$line" | timeout 8 nc "$1" "$2" >/tmp/echo.out 2>/tmp/echo.err
                ok=no; grep -qxF "$line" /tmp/echo.out && ok=yes
                r="host=$1 port=$2 ok=$ok got=$(head -c 60 /tmp/echo.out | tr ' \n' '_ ')" ;;
            spoof) r=$(do_spoof "$1" "$2" "$3") ;;
            load) do_load "$1" "$2"; r=$R ;;
            stop) do_stop; r=$R ;;
            stats) r=$(stats) ;;
            wget) r=$(do_wget "$1"); head -n 40 /tmp/wget.out | sed 's/^/NET-W /' ;;
            features) features; r="" ;;
            *) r="unknown-verb" ;;
        esac
        echo "NET-END $seq $verb $r"
        continue
    fi
    # Returns after the first change (the first event is the registration's own).
    xenstore-watch -n 2 data/net/cmd >/dev/null 2>&1 || sleep 1
done
