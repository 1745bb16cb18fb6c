#!/bin/sh
# MODE main: what ./run.sh shows a user. Ferrite starts as the driver domain
# with the NVMe controller passed through; the disk (80 MiB) carries a GPT with
# two partitions (main-1, main-2; written by the host, tests/mkimage.py).
# Two Linux guests, each on its own partition (guest1: target=nvme0n1p1,
# guest2: target=partlabel=main-2), each make a filesystem, write files,
# remount and check their sha256 (at the same time), then run three short fio
# jobs on their raw disk (guest1's, then guest2's; figures printed); then
# everything shuts down cleanly. Step timings throughout.
# LAB-QEMU-NVME: 80M
# LAB-NVME-FILL: nvme0n1 --part main-1:3f1e7a52-0001-4c3b-9a11-00000000c001:1M:36M --part main-2:3f1e7a52-0002-4c3b-9a11-00000000c002:38M:36M
# LAB-EXPECT: ready partitions guest-disk-1 guest-disk-2 guest-fio-1 guest-fio-2 shutdown
. /lab/common.sh
PCI=0000:00:04.0
GCFG=/ferrite/configs/guest-linux.cfg
cfg=$(lab_guest_cfg)
t0=$(lab_uptime)
if xl pci-assignable-add $PCI >/tmp/pci.log 2>&1; then
    lab_info "NVMe $PCI made assignable (xl pci-assignable-add)"
else
    lab_info "xl pci-assignable-add $PCI failed: $(tr '\n' ' ' </tmp/pci.log)"
fi
domid=$(lab_create "$cfg" "pci=['$PCI']") || { lab_fail ready "xl create $cfg failed"; exit 1; }
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

# data/ferrite/disks: the namespace and its two partitions.
# xenstore-read escapes the newlines between the lines (\n): undo that.
disks=$(printf '%b\n' "$(xenstore-read /local/domain/$domid/data/ferrite/disks 2>/dev/null)" | grep .)
echo "$disks" | sed 's/^/LAB-INFO disks | /'
why=""
for want in "nvme0n1p1 $((36 << 20)) main-1" "nvme0n1p2 $((36 << 20)) main-2"; do
    set -- $want
    l=$(echo "$disks" | awk -v n="$1" '$1 == n')
    case " $l " in *" bytes=$2 "*" partlabel=$3 "*) ;; *) why="$why $1: '${l:-<no line>}' (expected bytes=$2 partlabel=$3);" ;; esac
done
if [ -z "$why" ]; then lab_pass partitions "data/ferrite/disks lists nvme0n1 and its partitions nvme0n1p1 (main-1), nvme0n1p2 (main-2), 36 MiB each"
else lab_fail partitions "$why"; fi

# Two Linux guests, each on its own partition of the Ferrite-served disk.
t_g=$(lab_uptime)
extra=$(sed -n 's/^extra *= *"\(.*\)"/\1/p' $GCFG | sed "s/lab\.phase=[a-z]*/lab.phase=fsbench/")
GUESTS="guest1 guest2"
for g in $GUESTS; do
    case $g in guest1) tgt="target=nvme0n1p1" ;; *) tgt="target=partlabel=main-2" ;; esac
    lab_step guest-create "xl create $GCFG name=$g disk=['backend=ferrite, vdev=xvda, format=raw, $tgt']"
    if timeout 90 xl create $GCFG "name=\"$g\"" "disk=['backend=ferrite, vdev=xvda, format=raw, $tgt']" "extra=\"$extra\"" >/tmp/xl-$g.log 2>&1; then
        lab_step guest-created "$g (domain $(xl domid $g 2>/dev/null)) created $(lab_since "$t_g") s after the first xl create"
    else
        lab_info "xl create $g failed:"; lab_show /tmp/xl-$g.log 10 xl
    fi
done
end=$(awk -v a="$(lab_uptime)" 'BEGIN { print a + 180 }')
for g in $GUESTS; do
    while ! grep -q "GUEST-DONE" /var/log/xen/console/guest-$g.log 2>/dev/null; do
        awk -v a="$(lab_uptime)" -v e="$end" 'BEGIN { exit !(a > e) }' && break
        sleep 0.5
    done
done
lab_step guest-done "both guests finished their filesystem check after $(lab_since "$t_g") s"
lab_info "data/ferrite/disks with both guests connected:"
printf '%b\n' "$(xenstore-read /local/domain/$domid/data/ferrite/disks 2>/dev/null)" | grep . | sed 's/^/LAB-INFO disks | /'
# k, not n: lab_step/lab_pass/lab_fail (common.sh) set n.
k=0
for g in $GUESTS; do
    k=$((k + 1))
    GLOG=/var/log/xen/console/guest-$g.log
    res=$(grep -a "GUEST-RESULT fs-new" "$GLOG" 2>/dev/null | head -n 1 | sed 's/^.*GUEST-RESULT fs-new //')
    grep -aE "GUEST-(FEATURES|RESULT)|blkfront: xvda" "$GLOG" 2>/dev/null | sed 's/^.*\(GUEST-\|blkfront\)/\1/' | sed "s/^/LAB-INFO $g | /"
    case "$res" in
        PASS*) lab_pass guest-disk-$k "$g on partition $k of a Ferrite-served NVMe disk: ${res#PASS }" ;;
        *) lab_fail guest-disk-$k "$g result: '${res:-<none within 180 s>}'"; lab_show "$GLOG" 20 $g ;;
    esac
done
# Short fio runs on each guest's raw disk (after the filesystem check, which they overwrite).
common="--direct=1 --ioengine=libaio --time_based --runtime=5 --ramp_time=1 --size=256M --randseed=20261122"
k=0 seq=0
for g in $GUESTS; do
    k=$((k + 1))
    GLOG=/var/log/xen/console/guest-$g.log
    lab_step guest-fio "fio in $g on /dev/xvda (partition $k, served by Ferrite): three 5 s jobs"
    figs="" fio_ok=yes
    for job in "randread-4k-qd32 --rw=randread --bs=4k --iodepth=32" "randwrite-4k-qd32 --rw=randwrite --bs=4k --iodepth=32" "seqread-128k-qd8 --rw=read --bs=128k --iodepth=8"; do
        seq=$((seq + 1))
        set -- $job
        tag=$1; shift
        if agent_run $g $seq $tag 90 /tmp/fio-$g-$tag.json $common "$@"; then
            b=$(fio_brief /tmp/fio-$g-$tag.json)
            lab_info "fio $g $tag: $b (${AGENT_SECS} s)"
            figs="$figs${figs:+; }$tag: $b"
        else
            fio_ok=no
            lab_info "fio $g $tag failed: $AGENT_RC"
        fi
    done
    if [ $fio_ok = yes ]; then
        lab_pass guest-fio-$k "$g: $figs (QEMU TCG: compare ratios with ./run.sh bench, not absolute figures)"
    else
        lab_fail guest-fio-$k "a fio job did not complete in $g; see $GLOG"
        lab_show "$GLOG" 10 $g
    fi
done
for g in $GUESTS; do xl destroy $g >/dev/null 2>&1; done
lab_info "Ferrite after the guests left:"
grep -E "vbd " "$GUEST_LOG" | tail -n 6 | sed 's/^/LAB-INFO   | /'
# Ferrite's periodic I/O counters and any warning, for the figures above.
lab_info "Ferrite's console: I/O counters and warnings during the run:"
grep -aE "ferrite: io:|WARN|ERROR|refused|timed out" "$GUEST_LOG" | tail -n 40 | sed 's/^/LAB-INFO ferrite | /'
lab_info "xl list:"
xl list | sed 's/^/LAB-INFO   | /'
lab_shutdown 60
if [ $SHUTDOWN_RC -eq 0 ] && [ $SHUTDOWN_GONE = yes ]; then
    lab_pass shutdown "xl shutdown -w took $SHUTDOWN_AFTER s"
else
    lab_fail shutdown "xl shutdown -w status $SHUTDOWN_RC after $SHUTDOWN_AFTER s; domain gone: $SHUTDOWN_GONE"
fi
lab_info "timings: Ferrite xl create ${t_created} s, ready +${READY_AFTER} s; two guests $(lab_since "$t_g") s in all; shutdown ${SHUTDOWN_AFTER} s"
