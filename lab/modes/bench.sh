#!/bin/sh
# MODE bench: Ferrite against a Linux driver domain, in one Xen boot
# (`./run.sh bench`; the host side is bench/dd.sh and bench/report.py).
#
# QEMU gives dom0 three NVMe controllers of the same model: 00:04.0 (1 GiB) goes
# to Ferrite, 00:05.0 (1 GiB, same size, own image) to the Linux driver domain,
# 00:06.0 (results) stays in dom0, which writes a tar of the results onto it.
# Set-ups, kept up side by side so jobs interleave:
#   ferrite   guest-f (Linux PV) on a disk Ferrite serves   (backend=ferrite)
#   linux-dd  guest-l (Linux PV) on a disk xen-blkback serves in linux-dd
#   raw       fio inside linux-dd on its /dev/nvme0n1
# Settings come from /extra/bench.conf (ROUNDS, RUNTIME, RAMP, SIZE, JOBS,
# MEMPROBE, FERRITE_MEMS, DD_MEMS, SETUPS, FERRITE_EXTRA). Per run: results/raw/r<round>-<job>-<setup>.json
# (fio's JSON), runs.tsv, setup.tsv (readiness times), memprobe.tsv, xl-list.txt.
# LAB-QEMU-NVME: 1G 1G 64M
# LAB-EXPECT: bench-ferrite bench-linux-dd bench-raw bench-results
. /lab/common.sh
ROUNDS=3 RUNTIME=10 RAMP=2 SIZE=512M MEMPROBE=0 FERRITE_MEMS="" DD_MEMS="" SETUPS="ferrite linux-dd raw" FERRITE_EXTRA=""
JOBS="randread-4k-qd1 randread-4k-qd32 randwrite-4k-qd32 seqread-128k-qd8 seqwrite-128k-qd8 randrw70-4k-qd16"
[ -r /extra/bench.conf ] && . /extra/bench.conf
PCI_F=0000:00:04.0
PCI_L=0000:00:05.0
GCFG=/ferrite/configs/guest-linux.cfg
DDCFG=/ferrite/configs/linux-dd.cfg
R=/results
CON=/var/log/xen/console
mkdir -p $R/raw
printf 'round\tjob\tsetup\tseq\trc\tsecs\tfile\n' >$R/runs.tsv
printf 'setup\tstep\tseconds\n' >$R/setup.tsv
printf 'domain\tmemory_mib\tresult\tdetail\n' >$R/memprobe.tsv
lab_info "bench: rounds=$ROUNDS runtime=${RUNTIME}s ramp=${RAMP}s size=$SIZE jobs: $JOBS"

# fio options of a job (same seed for every set-up).
job_opts() {
    common="--direct=1 --ioengine=libaio --time_based --runtime=$RUNTIME --ramp_time=$RAMP --size=$SIZE --randseed=20261122 --numjobs=1"
    case $1 in
        randread-4k-qd1) echo "$common --rw=randread --bs=4k --iodepth=1" ;;
        randread-4k-qd32) echo "$common --rw=randread --bs=4k --iodepth=32" ;;
        randwrite-4k-qd32) echo "$common --rw=randwrite --bs=4k --iodepth=32" ;;
        seqread-128k-qd8) echo "$common --rw=read --bs=128k --iodepth=8" ;;
        seqwrite-128k-qd8) echo "$common --rw=write --bs=128k --iodepth=8" ;;
        randrw70-4k-qd16) echo "$common --rw=randrw --rwmixread=70 --bs=4k --iodepth=16" ;;
        *) return 1 ;;
    esac
}

# create_guest NAME BACKEND TARGET: a Linux PV guest running the bench agent on xvda.
create_guest() {
    extra=$(sed -n 's/^extra *= *"\(.*\)"/\1/p' $GCFG | sed "s/lab\.phase=[a-z]*/lab.phase=bench/")
    timeout 90 xl create $GCFG "name=\"$1\"" "vcpus=1" "extra=\"$extra\"" \
        "disk=['backend=$2, vdev=xvda, format=raw, target=$3']" >/tmp/xl-$1.log 2>&1
}

# wait_connected DD GUEST SECONDS: the guest's vbd 51712 (xvda) backend is Connected.
wait_connected() {
    ddid=$(xl domid "$1" 2>/dev/null) && gid=$(xl domid "$2" 2>/dev/null) || return 1
    wait_key "/local/domain/$ddid/backend/vbd/$gid/51712/state" 4 "$3"
}

# xl_timed LOG ARGS...: xl -vvv ARGS with each output line stamped with dom0's
# uptime (awk reads /proc/uptime itself: no process per line); status of xl.
xl_timed() {
    _log=$1; shift
    { timeout 90 xl -vvv "$@"; echo "XL-STATUS $?"; } 2>&1 | awk '{ getline t < "/proc/uptime"; close("/proc/uptime"); split(t, u, " "); print u[1], $0 }' >"$_log"
    grep -q ' XL-STATUS 0$' "$_log"
}

# start_ferrite MEM: Ferrite with PCI_F; sets READY_S (xl create -> ready).
start_ferrite() {
    t0=$(lab_uptime)
    mem=$1
    set --
    [ -n "$FERRITE_EXTRA" ] && set -- "extra=\"$FERRITE_EXTRA\""
    xl_timed /tmp/xl-ferrite.log create /ferrite/configs/ferrite.cfg "pci=['$PCI_F']" "memory=$mem" "$@" || return 1
    CREATE_S=$(lab_since "$t0")
    domid=$(xl domid ferrite) || return 1
    wait_key "/local/domain/$domid/data/ferrite/state" ready 30 || return 1
    READY_S=$(lab_since "$t0")
}

# start_dd MEM: the Linux driver domain with PCI_L; sets READY_S.
start_dd() {
    t0=$(lab_uptime)
    xl_timed /tmp/xl-linux-dd.log create $DDCFG "pci=['$PCI_L']" "memory=$1" || return 1
    CREATE_S=$(lab_since "$t0")
    domid=$(xl domid linux-dd) || return 1
    wait_key "/local/domain/$domid/data/dd/state" ready 180 || return 1
    READY_S=$(lab_since "$t0")
}

# attach_guest DD GUEST TARGET: create GUEST on DD's disk; sets CONNECT_S.
attach_guest() {
    t0=$(lab_uptime)
    create_guest "$2" "$1" "$3" || { lab_show /tmp/xl-$2.log 8 "xl $2"; return 1; }
    wait_connected "$1" "$2" 60 || return 1
    CONNECT_S=$(lab_since "$t0")
    wait_log "$CON/guest-$2.log" "BENCH-AGENT ready" 60
}

SEQ=0
# run_job SETUP JOB ROUND: one fio job in SETUP's domain; the JSON to $R/raw/.
run_job() {
    case $1 in
        ferrite) dom=guest-f ;;
        linux-dd) dom=guest-l ;;
        raw) dom=linux-dd ;;
    esac
    SEQ=$((SEQ + 1))
    out=r$3-$2-$1.json
    if agent_run $dom $SEQ "$2" $((RUNTIME + RAMP + 90)) $R/raw/$out $(job_opts "$2"); then jrc=0; else jrc=1; fi
    [ -s $R/raw/$out ] || out=-
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$3" "$2" "$1" $SEQ "$AGENT_RC" "$AGENT_SECS" "$out" >>$R/runs.tsv
    case $AGENT_RC in
        nodomain) lab_info "bench r$3 $2 $1: domain $dom is not running" ;;
        nostart) lab_info "bench r$3 $2 $1: the agent in $dom did not start the job within 30 s" ;;
        timeout) lab_info "bench r$3 $2 $1: no end within $((RUNTIME + RAMP + 90)) s" ;;
        *) lab_info "bench r$3 $2 $1: rc=$AGENT_RC ${AGENT_SECS} s: $(fio_brief $R/raw/$out)" ;;
    esac
    return $jrc
}

# ---------------------------------------------------------------- set-ups
for p in $PCI_F $PCI_L; do
    xl pci-assignable-add $p >/tmp/pci.log 2>&1 || lab_info "xl pci-assignable-add $p: $(tr '\n' ' ' </tmp/pci.log)"
done

want() { case " $SETUPS " in *" $1 "*) return 0 ;; esac; return 1; }
FERRITE_OK=no
lab_step bench-ferrite "starting Ferrite (driver domain, NVMe $PCI_F)"
if ! want ferrite; then
    lab_skip bench-ferrite "not among the set-ups ($SETUPS)"
elif start_ferrite 32; then
    printf 'ferrite\txl-create\t%s\nferrite\tready\t%s\n' "$CREATE_S" "$READY_S" >>$R/setup.tsv
    lab_info "Ferrite ready ${READY_S} s after xl create"
    if attach_guest ferrite guest-f nvme0n1; then
        printf 'ferrite\tguest-connected\t%s\n' "$CONNECT_S" >>$R/setup.tsv
        FERRITE_OK=yes
        lab_pass bench-ferrite "Ferrite ready ${READY_S} s after xl create; guest-f's disk Connected ${CONNECT_S} s after its xl create"
    else
        lab_fail bench-ferrite "guest-f did not get a Connected disk from Ferrite"
        lab_show "$CON/guest-guest-f.log" 10 guest-f
    fi
else
    lab_fail bench-ferrite "Ferrite did not become ready"
    lab_show /tmp/xl-ferrite.log 10 xl
    lab_show "$GUEST_LOG" 10 ferrite
fi

DD_OK=no
lab_step bench-linux-dd "starting the Linux driver domain (xen-blkback, NVMe $PCI_L)"
if ! want linux-dd && ! want raw; then
    lab_skip bench-linux-dd "not among the set-ups ($SETUPS)"
elif start_dd 256; then
    printf 'linux-dd\txl-create\t%s\nlinux-dd\tready\t%s\n' "$CREATE_S" "$READY_S" >>$R/setup.tsv
    lab_info "linux-dd ready ${READY_S} s after xl create"
    grep -a "DD-INFO" "$CON/guest-linux-dd.log" | tr -d '\r' | sed 's/^/LAB-INFO linux-dd | /'
    if ! want linux-dd; then
        lab_skip bench-linux-dd "linux-dd ready ${READY_S} s after xl create; no guest (set-ups: $SETUPS)"
    elif attach_guest linux-dd guest-l /dev/nvme0n1; then
        printf 'linux-dd\tguest-connected\t%s\n' "$CONNECT_S" >>$R/setup.tsv
        DD_OK=yes
        lab_pass bench-linux-dd "linux-dd ready ${READY_S} s after xl create; guest-l's disk Connected ${CONNECT_S} s after its xl create"
    else
        lab_fail bench-linux-dd "guest-l did not get a Connected disk from linux-dd"
        lab_show "$CON/guest-guest-l.log" 10 guest-l
        lab_show "$CON/guest-linux-dd.log" 15 linux-dd
    fi
else
    lab_fail bench-linux-dd "the Linux driver domain did not become ready"
    lab_show /tmp/xl-linux-dd.log 10 xl
    lab_show "$CON/guest-linux-dd.log" 25 linux-dd
fi
RAW_OK=no
if want raw && xl domid linux-dd >/dev/null 2>&1 && wait_log "$CON/guest-linux-dd.log" "BENCH-AGENT ready" 5; then
    RAW_OK=yes
fi
xl list >$R/xl-list.txt 2>&1
lab_info "xl list:"
sed 's/^/LAB-INFO   | /' $R/xl-list.txt

# ---------------------------------------------------------------- rounds
FAILS=0
r=1
while [ $r -le $ROUNDS ]; do
    lab_step bench-round "round $r of $ROUNDS"
    for j in $JOBS; do
        [ $FERRITE_OK = yes ] && { run_job ferrite $j $r || FAILS=$((FAILS + 1)); }
        [ $DD_OK = yes ] && { run_job linux-dd $j $r || FAILS=$((FAILS + 1)); }
        [ $RAW_OK = yes ] && { run_job raw $j $r || FAILS=$((FAILS + 1)); }
    done
    r=$((r + 1))
done
if [ $RAW_OK = yes ]; then lab_pass bench-raw "fio inside linux-dd on its /dev/nvme0n1"
elif want raw; then lab_fail bench-raw "no agent in linux-dd: the raw set-up was not measured"
else lab_skip bench-raw "not among the set-ups ($SETUPS)"; fi
lab_info "Ferrite's console, last lines:"
lab_show "$GUEST_LOG" 6 ferrite

# ---------------------------------------------------------------- memory probe
# The smallest memory (of the candidates, largest first) with which a driver
# domain still starts, connects a guest and passes three short jobs.
probe_jobs() {
    save=$RUNTIME saver=$RAMP
    RUNTIME=3 RAMP=1
    ok=yes
    for j in randread-4k-qd32 seqwrite-128k-qd8 randrw70-4k-qd16; do
        run_job "$1" $j "m$2" || ok=no
    done
    RUNTIME=$save RAMP=$saver
    [ $ok = yes ]
}
if [ "$MEMPROBE" = 1 ]; then
    lab_step bench-memprobe "memory probe: Ferrite ($FERRITE_MEMS MiB), linux-dd ($DD_MEMS MiB)"
    if [ $FERRITE_OK = yes ]; then
        for m in $FERRITE_MEMS; do
            xl destroy guest-f >/dev/null 2>&1; xl destroy ferrite >/dev/null 2>&1; sleep 2
            if ! start_ferrite "$m"; then res=fail det="not ready"
            elif ! attach_guest ferrite guest-f nvme0n1; then res=fail det="guest disk not connected"
            elif ! probe_jobs ferrite "$m"; then res=fail det="a job failed"
            else res=pass det="ready ${READY_S} s"; fi
            printf 'ferrite\t%s\t%s\t%s\n' "$m" $res "$det" >>$R/memprobe.tsv
            lab_info "memprobe ferrite ${m} MiB: $res ($det)"
            [ $res = pass ] || break
        done
    fi
    if [ $DD_OK = yes ]; then
        for m in $DD_MEMS; do
            xl destroy guest-l >/dev/null 2>&1; xl destroy linux-dd >/dev/null 2>&1; sleep 3
            if ! start_dd "$m"; then res=fail det="not ready"
            elif ! attach_guest linux-dd guest-l /dev/nvme0n1; then res=fail det="guest disk not connected"
            elif ! probe_jobs linux-dd "$m"; then res=fail det="a job failed"
            else res=pass det="ready ${READY_S} s"; fi
            printf 'linux-dd\t%s\t%s\t%s\n' "$m" $res "$det" >>$R/memprobe.tsv
            lab_info "memprobe linux-dd ${m} MiB: $res ($det)"
            [ $res = pass ] || break
        done
    fi
fi

# ---------------------------------------------------------------- results
stat -c '%s' /ferrite/ferrite >$R/ferrite-image-bytes 2>/dev/null
stat -c '%s' /lab/guest-initrd.gz >$R/linux-initrd-bytes 2>/dev/null
cp "$GUEST_LOG" $R/console-ferrite.log 2>/dev/null
# xl -vvv create of each driver domain (the last one), lines stamped with dom0's uptime.
cp /tmp/xl-ferrite.log $R/xl-create-ferrite.log 2>/dev/null
cp /tmp/xl-linux-dd.log $R/xl-create-linux-dd.log 2>/dev/null
for d in linux-dd guest-f guest-l; do
    tr -d '\r' <"$CON/guest-$d.log" 2>/dev/null | grep -av '^BENCH-J ' >$R/console-$d.log
done
echo "$FAILS" >$R/failed-jobs
dev=""
for c in /sys/class/nvme/nvme*; do
    [ "$(cat $c/serial 2>/dev/null | tr -d ' ')" = ferrite-nvme2 ] || continue
    for n in $c/nvme*n1; do [ -e "$n" ] && dev=/dev/$(basename $n); done
done
if [ -n "$dev" ] && (cd $R && tar -cf - .) >"$dev" && sync; then
    lab_pass bench-results "results ($(du -sk $R | cut -f1) KiB, $(ls $R/raw | wc -l) fio JSON files, $FAILS failed job runs) written to $dev"
else
    lab_fail bench-results "could not write the results to the results NVMe (device '${dev:-none}')"
fi
for d in guest-f guest-l; do xl destroy $d >/dev/null 2>&1; done
lab_shutdown 60
xl destroy linux-dd >/dev/null 2>&1
