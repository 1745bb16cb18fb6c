#!/bin/sh
# MODE main: what ./run.sh shows a user. Ferrite starts as the driver domain
# with the NVMe controller passed through, then a Linux guest whose disk Ferrite
# serves makes a filesystem on it, writes files, remounts and checks their
# sha256, then runs three short fio jobs on the disk (figures printed); then
# everything shuts down cleanly. Step timings throughout.
# LAB-EXPECT: ready guest-disk guest-fio shutdown
. /lab/common.sh
PCI=0000:00:04.0
GCFG=/ferrite/configs/guest-linux.cfg
GNAME=guest
GLOG=/var/log/xen/console/guest-$GNAME.log
cfg=$(lab_guest_cfg)
t0=$(lab_uptime)
if xl pci-assignable-add $PCI >/tmp/pci.log 2>&1; then
    lab_info "NVMe $PCI made assignable (xl pci-assignable-add)"
else
    lab_info "xl pci-assignable-add $PCI failed: $(tr '\n' ' ' </tmp/pci.log)"
fi
domid=$(lab_create "$cfg" "pci=['$PCI']") || { lab_fail ready "xl create $cfg failed"; lab_fail guest-disk "not run"; exit 1; }
t_created=$(lab_since "$t0")
if lab_wait_ready "$domid" 30; then
    lab_pass ready "Ferrite (domain $domid) ready $READY_AFTER s after xl create"
else
    lab_fail ready "domain $domid state='$READY_STATE' after $READY_AFTER s (expected 'ready')"
fi
lab_step ready "Ferrite is up"
lab_info "Ferrite's NVMe self-test: $(xenstore-read /local/domain/$domid/data/ferrite/nvme 2>/dev/null || echo '<none>')"
lab_info "Ferrite's console ($GUEST_LOG), last lines:"
lab_show "$GUEST_LOG" 14

# A Linux guest on a Ferrite-served disk.
t_g=$(lab_uptime)
extra=$(sed -n 's/^extra *= *"\(.*\)"/\1/p' $GCFG | sed "s/lab\.phase=[a-z]*/lab.phase=fsbench/")
lab_step guest-create "xl create $GCFG (disk=['backend=ferrite, vdev=xvda, ...'])"
if timeout 90 xl create $GCFG "extra=\"$extra\"" >/tmp/xl-guest.log 2>&1; then
    lab_step guest-created "guest created in $(lab_since "$t_g") s"
    end=$(awk -v a="$(lab_uptime)" 'BEGIN { print a + 150 }')
    while ! grep -q "GUEST-DONE" "$GLOG" 2>/dev/null; do
        awk -v a="$(lab_uptime)" -v e="$end" 'BEGIN { exit !(a > e) }' && break
        sleep 0.5
    done
    res=$(grep -a "GUEST-RESULT fs-new" "$GLOG" 2>/dev/null | head -n 1 | sed 's/^.*GUEST-RESULT fs-new //')
    grep -aE "GUEST-(FEATURES|RESULT)|blkfront: xvda" "$GLOG" 2>/dev/null | sed 's/^.*\(GUEST-\|blkfront\)/\1/' | sed 's/^/LAB-INFO guest | /'
    case "$res" in
        PASS*) lab_pass guest-disk "Linux guest on a Ferrite-served NVMe disk: ${res#PASS }" ;;
        *) lab_fail guest-disk "guest result: '${res:-<none within 150 s>}'"; lab_show "$GLOG" 20 guest ;;
    esac
    lab_step guest-done "guest finished its filesystem check after $(lab_since "$t_g") s"
    # Short fio runs on the raw disk (after the filesystem check, which they overwrite).
    lab_step guest-fio "fio in the guest on /dev/xvda (served by Ferrite): three 5 s jobs"
    common="--direct=1 --ioengine=libaio --time_based --runtime=5 --ramp_time=1 --size=256M --randseed=20261122"
    figs="" fio_ok=yes n=0
    for job in "randread-4k-qd32 --rw=randread --bs=4k --iodepth=32" "randwrite-4k-qd32 --rw=randwrite --bs=4k --iodepth=32" "seqread-128k-qd8 --rw=read --bs=128k --iodepth=8"; do
        n=$((n + 1))
        set -- $job
        tag=$1; shift
        if agent_run $GNAME $n $tag 90 /tmp/fio-$tag.json $common "$@"; then
            b=$(fio_brief /tmp/fio-$tag.json)
            lab_info "fio $tag: $b (${AGENT_SECS} s)"
            figs="$figs${figs:+; }$tag: $b"
        else
            fio_ok=no
            lab_info "fio $tag failed: $AGENT_RC"
        fi
    done
    if [ $fio_ok = yes ]; then
        lab_pass guest-fio "$figs (QEMU TCG: compare ratios with ./run.sh bench, not absolute figures)"
    else
        lab_fail guest-fio "a fio job did not complete; see $GLOG"
        lab_show "$GLOG" 10 guest
    fi
    xl destroy $GNAME >/dev/null 2>&1
    lab_info "Ferrite after the guest left:"
    grep -E "vbd " "$GUEST_LOG" | tail -n 4 | sed 's/^/LAB-INFO   | /'
else
    lab_fail guest-disk "xl create of the guest failed"
    lab_fail guest-fio "not run"
    lab_show /tmp/xl-guest.log 10 xl
fi
lab_info "xl list:"
xl list | sed 's/^/LAB-INFO   | /'
lab_shutdown 60
if [ $SHUTDOWN_RC -eq 0 ] && [ $SHUTDOWN_GONE = yes ]; then
    lab_pass shutdown "xl shutdown -w took $SHUTDOWN_AFTER s"
else
    lab_fail shutdown "xl shutdown -w status $SHUTDOWN_RC after $SHUTDOWN_AFTER s; domain gone: $SHUTDOWN_GONE"
fi
lab_info "timings: Ferrite xl create ${t_created} s, ready +${READY_AFTER} s; guest $(lab_since "$t_g") s in all; shutdown ${SHUTDOWN_AFTER} s"
