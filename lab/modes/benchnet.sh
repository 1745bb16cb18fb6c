#!/bin/sh
# MODE benchnet: Ferrite's netback against a Linux network driver domain, in one
# Xen boot (`./run.sh bench net`; the host side is bench/net.sh and
# bench/netreport.py).
#
# QEMU gives dom0 two virtio-net NICs, each on a QEMU user-mode network of its
# own (gateway 10.0.2.2, discard sink 10.0.2.100:9; lab/lab.sh), and one small
# NVMe (00:04.0) that stays in dom0 for the results tar.  Set-ups, kept up side
# by side so the jobs interleave:
#   ferrite  Ferrite (configs/ferrite.cfg, only NIC 0 passed through: no NVMe)
#            with guests fA 10.0.2.21 and fB 10.0.2.22 on its switch
#   linux    a Linux network driver domain "linux-dd" (configs/linux-dd.cfg with
#            lab.role=netdd, lab/dom0/netdd.sh: pcifront + virtio_net + xen-netback
#            + a bridge, vif hotplug as xl devd would; NIC 1) with guests lA
#            10.0.2.31 and lB 10.0.2.32 on its bridge
# Both driver domains have 1 vCPU; every guest (configs/guest-net.cfg,
# lab.phase=netbench: lab/dom0/netbench-agent.sh) 1 vCPU and GUEST_MEM MiB.
# Jobs, run set-up by set-up for each job, ROUNDS times (A = fA/lA, B = fB/lB):
#   g2g-tcp    A -> B TCP stream (fio net, 64 KiB writes), RAMP s warm-up, then SECS s;
#              figure: the sender's MiB/s (the receiver's JSON is kept too)
#   g2o-tcp    A -> 10.0.2.100:9 through the NIC to QEMU's user network (slirp);
#              same figures
#   g2g-udp64  A sends 64-byte UDP datagrams to B as fast as it can for SECS+4 s;
#              figure: datagrams B's receiver counted per second (over its own
#              window of about SECS s; fio's runtime says how long)
#   g2g-ping   A pings B PINGS times, 0.2 s apart; figure: median round trip
# Settings from /extra/benchnet.conf (ROUNDS, SECS, RAMP, PINGS, GUEST_MEM,
# SETUPS, JOBS, DEADLINE: dom0's uptime after which no job starts, so the
# results are written before the host's time limit stops QEMU).  Results in /results (a tar on the NVMe): raw/r<round>-<job>-<setup>.json
# (fio JSON; -rx.json the receiver's) or .txt (ping replies), runs.tsv, cpu.tsv
# (xl list CPU seconds of every domain before and after each job), setup.tsv,
# consoles, and Ferrite's data/ferrite/net and nic after the rounds.
# LAB-QEMU-NVME: 64M
# LAB-QEMU-NIC: user user
# LAB-EXPECT: benchnet-ferrite benchnet-linux benchnet-results
. /lab/common.sh
ROUNDS=3 SECS=10 RAMP=2 PINGS=20 GUEST_MEM=128 SETUPS="ferrite linux" DEADLINE=100000
JOBS="g2g-tcp g2o-tcp g2g-udp64 g2g-ping"
[ -r /extra/benchnet.conf ] && . /extra/benchnet.conf
NIC_F=$(awk '$1 == "nic0" { print $2 }' /lab/nics.txt 2>/dev/null)
NIC_L=$(awk '$1 == "nic1" { print $2 }' /lab/nics.txt 2>/dev/null)
GCFG=/ferrite/configs/guest-net.cfg
DDCFG=/ferrite/configs/linux-dd.cfg
CON=/var/log/xen/console
SINK_HOST=10.0.2.100 SINK_PORT=9
R=/results
mkdir -p $R/raw
printf 'round\tjob\tsetup\tseq\trc\tsecs\tfile\trxfile\tdetail\n' >$R/runs.tsv
printf 'round\tjob\tsetup\twhen\tdomain\tcpu_s\tuptime\n' >$R/cpu.tsv
printf 'setup\tstep\tseconds\n' >$R/setup.tsv
lab_info "benchnet: rounds=$ROUNDS secs=$SECS ramp=$RAMP pings=$PINGS guest memory ${GUEST_MEM} MiB; set-ups: $SETUPS; jobs: $JOBS"
lab_info "NICs: $(tr '\n' ' ' </lab/nics.txt)"
want() { case " $SETUPS " in *" $1 "*) return 0 ;; esac; return 1; }

# The set-ups' names: driver domain, guests A and B, their addresses and MACs.
dd_of() { case $1 in ferrite) echo ferrite ;; linux) echo linux-dd ;; esac; }
ga() { case $1 in ferrite) echo fA ;; linux) echo lA ;; esac; }
gb() { case $1 in ferrite) echo fB ;; linux) echo lB ;; esac; }
ip_of() { case $1 in fA) echo 10.0.2.21 ;; fB) echo 10.0.2.22 ;; lA) echo 10.0.2.31 ;; lB) echo 10.0.2.32 ;; esac; }
mac_of() { case $1 in fA) echo 00:16:3e:fe:00:01 ;; fB) echo 00:16:3e:fe:00:02 ;; lA) echo 00:16:3e:fe:01:01 ;; lB) echo 00:16:3e:fe:01:02 ;; esac; }
glog() { echo "$CON/guest-$1.log"; }
gl() { tr -d '\r' <"$(glog "$1")" 2>/dev/null; }

# wait_end FILE TEXT SECS: wait_log's job for the long waits (a job's end),
# polling once a second and reading the clock with the shell's own `read`: two
# processes a second instead of ten, so dom0 takes less of the CPU the measured
# domains share with it.
wait_end() {
    read _we_u _we_r </proc/uptime
    _we_end=$((${_we_u%.*} + $3))
    until grep -aqF "$2" "$1" 2>/dev/null; do
        read _we_u _we_r </proc/uptime
        [ "${_we_u%.*}" -ge "$_we_end" ] && return 1
        sleep 1
    done
}

SEQ=0
# nb_cmd GUEST SECS OUT VERB ARGS...: have GUEST's agent run VERB (at most SECS
# once it began); the NB-J lines (fio's JSON) or NB-P lines (ping replies) of
# its answer go to OUT (- for none).  Sets NBR (the NB-END line's key=value
# part, or <why> if it did not start or end) and NB_RC (its rc=, or
# nodomain/nostart/timeout); returns 0 only if rc=0.
nb_cmd() {
    _g=$1 _s=$2 _o=$3
    shift 3
    SEQ=$((SEQ + 1))
    NBR="" NB_RC=nodomain
    _id=$(xl domid "$_g" 2>/dev/null)
    [ -n "$_id" ] || { NBR="<no domain $_g>"; return 1; }
    NB_RC=nostart
    _k=0
    # Resend until the agent starts (a write between its read and its watch is missed).
    while :; do
        xenstore-write "/local/domain/$_id/data/netbench/cmd" "$SEQ $*"
        wait_log "$(glog "$_g")" "NB-BEGIN $SEQ " 5 && break
        _k=$((_k + 1))
        [ $_k -ge 5 ] && { NBR="<the agent in $_g did not start command $SEQ ($1)>"; return 1; }
    done
    NB_RC=timeout
    if ! wait_end "$(glog "$_g")" "NB-END $SEQ " "$_s"; then
        NBR="<command $SEQ ($*) did not end within $_s s in $_g>"
        return 1
    fi
    if [ "$_o" != - ]; then
        gl "$_g" | awk -v s="$SEQ" '
            $1 == "NB-BEGIN" && $2 == s { on = 1; next }
            $1 == "NB-END" && $2 == s { on = 0 }
            on && (substr($0, 1, 5) == "NB-J " || substr($0, 1, 5) == "NB-P ") { print substr($0, 6) }' >"$_o"
    fi
    NBR=$(gl "$_g" | sed -n "s/^NB-END $SEQ [a-z]* *//p" | head -n 1)
    NB_RC=$(echo "$NBR" | tr ' ' '\n' | sed -n 's/^rc=//p' | head -n 1)
    NB_RC=${NB_RC:-?}
    [ "$NB_RC" = 0 ]
}

# cpu_mark ROUND JOB SETUP WHEN: every domain's CPU seconds (xl list) to cpu.tsv.
cpu_mark() {
    _u=$(lab_uptime)
    xl list 2>/dev/null | awk -v r="$1" -v j="$2" -v s="$3" -v w="$4" -v u="$_u" \
        'NR > 1 { printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r, j, s, w, $1, $NF, u }' >>$R/cpu.tsv
}

# ---------------------------------------------------------------- set-ups
# start_guest SETUP NAME: xl create of a netbench guest on SETUP's driver domain.
extra0=$(sed -n 's/^extra *= *"\(.*\)"/\1/p' $GCFG | sed -e 's/lab\.phase=[a-z]*/lab.phase=netbench/' -e 's/loglevel=[0-9]*/loglevel=4/')
start_guest() {
    _x=$(echo "$extra0" | sed "s|lab\.ip=[^ ]*|lab.ip=$(ip_of "$2")/24|")
    rm -f "$(glog "$2")"
    lab_step guest-create "xl create $2: vif backend=$(dd_of "$1") mac=$(mac_of "$2"), eth0 $(ip_of "$2")/24"
    if timeout 90 xl create $GCFG "name=\"$2\"" "memory=$GUEST_MEM" "vcpus=1" \
        "vif=['backend=$(dd_of "$1"),mac=$(mac_of "$2")']" "extra=\"$_x\"" >/tmp/xl-$2.log 2>&1; then
        return 0
    fi
    lab_info "xl create $2 failed:"
    lab_show /tmp/xl-$2.log 8 "$2"
    return 1
}
# guests_up SETUP SECS: both guests report GUEST-DONE netbench with eth0 up, and
# A reaches B and the gateway; sets WHY.
guests_up() {
    WHY=""
    for g in $(ga "$1") $(gb "$1"); do
        if ! wait_log "$(glog $g)" "GUEST-DONE netbench" "$2"; then
            WHY="$WHY $g did not finish its set-up within $2 s;"
            lab_show "$(glog $g)" 10 "$g"
            continue
        fi
        r=$(gl $g | sed -n 's/^GUEST-RESULT net-if //p' | head -n 1)
        lab_info "$g: $r"
        case $r in PASS*) ;; *) WHY="$WHY $g: eth0 '${r:-<no result>}';" ;; esac
    done
    [ -z "$WHY" ] || return 1
    nb_cmd "$(ga "$1")" 70 - waitping "$(ip_of "$(gb "$1")")" 60
    [ "$(echo "$NBR" | tr ' ' '\n' | sed -n 's/^ok=//p')" = yes ] || WHY="$WHY $(ga "$1") does not reach $(gb "$1"): $NBR;"
    nb_cmd "$(gb "$1")" 70 - waitping "$(ip_of "$(ga "$1")")" 60
    [ "$(echo "$NBR" | tr ' ' '\n' | sed -n 's/^ok=//p')" = yes ] || WHY="$WHY $(gb "$1") does not reach $(ga "$1"): $NBR;"
    nb_cmd "$(ga "$1")" 40 - waitping 10.0.2.2 30
    [ "$(echo "$NBR" | tr ' ' '\n' | sed -n 's/^ok=//p')" = yes ] || WHY="$WHY $(ga "$1") does not reach the gateway 10.0.2.2: $NBR;"
    [ -z "$WHY" ]
}

T0=$(lab_uptime)
for p in $NIC_F $NIC_L; do
    xl pci-assignable-add $p >/tmp/pci.log 2>&1 || lab_info "xl pci-assignable-add $p: $(tr '\n' ' ' </tmp/pci.log)"
done

F_UP=no
if want ferrite; then
    lab_step benchnet-ferrite "starting Ferrite (NIC $NIC_F only)"
    t0=$(lab_uptime)
    if timeout 90 xl create /ferrite/configs/ferrite.cfg "pci=['$NIC_F']" >/tmp/xl-ferrite.log 2>&1 \
        && fdom=$(xl domid ferrite) && wait_key "/local/domain/$fdom/data/ferrite/state" ready 30; then
        F_UP=yes
        printf 'ferrite\tready\t%s\n' "$(lab_since "$t0")" >>$R/setup.tsv
        lab_info "Ferrite ready $(lab_since "$t0") s after xl create; nic: $(xenstore-read /local/domain/$fdom/data/ferrite/nic 2>/dev/null | cut -c1-200)"
        lab_info "Ferrite's data/ferrite/nvme: $(xenstore-read /local/domain/$fdom/data/ferrite/nvme 2>/dev/null)"
    else
        lab_fail benchnet-ferrite "Ferrite did not become ready within 30 s of xl create (NIC $NIC_F)"
        lab_show /tmp/xl-ferrite.log 10 xl
        lab_show "$GUEST_LOG" 20 ferrite
    fi
else
    lab_skip benchnet-ferrite "not among the set-ups ($SETUPS)"
fi
L_UP=no
if want linux; then
    lab_step benchnet-linux "starting the Linux network driver domain (NIC $NIC_L)"
    tl=$(lab_uptime)
    if timeout 90 xl create $DDCFG "pci=['$NIC_L']" "memory=256" "vcpus=1" \
        'extra="console=hvc0 lab.role=netdd loglevel=4 lab.netdd_poll=10"' >/tmp/xl-linux-dd.log 2>&1; then
        L_UP=starting
    else
        lab_fail benchnet-linux "xl create of the Linux driver domain failed"
        lab_show /tmp/xl-linux-dd.log 10 xl
    fi
else
    lab_skip benchnet-linux "not among the set-ups ($SETUPS)"
fi
# Ferrite's guests boot while the Linux driver domain does.
if [ $F_UP = yes ]; then
    tg=$(lab_uptime)
    start_guest ferrite fA && start_guest ferrite fB || F_UP=no
    [ $F_UP = yes ] || lab_fail benchnet-ferrite "xl create of Ferrite's guests failed"
fi
if [ $L_UP = starting ]; then
    ldom=$(xl domid linux-dd 2>/dev/null)
    if [ -n "$ldom" ] && wait_key "/local/domain/$ldom/data/ferrite/state" ready 180; then
        L_UP=yes
        printf 'linux\tready\t%s\n' "$(lab_since "$tl")" >>$R/setup.tsv
        lab_info "linux-dd ready $(lab_since "$tl") s after xl create"
        grep -a "NETDD-INFO" "$CON/guest-linux-dd.log" | tr -d '\r' | sed 's/^/LAB-INFO linux-dd | /'
        tlg=$(lab_uptime)
        start_guest linux lA && start_guest linux lB || L_UP=no
        [ $L_UP = yes ] || lab_fail benchnet-linux "xl create of linux-dd's guests failed"
    else
        L_UP=no
        lab_fail benchnet-linux "the Linux driver domain did not become ready within 180 s"
        lab_show "$CON/guest-linux-dd.log" 25 linux-dd
    fi
fi
if [ $F_UP = yes ]; then
    if guests_up ferrite 240; then
        printf 'ferrite\tguests-up\t%s\n' "$(lab_since "$tg")" >>$R/setup.tsv
        lab_pass benchnet-ferrite "Ferrite (NIC only, 32 MiB) and guests fA, fB up; fA reaches fB and 10.0.2.2 ($(lab_since "$tg") s after their xl create)"
    else
        F_UP=no
        lab_fail benchnet-ferrite "guests on Ferrite not usable:$WHY"
        lab_show "$GUEST_LOG" 15 ferrite
    fi
fi
if [ $L_UP = yes ]; then
    if guests_up linux 240; then
        printf 'linux\tguests-up\t%s\n' "$(lab_since "$tlg")" >>$R/setup.tsv
        lab_pass benchnet-linux "linux-dd (netback + bridge, 256 MiB) and guests lA, lB up; lA reaches lB and 10.0.2.2 ($(lab_since "$tlg") s after their xl create)"
    else
        L_UP=no
        lab_fail benchnet-linux "guests on linux-dd not usable:$WHY"
        lab_show "$CON/guest-linux-dd.log" 15 linux-dd
    fi
fi
lab_info "set-up took $(lab_since "$T0") s"
xl list >$R/xl-list.txt 2>&1
sed 's/^/LAB-INFO   | /' $R/xl-list.txt

# ---------------------------------------------------------------- rounds
# settle SECS: wait (at most SECS) until the driver domains and guests are
# nearly idle, under 0.6 CPU seconds in all over 3 s: the last of the
# set-up's boot work otherwise lands in the first job (a full run's first
# ferrite job took 35 s instead of 18 and gave a quarter of the rate while
# linux-dd and its guests were still busy).
settle() {
    _st=$(lab_uptime)
    _se=$(now_after "$1")
    _sp=$(xl list 2>/dev/null | awk 'NR > 2 { s += $NF } END { print s + 0 }')
    while :; do
        sleep 3
        _sn=$(xl list 2>/dev/null | awk 'NR > 2 { s += $NF } END { print s + 0 }')
        if awk -v a="$_sp" -v b="$_sn" 'BEGIN { exit !(b - a < 0.6) }'; then
            lab_info "settled $(lab_since "$_st") s after the set-up (domUs: $(awk -v a="$_sp" -v b="$_sn" 'BEGIN { printf "%.1f", b - a }') CPU s in the last 3 s)"
            return 0
        fi
        if past "$_se"; then
            lab_info "not settled after $1 s (domUs: $(awk -v a="$_sp" -v b="$_sn" 'BEGIN { printf "%.1f", b - a }') CPU s in the last 3 s); starting anyway"
            return 1
        fi
        _sp=$_sn
    done
}
[ $F_UP = yes ] || [ $L_UP = yes ] && settle 60
# run_job SETUP JOB ROUND: one job; its row in runs.tsv.
run_job() {
    a=$(ga "$1") b=$(gb "$1")
    base=r$3-$2-$1
    out=- rx=- detail=""
    t=$(lab_uptime)
    cpu_mark "$3" "$2" "$1" before
    case $2 in
        g2g-tcp)
            out=$base.json rx=$base-rx.json
            if nb_cmd $b 30 - rx tcp 5201 64k $((SECS + RAMP)); then
                nb_cmd $a $((SECS + RAMP + 60)) $R/raw/$out tx tcp "$(ip_of $b)" 5201 64k $SECS $RAMP
                rc=$NB_RC detail="tx: $NBR"
                nb_cmd $b 40 $R/raw/$rx rxwait 30
                detail="$detail; rx: $NBR"
            else
                rc=$NB_RC detail="rx: $NBR"
            fi ;;
        g2o-tcp)
            out=$base.json
            nb_cmd $a $((SECS + RAMP + 60)) $R/raw/$out tx tcp $SINK_HOST $SINK_PORT 64k $SECS $RAMP
            rc=$NB_RC detail="tx: $NBR" ;;
        g2g-udp64)
            # The receiver counts over its own window: from the sender's first
            # datagram to SECS+2 s after it started; the sender outlasts it.
            out=$base.json rx=$base-rx.json
            if nb_cmd $b 30 - rx udp 5202 64 $((SECS + 2)); then
                nb_cmd $a $((SECS + 60)) $R/raw/$out tx udp "$(ip_of $b)" 5202 64 $((SECS + 4)) 0
                detail="tx: $NBR"
                nb_cmd $b 40 $R/raw/$rx rxwait 30
                rc=$NB_RC detail="$detail; rx: $NBR"
            else
                rc=$NB_RC detail="rx: $NBR"
            fi ;;
        g2g-ping)
            out=$base.txt
            nb_cmd $a $((PINGS + 40)) $R/raw/$out ping "$(ip_of $b)" $PINGS 0.2
            rc=$NB_RC detail="$NBR" ;;
    esac
    cpu_mark "$3" "$2" "$1" after
    secs=$(lab_since "$t")
    [ "$out" != - ] && [ ! -s $R/raw/$out ] && out=-
    [ "$rx" != - ] && [ ! -s $R/raw/$rx ] && rx=-
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$3" "$2" "$1" $SEQ "$rc" "$secs" "$out" "$rx" "$detail" >>$R/runs.tsv
    lab_info "benchnet r$3 $2 $1: rc=$rc ${secs} s: $detail"
    [ "$rc" = 0 ]
}
FAILS=0
r=1
while [ $r -le $ROUNDS ]; do
    lab_step benchnet-round "round $r of $ROUNDS"
    for j in $JOBS; do
        if past "$DEADLINE"; then
            lab_info "benchnet: past the deadline (dom0 uptime $DEADLINE s): round $r's $j and later jobs not run"
            FAILS=$((FAILS + 1))
            break 2
        fi
        [ $F_UP = yes ] && { run_job ferrite $j $r || FAILS=$((FAILS + 1)); }
        [ $L_UP = yes ] && { run_job linux $j $r || FAILS=$((FAILS + 1)); }
    done
    r=$((r + 1))
done

# ---------------------------------------------------------------- results
fdom=$(xl domid ferrite 2>/dev/null)
if [ -n "$fdom" ]; then
    printf '%b\n' "$(xenstore-read /local/domain/$fdom/data/ferrite/net 2>/dev/null)" >$R/ferrite-net.txt
    xenstore-read /local/domain/$fdom/data/ferrite/nic >$R/ferrite-nic.txt 2>/dev/null
    xenstore-read /local/domain/$fdom/data/ferrite/status >$R/ferrite-status.txt 2>/dev/null
    lab_info "Ferrite's data/ferrite/net: $(head -n 1 $R/ferrite-net.txt | cut -c1-300)"
    lab_info "Ferrite's data/ferrite/nic: $(cut -c1-300 $R/ferrite-nic.txt)"
fi
ldom=$(xl domid linux-dd 2>/dev/null)
[ -n "$ldom" ] && printf '%b\n' "$(xenstore-read /local/domain/$ldom/data/ferrite/net 2>/dev/null)" >$R/linux-net.txt
stat -c '%s' /ferrite/ferrite >$R/ferrite-image-bytes 2>/dev/null
tr -d '\r' <"$GUEST_LOG" >$R/console-ferrite.log 2>/dev/null
for d in linux-dd fA fB lA lB; do
    tr -d '\r' <"$CON/guest-$d.log" 2>/dev/null | grep -av '^NB-J ' >$R/console-$d.log
done
echo "$FAILS" >$R/failed-jobs
lab_info "Ferrite's console, last lines:"
lab_show "$GUEST_LOG" 8 ferrite
dev=""
for c in /sys/class/nvme/nvme*; do
    [ "$(cat $c/serial 2>/dev/null | tr -d ' ')" = ferrite-nvme0 ] || continue
    for n in $c/nvme*n1; do [ -e "$n" ] && dev=/dev/$(basename $n); done
done
if [ -n "$dev" ] && (cd $R && tar -cf - .) >"$dev" && sync; then
    lab_pass benchnet-results "results ($(du -sk $R | cut -f1) KiB, $(ls $R/raw | wc -l) raw files, $FAILS failed job runs) written to $dev"
else
    lab_fail benchnet-results "could not write the results to the results NVMe (device '${dev:-none}')"
fi
for d in fA fB lA lB; do xl destroy $d >/dev/null 2>&1; done
lab_shutdown 30
xl destroy linux-dd >/dev/null 2>&1
