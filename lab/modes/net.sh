#!/bin/sh
# MODE net: Ferrite serves networks (issue 12).  One Xen boot, bounded in time
# (the script gives up on what is left after BUDGET seconds; ~6 min at most).
#
# QEMU: the usual NVMe at 00:04.0 and one virtio-net-pci on QEMU's user-mode
# network at 00:0a.0 (MAC 52:54:00:fe:0a:00; gateway 10.0.2.2, echo service
# 10.0.2.100:7; see lab/lab.sh).  Both are made assignable and given to Ferrite:
# xl create ferrite.cfg "pci=['0000:00:04.0','0000:00:0a.0']".  Two Linux
# guests (configs/guest-net.cfg, no disk), each with one vif on Ferrite:
#   nA  vif mac 00:16:3e:fe:00:01  eth0 10.0.2.21/24
#   nB  vif mac 00:16:3e:fe:00:02  eth0 10.0.2.22/24   default route 10.0.2.2
# and lab/dom0/net-agent.sh, which runs what dom0 writes to data/net/cmd.
#
#   net-ready     data/ferrite/nic has a line with the NIC's MAC (Ferrite read
#                 it from the device) within 30 s of ready
#   net-features  per guest, from xenstore: Ferrite's backend/vif/<domid>/0/
#                 and the guest's device/vif/0/ negotiate feature-sg,
#                 feature-gso-tcpv4/-tcpv6, checksum offload (no
#                 feature-no-csum-offload; feature-ipv6-csum-offload),
#                 feature-rx-copy/request-rx-copy and multi-queue
#                 (multi-queue-max-queues >= 2, multi-queue-num-queues = 2 = vCPUs);
#                 the guest's own view (ethtool -k, /sys/class/net/eth0/queues) agrees
#   net-ping      nA <-> nB, 10 pings each way, >= 90 % answered
#   net-tcp       4 MiB of random data nA -> nB and nB -> nA (busybox nc); the
#                 receiver's byte count and sha256 equal the sender's; MiB/s
#   net-gateway   each guest: 5 pings to 10.0.2.2 (slirp answers them itself)
#                 and one line through the echo service 10.0.2.100:7
#   net-spoof     nA sets eth0's MAC to 00:16:3e:fe:00:99: no reply from nB nor
#                 from 10.0.2.2; MAC restored: nB answers again; Ferrite's
#                 drops-spoof grows if data/ferrite/net has it
#   net-metrics   SKIP unless Ferrite publishes data/ferrite/metrics (the URL
#                 of its metrics endpoint, e.g. http://10.0.2.15:9100/metrics):
#                 nA fetches it with wget; Prometheus text (# TYPE lines)
#   net-detach    both guests stream to each other and through the gateway;
#                 xl network-detach nB 0: nB's eth0 goes, Ferrite's
#                 backend/vif/<nB> goes, data/ferrite/net says vifs=1 and has no
#                 "vif <nB>/0" line within 20 s
#   net-destroy   xl destroy nA during its traffic: backend/vif/<nA> goes and
#                 data/ferrite/net's gauges (GAUGES below) return to their
#                 values before any guest (the baseline) within 20 s
# Ferrite's options: FERRITE_EXTRA below, or /extra/ferrite-extra (lab.sh run
# net IMAGE EXTRA_DIR) replaces it: Ferrite's extra= line (e.g. to enable its
# metrics endpoint).
# EXTRA_DIR/net-linux: a Linux network driver domain (lab/dom0/netdd.sh:
# pcifront + virtio_net, xen-netback with max_queues=2, a bridge;
# configs/linux-dd.cfg, only the NIC) plays Ferrite, named "ferrite", and publishes the
# nodes below itself: this checks the mode and gives Linux's figures (a Linux
# bridge does not drop spoofed MACs: net-spoof fails with it).
# LAB-QEMU-NIC: user
# LAB-EXPECT: net-ready net-features net-ping net-tcp net-gateway net-spoof net-metrics net-detach net-destroy
. /lab/common.sh
ALL="net-ready net-features net-ping net-tcp net-gateway net-spoof net-metrics net-detach net-destroy"
BUDGET=300
# A slower lab (a busy host): EXTRA_DIR/net-budget holds another number of seconds.
[ -f /extra/net-budget ] && BUDGET=$(cat /extra/net-budget)
NVME=0000:00:04.0
NIC=$(awk '$1 == "nic0" { print $2 }' /lab/nics.txt 2>/dev/null)
NICMAC=$(awk '$1 == "nic0" { print $4 }' /lab/nics.txt 2>/dev/null)
GCFG=/ferrite/configs/guest-net.cfg
CON=/var/log/xen/console
GW=10.0.2.2
ECHO_HOST=10.0.2.100 ECHO_PORT=7
A=nA B=nB
A_IP=10.0.2.21 B_IP=10.0.2.22
A_MAC=00:16:3e:fe:00:01 B_MAC=00:16:3e:fe:00:02
SPOOF_MAC=00:16:3e:fe:00:99
TCP_MIB=4
# Ferrite's nodes under /local/domain/<ferrite>/ (proposed to the integrator):
#   data/ferrite/nic      one line per NIC: "eth0 pci=... mac=52:54:00:fe:0a:00 link=up ..."
#   data/ferrite/net      first line: the switch's key=value gauges and counters
#                         ("vifs=2 mapped-pages=0 buffers=512 ... drops-spoof=3 ...");
#                         then one line per vif: "vif <domid>/<devid> mac=... key=value ..."
#   data/ferrite/metrics  the metrics endpoint's URL, only when it is enabled
NICNODE=data/ferrite/nic NETNODE=data/ferrite/net METRICSNODE=data/ferrite/metrics
# Gauges of data/ferrite/net's first line that must come back to the baseline
# once the guests are gone (those present in the baseline are compared).
GAUGES="vifs queues mapped-pages grant-maps buffers tx-inflight rx-inflight vif-macs"
# The metrics endpoint by DHCP from slirp (10.0.2.15: the guests are static
# .21 and .22), reachable from the vifs because nA is the one that fetches it.
FERRITE_EXTRA="metrics=dhcp metrics.vifs=1"
[ -f /extra/ferrite-extra ] && FERRITE_EXTRA=$(cat /extra/ferrite-extra)
T_ALL=$(lab_uptime)
END_ALL=$(now_after $BUDGET)

# ---------------------------------------------------------------- verdicts
# Exactly one LAB-TEST line per test: the first verdict counts, the rest are notes.
DONE_TESTS=" "
verdict() { # verdict NAME PASS|FAIL|SKIP DETAIL...
    _n=$1 _v=$2
    shift 2
    case "$DONE_TESTS" in *" $_n "*) lab_info "($_n already reported; later verdict $_v: $*)"; return ;; esac
    DONE_TESTS="$DONE_TESTS$_n "
    case $_v in PASS) lab_pass "$_n" "$*" ;; SKIP) lab_skip "$_n" "$*" ;; *) lab_fail "$_n" "$*" ;; esac
}
# fail_rest WHY: every test not reported yet fails with WHY.
fail_rest() {
    for _t in $ALL; do
        case "$DONE_TESTS" in *" $_t "*) ;; *) verdict "$_t" FAIL "not run: $1" ;; esac
    done
}
over_budget() { past "$END_ALL"; }
# secs_left CAP: seconds until the budget ends, at most CAP, at least 1.
secs_left() { awk -v e="$END_ALL" -v a="$(lab_uptime)" -v c="$1" 'BEGIN { s = int(e - a); if (s > c) s = c; if (s < 1) s = 1; print s }'; }

# ---------------------------------------------------------------- helpers
glog() { echo "$CON/guest-$1.log"; }
# gl NAME: the guest's console log without carriage returns.
gl() { tr -d '\r' <"$(glog "$1")" 2>/dev/null; }
gid() { xl domid "$1" 2>/dev/null; }
fread() { xenstore-read "/local/domain/$FDOM/$1" 2>/dev/null; }
# Multi-line nodes: xenstore-read escapes the newlines (\n); undo that.
flines() { printf '%b\n' "$(fread "$1")" | grep .; }
netline() { flines $NETNODE | head -n 1; }
kv() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }

SEQ=0
# net_cmd GUEST SECS VERB ARGS...: have GUEST's net agent run VERB; sets NETR to
# the key=value part of its NET-END line.  Returns 1 if it did not start or end.
net_cmd() {
    _g=$1 _s=$2
    shift 2
    SEQ=$((SEQ + 1))
    NETR=""
    _id=$(gid "$_g")
    [ -n "$_id" ] || { NETR="<no domain $_g>"; return 1; }
    _k=0
    while :; do
        xenstore-write "/local/domain/$_id/data/net/cmd" "$SEQ $*"
        wait_log "$(glog "$_g")" "NET-BEGIN $SEQ " 5 && break
        _k=$((_k + 1))
        [ $_k -ge 4 ] && { NETR="<the agent in $_g did not start command $SEQ ($1)>"; return 1; }
    done
    if ! wait_log "$(glog "$_g")" "NET-END $SEQ " "$_s"; then
        NETR="<command $SEQ ($*) did not end within $_s s in $_g>"
        return 1
    fi
    NETR=$(gl "$_g" | sed -n "s/^.*NET-END $SEQ [a-z]* *//p" | head -n 1)
}

# evidence WHY: what the integrator needs when a net test fails.
EVIDENCE_SHOWN=no
evidence() {
    lab_info "---- evidence ($1) ----"
    lab_info "Ferrite's console, last lines:"
    lab_show "$GUEST_LOG" 25 ferrite
    lab_info "$NETNODE: $(fread $NETNODE | cut -c1-300)"
    lab_info "xenstore: Ferrite's backend/vif:"
    timeout 10 xenstore-ls -fp "/local/domain/$FDOM/backend/vif" 2>&1 | head -n 50 | sed 's/^/LAB-INFO xs-be | /'
    for _g in $A $B; do
        _id=$(gid $_g)
        [ -n "$_id" ] || continue
        lab_info "xenstore: $_g's device/vif:"
        timeout 10 xenstore-ls -fp "/local/domain/$_id/device/vif" 2>&1 | head -n 30 | sed "s/^/LAB-INFO xs-fe $_g | /"
        lab_info "$_g's console, last lines:"
        lab_show "$(glog $_g)" 12 "$_g"
    done
    [ $EVIDENCE_SHOWN = yes ] && return
    EVIDENCE_SHOWN=yes
    lab_info "xl dmesg, last lines:"
    timeout 10 xl dmesg 2>/dev/null | tail -n 12 | sed 's/^/LAB-INFO xen | /'
    dmesg 2>/dev/null | grep -E 'segfault at|traps:|general protection' | tail -n 5 | sed 's/^/LAB-INFO dom0-crash | /'
}

cleanup() {
    for _g in $A $B; do xl destroy "$_g" >/dev/null 2>&1; done
    if xl list ferrite >/dev/null 2>&1; then
        lab_shutdown 30
        lab_info "Ferrite: xl shutdown -w status $SHUTDOWN_RC after $SHUTDOWN_AFTER s, gone: $SHUTDOWN_GONE"
    fi
    lab_info "timings: Ferrite ready ${T_READY:-?} s after its xl create; guests created in ${T_GUESTS:-?} s; mode $(lab_since "$T_ALL") s in all"
}

# ---------------------------------------------------------------- Ferrite
[ -n "$NIC" ] || { fail_rest "no NIC in /lab/nics.txt (lab.sh did not honour '# LAB-QEMU-NIC:')"; exit 1; }
lab_info "NIC: $(tr '\n' ' ' </lab/nics.txt)"
for p in $NVME $NIC; do
    if xl pci-assignable-add $p >/tmp/pci.log 2>&1; then lab_info "$p made assignable"
    else lab_info "xl pci-assignable-add $p failed: $(tr '\n' ' ' </tmp/pci.log)"; fi
done
lab_info "xl pci-assignable-list: $(xl pci-assignable-list 2>&1 | tr '\n' ' ')"
foff=$(wc -l <"$GUEST_LOG" 2>/dev/null || echo 0)
if [ -e /extra/net-linux ]; then
    WHO="the Linux stand-in (netdd)" READY_LIMIT=120
    set -- /ferrite/configs/linux-dd.cfg 'name="ferrite"' "pci=['$NIC']" 'memory=256' \
        'extra="console=hvc0 lab.role=netdd loglevel=4 xen_netback.max_queues=2"'
else
    WHO="Ferrite" READY_LIMIT=30
    set -- "$(lab_guest_cfg)" "pci=['$NVME','$NIC']"
    [ -n "$FERRITE_EXTRA" ] && set -- "$@" "extra=\"$FERRITE_EXTRA\""
fi
lab_info "driver domain \"ferrite\": $WHO"
if ! FDOM=$(lab_create "$@"); then
    fail_rest "xl create of $WHO with the NIC failed"
    exit 1
fi
if lab_wait_ready "$FDOM" $READY_LIMIT; then
    lab_info "$WHO (domain $FDOM, NIC $NIC) ready $READY_AFTER s after xl create"
else
    lab_info "$WHO (domain $FDOM): state '$READY_STATE' after $READY_AFTER s"
    lab_show "$GUEST_LOG" 20 ferrite
    fail_rest "$WHO (domain $FDOM) not ready within $READY_LIMIT s (state '$READY_STATE')"
    cleanup
    exit 1
fi
T_READY=$READY_AFTER
lab_info "Ferrite's console: PCI devices and disks:"
sed -n "$((foff + 1)),\$p" "$GUEST_LOG" | grep -aE "pci |pcifront|nvme[0-9]|virtio|nic|net|NETDD" | head -n 20 | sed 's/^/LAB-INFO ferrite | /'
lab_info "data/ferrite/nvme: $(fread data/ferrite/nvme)"
flines data/ferrite/disks | sed 's/^/LAB-INFO disks | /'
lab_info "data/ferrite/status: $(fread data/ferrite/status)"
lab_info "xenstore: Ferrite's device/pci/0 and its backend:"
timeout 10 xenstore-ls -f "/local/domain/0/backend/pci/$FDOM/0" 2>&1 | grep -E '/(dev|vdev|state|num_devs)' | head -n 12 | sed 's/^/LAB-INFO xs-pci | /'

# ---------------------------------------------------------------- net-ready
end=$(now_after 30)
nicl=""
while :; do
    nicl=$(flines $NICNODE | grep -i "mac=$NICMAC" | head -n 1)
    [ -n "$nicl" ] && break
    past "$end" && break
    xl list ferrite >/dev/null 2>&1 || break
    sleep 0.5
done
if [ -n "$nicl" ]; then
    verdict net-ready PASS "$NICNODE: '$nicl' (the NIC at $NIC has MAC $NICMAC)"
else
    verdict net-ready FAIL "$NICNODE has no line with mac=$NICMAC (the NIC at $NIC) within 30 s of ready: '$(fread $NICNODE | cut -c1-200)'"
fi

# Baseline: the switch with no guest.
BASE=$(netline)
lab_info "baseline $NETNODE (no guest): '${BASE:-<absent>}'"

# ---------------------------------------------------------------- the guests
extra0=$(sed -n 's/^extra *= *"\(.*\)"/\1/p' $GCFG)
# gstart NAME MAC IP: xl create of a net guest (bounded: a vif Ferrite does not
# serve can keep xl create waiting); sets CREATE_WHY on failure.
gstart() {
    _x=$(echo "$extra0" | sed "s|lab\.ip=[^ ]*|lab.ip=$3/24|")
    rm -f "$(glog "$1")"
    lab_step guest-create "xl create $1: vif backend=ferrite mac=$2, eth0 $3/24"
    _t=$(lab_uptime)
    timeout 40 xl create $GCFG "name=\"$1\"" "vif=['backend=ferrite,mac=$2']" "extra=\"$_x\"" >/tmp/xl-$1.log 2>&1
    _rc=$?
    if [ $_rc = 0 ]; then
        lab_step guest-created "$1 is domain $(gid "$1") ($(lab_since "$_t") s)"
        return 0
    fi
    # libxl's first error says what failed (e.g. "unable to add device with path
    # /local/domain/<ferrite>/backend/vif/<domid>/0": no backend answered the vif).
    _e=$(grep -m 1 'error' /tmp/xl-$1.log | sed 's/^.*error: [^ ]* //')
    if [ $_rc = 124 ]; then _e="did not return within 40 s${_e:+ ($_e)}"; else _e="failed (status $_rc) after $(lab_since "$_t") s: ${_e:-$(tail -n 1 /tmp/xl-$1.log)}"; fi
    CREATE_WHY="$CREATE_WHY xl create $1 $_e;"
    lab_info "xl create $1 failed:"; lab_show /tmp/xl-$1.log 8 "$1"
    _id=$(gid "$1")
    [ -n "$_id" ] && { lab_info "backend/vif/$_id under Ferrite:"; timeout 10 xenstore-ls -fp "/local/domain/$FDOM/backend/vif/$_id" 2>&1 | head -n 25 | sed 's/^/LAB-INFO xs-be | /'; }
    xl destroy "$1" >/dev/null 2>&1
    return 1
}
CREATE_WHY=""
t_g=$(lab_uptime)
# Both at once (each xl create waits for its devices); CREATE_WHY comes back in files.
(CREATE_WHY=""; gstart $A $A_MAC $A_IP; echo "$CREATE_WHY" >/tmp/why-$A) &
sleep 1
(CREATE_WHY=""; gstart $B $B_MAC $B_IP; echo "$CREATE_WHY" >/tmp/why-$B) &
wait
CREATE_WHY="$(cat /tmp/why-$A /tmp/why-$B 2>/dev/null | tr '\n' ' ')"
T_GUESTS=$(lab_since "$t_g")
if [ -z "$(gid $A)" ] || [ -z "$(gid $B)" ]; then
    evidence "xl create of the guests"
    for t in $ALL; do
        case $t in
            net-ready) ;;
            net-metrics) [ -n "$(fread $METRICSNODE)" ] || verdict net-metrics SKIP "no metrics endpoint configured ($METRICSNODE absent)" ;;
            *) verdict $t FAIL "not run:$CREATE_WHY" ;;
        esac
    done
    fail_rest "not run:$CREATE_WHY"
    cleanup
    exit 1
fi
ADOM=$(gid $A) BDOM=$(gid $B)

# Both guests: eth0 up with its address, then the agent.
why=""
end=$(now_after 150)
for g in $A $B; do
    wait_log "$(glog $g)" "GUEST-DONE net" "$(secs_left "$(awk -v e="$end" -v a="$(lab_uptime)" 'BEGIN { s = int(e - a); print (s > 1 ? s : 1) }')")" \
        || why="$why $g did not finish its network setup within 150 s of its creation;"
done
lab_step guests-up "both guests set up their eth0 after $(lab_since "$t_g") s"
for g in $A $B; do
    gl $g | grep -aE "GUEST-(RESULT|FEATURES|INFO dmesg)" | sed "s/^.*GUEST-/LAB-INFO $g | /"
    r=$(gl $g | sed -n 's/^.*GUEST-RESULT net-if //p' | head -n 1)
    case $r in PASS*) ;; *) why="$why $g: eth0 '${r:-<no result>}';" ;; esac
done
if [ -n "$why" ]; then
    evidence "guest network setup"
    for t in net-features net-ping net-tcp net-gateway net-spoof net-detach net-destroy; do verdict $t FAIL "not run:$why"; done
fi

# ---------------------------------------------------------------- net-features
# be_fe GUEST: "be:key=value ... fe:key=value ..." for the record.
XS_BE_KEYS="feature-sg feature-gso-tcpv4 feature-gso-tcpv6 feature-ipv6-csum-offload feature-no-csum-offload feature-rx-copy feature-rx-flip feature-rx-notify feature-split-event-channels multi-queue-max-queues feature-ctrl-ring feature-multicast-control hotplug-status state"
XS_FE_KEYS="feature-sg feature-gso-tcpv4 feature-gso-tcpv6 feature-ipv6-csum-offload feature-no-csum-offload request-rx-copy feature-rx-notify multi-queue-num-queues state"
features_of() { # features_of GUEST DOMID: sets WHY/DETAIL
    _be=/local/domain/$FDOM/backend/vif/$2/0
    _fe=/local/domain/$2/device/vif/0
    # One xenstore-ls per directory (a xenstore-read per key costs ~0.5 s in a busy lab).
    timeout 10 xenstore-ls -f $_be 2>/dev/null | sed -n "s|^$_be/\([^/ ]*\) = \"\(.*\)\"\$|\1=\2|p" >/tmp/xs-be
    timeout 10 xenstore-ls -f $_fe 2>/dev/null >/tmp/xs-fe-all
    sed -n "s|^$_fe/\([^/ ]*\) = \"\(.*\)\"\$|\1=\2|p" /tmp/xs-fe-all >/tmp/xs-fe
    _bv="" _fv=""
    for k in $XS_BE_KEYS; do _v=$(sed -n "s/^$k=//p" /tmp/xs-be | head -n 1); _bv="$_bv $k=${_v:--}"; done
    for k in $XS_FE_KEYS; do _v=$(sed -n "s/^$k=//p" /tmp/xs-fe | head -n 1); _fv="$_fv $k=${_v:--}"; done
    _split=no; grep -q '/event-channel-tx = ' /tmp/xs-fe-all && _split=yes
    _gf=$(gl $1 | sed -n 's/^.*GUEST-FEATURES net //p' | tail -n 1)
    b() { kv "$_bv" "$1"; }
    # netfront says Connected (and carrier on) as soon as the backend is InitWait:
    # the backend's own state tells whether it connected.
    [ "$(kv "$_bv" state)" = 4 ] && [ "$(kv "$_bv" hotplug-status)" = connected ] || WHY="$WHY $1: backend state=$(kv "$_bv" state) hotplug-status=$(kv "$_bv" hotplug-status) (expected 4, connected);"
    f() { kv "$_fv" "$1"; }
    gv() { kv "$_gf" "$1"; }
    [ "$(b feature-sg)" = 1 ] && [ "$(f feature-sg)" = 1 ] && [ "$(gv sg)" = on ] || WHY="$WHY $1: sg (be $(b feature-sg), fe $(f feature-sg), guest $(gv sg));"
    [ "$(b feature-gso-tcpv4)" = 1 ] && [ "$(f feature-gso-tcpv4)" = 1 ] && [ "$(gv tso4)" = on ] || WHY="$WHY $1: gso-tcpv4 (be $(b feature-gso-tcpv4), fe $(f feature-gso-tcpv4), guest tso4 $(gv tso4));"
    [ "$(b feature-gso-tcpv6)" = 1 ] && [ "$(f feature-gso-tcpv6)" = 1 ] && [ "$(gv tso6)" = on ] || WHY="$WHY $1: gso-tcpv6 (be $(b feature-gso-tcpv6), fe $(f feature-gso-tcpv6), guest tso6 $(gv tso6));"
    [ "$(b feature-no-csum-offload)" != 1 ] && [ "$(gv tx-csum-ipv4)" = on ] || WHY="$WHY $1: ipv4 csum offload (be feature-no-csum-offload=$(b feature-no-csum-offload), guest tx-csum-ipv4 $(gv tx-csum-ipv4));"
    [ "$(b feature-ipv6-csum-offload)" = 1 ] && [ "$(gv tx-csum-ipv6)" = on ] || WHY="$WHY $1: ipv6 csum offload (be $(b feature-ipv6-csum-offload), fe $(f feature-ipv6-csum-offload), guest $(gv tx-csum-ipv6));"
    [ "$(b feature-rx-copy)" = 1 ] && [ "$(f request-rx-copy)" = 1 ] || WHY="$WHY $1: rx-copy (be $(b feature-rx-copy), fe request-rx-copy $(f request-rx-copy));"
    _mq=$(b multi-queue-max-queues) _nq=$(f multi-queue-num-queues) _tq=$(gv tx_queues)
    [ "${_mq:-0}" -ge 2 ] 2>/dev/null && [ "$_nq" = 2 ] && [ "$_tq" = 2 ] || WHY="$WHY $1: multi-queue (be multi-queue-max-queues=$_mq, fe multi-queue-num-queues=$_nq, guest tx queues $_tq; expected >= 2, 2, 2);"
    DETAIL="$DETAIL $1 (domain $2): be[$_bv ] fe[$_fv split-event-channels=$_split ] guest[$_gf];"
}
if ! over_budget && [ -z "$why" ]; then
    WHY="" DETAIL=""
    features_of $A $ADOM
    features_of $B $BDOM
    if [ -z "$WHY" ]; then verdict net-features PASS "$DETAIL"
    else verdict net-features FAIL "$WHY $DETAIL"; fi
fi

# ---------------------------------------------------------------- net-ping
if ! over_budget && [ -z "$why" ]; then
    WHY="" DETAIL=""
    net_cmd $A 40 waitping $B_IP 30 || WHY="$WHY $NETR;"
    DETAIL="$A waits for $B: $NETR;"
    for pair in "$A $B_IP" "$B $A_IP"; do
        set -- $pair
        if net_cmd $1 40 ping $2 10; then
            s=$(kv "$NETR" sent) r=$(kv "$NETR" received)
            [ "${r:-0}" -gt 0 ] 2>/dev/null && [ $((r * 10)) -ge $((s * 9)) ] || WHY="$WHY $1 -> $2: $NETR;"
        else
            WHY="$WHY $1 -> $2: $NETR;"
        fi
        DETAIL="$DETAIL $1 -> $2: $NETR;"
    done
    if [ -z "$WHY" ]; then verdict net-ping PASS "$DETAIL"; else verdict net-ping FAIL "$WHY $DETAIL"; evidence net-ping; fi
fi

# ---------------------------------------------------------------- net-tcp
if ! over_budget && [ -z "$why" ]; then
    WHY="" DETAIL=""
    for pair in "$A $B $B_IP" "$B $A $A_IP"; do
        set -- $pair
        roff=$(gl $2 | grep -c "NET-RECV")
        if net_cmd $1 "$(secs_left 130)" tcp $3 $TCP_MIB; then
            bytes=$(kv "$NETR" bytes) secs=$(kv "$NETR" secs) sum=$(kv "$NETR" sha256)
            # The receiver's line for this connection (the first after roff).
            wait_log "$(glog $2)" "sha256=$sum" 10
            recv=$(gl $2 | grep "NET-RECV" | sed -n "$((roff + 1)),\$p" | grep -F "sha256=$sum" | head -n 1 | sed 's/^.*NET-RECV //')
            rate=$(awk -v b="$bytes" -v s="$secs" 'BEGIN { if (s > 0) printf "%.1f", b / 1048576 / s; else print "?" }')
            if [ -n "$recv" ] && [ "$(kv "$recv" bytes)" = "$bytes" ]; then
                DETAIL="$DETAIL $1 -> $2: $bytes bytes in $secs s ($rate MiB/s), sha256 $(echo "$sum" | cut -c1-16) equal on both sides;"
            else
                last=$(gl $2 | grep "NET-RECV" | sed -n "$((roff + 1)),\$p" | tail -n 1 | sed 's/^.*NET-RECV //')
                WHY="$WHY $1 -> $2: sender $NETR; receiver: '${last:-<no connection ended>}';"
            fi
        else
            WHY="$WHY $1 -> $2: $NETR;"
        fi
    done
    if [ -z "$WHY" ]; then verdict net-tcp PASS "$TCP_MIB MiB each way:$DETAIL"; else verdict net-tcp FAIL "$WHY $DETAIL"; evidence net-tcp; fi
fi

# ---------------------------------------------------------------- net-gateway
if ! over_budget && [ -z "$why" ]; then
    WHY="" DETAIL=""
    for g in $A $B; do
        if net_cmd $g 30 ping $GW 5; then
            r=$(kv "$NETR" received)
            [ "${r:-0}" -ge 4 ] 2>/dev/null || WHY="$WHY $g ping $GW: $NETR;"
        else WHY="$WHY $g ping $GW: $NETR;"; fi
        DETAIL="$DETAIL $g ping $GW: $NETR;"
        if net_cmd $g 20 echo $ECHO_HOST $ECHO_PORT; then
            [ "$(kv "$NETR" ok)" = yes ] || WHY="$WHY $g echo $ECHO_HOST:$ECHO_PORT: $NETR;"
        else WHY="$WHY $g echo: $NETR;"; fi
        DETAIL="$DETAIL $g tcp echo $ECHO_HOST:$ECHO_PORT: $NETR;"
    done
    if [ -z "$WHY" ]; then verdict net-gateway PASS "$DETAIL"; else verdict net-gateway FAIL "$WHY $DETAIL"; evidence net-gateway; fi
fi

# ---------------------------------------------------------------- net-spoof
if ! over_budget && [ -z "$why" ]; then
    WHY=""
    n0=$(netline)
    if net_cmd $A 40 spoof $SPOOF_MAC $B_IP $GW; then
        [ "$(kv "$NETR" peer-replies)" = 0 ] || WHY="$WHY $B answered the spoofed MAC;"
        [ "$(kv "$NETR" gw-replies)" = 0 ] || WHY="$WHY $GW answered the spoofed MAC (frames reached the NIC);"
        [ "$(kv "$NETR" restored-peer-replies)" -ge 1 ] 2>/dev/null || WHY="$WHY no reply from $B after the MAC was restored (the test proves nothing);"
    else
        WHY="$WHY $NETR;"
    fi
    n1=$(netline)
    d0=$(kv "$n0" drops-spoof) d1=$(kv "$n1" drops-spoof)
    if [ -n "$d1" ]; then
        [ "$d1" -gt "${d0:-0}" ] 2>/dev/null || WHY="$WHY Ferrite's drops-spoof did not grow ($d0 -> $d1);"
    fi
    DETAIL="$A: $NETR; Ferrite drops-spoof ${d0:-<none>} -> ${d1:-<none>}"
    if [ -z "$WHY" ]; then verdict net-spoof PASS "$DETAIL"; else verdict net-spoof FAIL "$WHY $DETAIL"; evidence net-spoof; fi
fi

# ---------------------------------------------------------------- net-metrics
url=$(fread $METRICSNODE)
if [ -z "$url" ]; then
    verdict net-metrics SKIP "no metrics endpoint configured ($METRICSNODE absent; Ferrite's extra='$FERRITE_EXTRA')"
elif over_budget || [ -n "$why" ]; then
    verdict net-metrics FAIL "not run (guests not set up, or out of time); $METRICSNODE = '$url'"
elif net_cmd $A 30 wget "$url"; then
    off=$(gl $A | grep -n "NET-BEGIN $SEQ " | head -n 1 | cut -d: -f1)
    body=$(gl $A | sed -n "${off:-1},\$p" | sed -n 's/^.*NET-W //p')
    nt=$(echo "$body" | grep -c '^# TYPE ')
    if [ "$(kv "$NETR" rc)" = 0 ] && [ "$nt" -ge 1 ]; then
        verdict net-metrics PASS "$A fetched $url: $NETR, $nt '# TYPE' lines in the first 40; e.g. '$(echo "$body" | grep -v '^#' | head -n 1)'"
    else
        verdict net-metrics FAIL "$A fetched $url: $NETR, $nt '# TYPE' lines: '$(echo "$body" | head -n 3 | tr '\n' ' ')'"
    fi
else
    verdict net-metrics FAIL "$A: wget $url: $NETR"
fi

# ---------------------------------------------------------------- net-detach
# vif_gone DOMID SECS: Ferrite's backend/vif/DOMID is gone and data/ferrite/net
# has no "vif DOMID/" line (within SECS).
vif_gone() {
    _e=$(now_after "$2")
    while :; do
        if ! xenstore-exists "/local/domain/$FDOM/backend/vif/$1" >/dev/null 2>&1 && ! flines $NETNODE | grep -q "^vif $1/"; then
            return 0
        fi
        past "$_e" && return 1
        sleep 0.2
    done
}
# loaded GUEST: within 10 s, the tx_bytes of its two last NET-LOAD lines grew
# (in a busy lab the once-a-second lines come seconds apart).
loaded() {
    _le=$(now_after 10)
    while :; do
        _l=$(gl $1 | grep "NET-LOAD" | tail -n 2 | sed -n 's/.*tx_bytes=\([0-9]*\).*/\1/p' | tr '\n' ' ')
        set -- $1 $_l
        [ $# -eq 3 ] && [ "$3" -gt "$2" ] && return 0
        past "$_le" && return 1
        sleep 1
    done
}
if ! over_budget && [ -z "$why" ]; then
    WHY="" DETAIL=""
    net_cmd $A 20 load $B_IP $GW || WHY="$WHY $A load: $NETR;"
    net_cmd $B 20 load $A_IP $GW || WHY="$WHY $B load: $NETR;"
    sleep 4
    loaded $B || WHY="$WHY $B's traffic did not flow before the detach ($(gl $B | grep NET-LOAD | tail -n 1 | sed 's/^.*NET-LOAD //'));"
    DETAIL="$B before: $(gl $B | grep NET-LOAD | tail -n 1 | sed 's/^.*NET-LOAD //'); Ferrite: '$(netline)';"
    t0=$(lab_uptime)
    if timeout 30 xl network-detach $B 0 >/tmp/xl-detach.log 2>&1; then
        DETAIL="$DETAIL xl network-detach $B 0 returned in $(lab_since "$t0") s;"
    else
        WHY="$WHY xl network-detach $B 0 failed or hung (status $?) after $(lab_since "$t0") s: $(tr '\n' ' ' </tmp/xl-detach.log | cut -c1-200);"
    fi
    vif_gone $BDOM 20 || WHY="$WHY Ferrite still has backend/vif/$BDOM or a 'vif $BDOM/' line in $NETNODE 20 s later;"
    wait_log "$(glog $B)" "NET-EVENT eth0 absent" 15 || WHY="$WHY $B still has eth0 15 s after the detach;"
    xenstore-exists /local/domain/$BDOM/device/vif/0 >/dev/null 2>&1 && WHY="$WHY $B's device/vif/0 is still there;"
    nl=$(netline)
    if [ -z "$nl" ]; then
        WHY="$WHY Ferrite publishes no $NETNODE (counters not checkable);"
    else
        [ "$(kv "$nl" vifs)" = 1 ] || WHY="$WHY $NETNODE vifs='$(kv "$nl" vifs)' (expected 1: $A's);"
    fi
    DETAIL="$DETAIL after: $NETNODE '$nl' ($(flines $NETNODE | grep -c '^vif ') vif lines)"
    if [ -z "$WHY" ]; then verdict net-detach PASS "$DETAIL"; else verdict net-detach FAIL "$WHY $DETAIL"; evidence net-detach; fi
fi

# ---------------------------------------------------------------- net-destroy
if ! over_budget && [ -z "$why" ]; then
    WHY="" DETAIL=""
    sleep 2
    loaded $A || WHY="$WHY $A's traffic was not flowing ($(gl $A | grep NET-LOAD | tail -n 1 | sed 's/^.*NET-LOAD //'));"
    DETAIL="$A before: $(gl $A | grep NET-LOAD | tail -n 1 | sed 's/^.*NET-LOAD //');"
    t0=$(lab_uptime)
    xl destroy $A >/tmp/xl-destroy.log 2>&1 || WHY="$WHY xl destroy $A failed: $(tr '\n' ' ' </tmp/xl-destroy.log);"
    DETAIL="$DETAIL xl destroy took $(lab_since "$t0") s;"
    vif_gone $ADOM 20 || WHY="$WHY Ferrite still has backend/vif/$ADOM or a 'vif $ADOM/' line 20 s after xl destroy;"
    # The gauges back to the baseline (the switch with no guest), within 20 s.
    if [ -z "$BASE" ]; then
        WHY="$WHY no baseline: Ferrite published no $NETNODE before the guests;"
    else
        end=$(now_after 20)
        while :; do
            nl=$(netline) diff=""
            for k in $GAUGES; do
                bv=$(kv "$BASE" $k)
                [ -n "$bv" ] || continue
                [ "$(kv "$nl" $k)" = "$bv" ] || diff="$diff $k=$(kv "$nl" $k) (baseline $bv)"
            done
            [ -z "$diff" ] && break
            past "$end" && break
            sleep 0.5
        done
        [ -n "$(kv "$BASE" vifs)" ] || WHY="$WHY the baseline has no vifs= gauge;"
        [ -z "$diff" ] || WHY="$WHY not back to the baseline 20 s after xl destroy:$diff;"
        DETAIL="$DETAIL $NETNODE '$nl' (baseline '$BASE')"
    fi
    if [ -z "$WHY" ]; then verdict net-destroy PASS "$DETAIL"; else verdict net-destroy FAIL "$WHY $DETAIL"; evidence net-destroy; fi
fi

lab_info "Ferrite's console, net lines:"
grep -aE "vif|net|nic|switch|WARN|ERROR" "$GUEST_LOG" | tail -n 20 | sed 's/^/LAB-INFO ferrite | /'
fail_rest "out of the mode's ${BUDGET} s budget"
cleanup
