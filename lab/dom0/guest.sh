#!/bin/sh
# The lab's Linux PV test guest (configs/guest-linux.cfg), PID 1 via /init with
# lab.role=guest.  Its disk xvda is served by Ferrite.  What it does is chosen by
# lab.phase= on its command line:
#   fs     if xvda holds the ext4 this script made (lab/SUMS on it): mount it and
#          check every file's sha256 ("fs-verify", after a reboot); otherwise
#          mkfs.ext4, mount, write files, record sha256, unmount, remount, check
#          ("fs-new")
#   fresh  always the mkfs path ("fs-fresh"; after a destroyed guest)
#   load   fio (or a dd loop without fio) on raw xvda until the domain dies
#   idle   nothing
#   persist-write, persist-read  (blk-persist; lab.persist=SEED:SKIP:COUNT on the
#          command line, SKIP and COUNT in 64 KiB blocks): write persist_data SEED
#          (lab/dom0/common.sh) at that offset of raw xvda, fsync, drop caches and
#          read it back ("persist-write"); or only read it ("persist-read"); both
#          report the sha256 of what they read from xvda
#   regions  (disks mode) with lab.blocksize=N first the mkfs path with
#          `mke2fs -b N` ("fs-bsN"); then for each SEED:SKIP:COUNT of
#          lab.regions= (comma-separated; SKIP and COUNT in 64 KiB blocks) what
#          persist-write does, reported as "GUEST-RESULT region-SEED ..."
#   ro     (disks mode; xvda attached access=ro) reports /sys/block/xvda/ro, then
#          tries to write one 4 KiB block at offset 0 (after `blockdev --setrw`
#          too) and reports whether the write failed ("GUEST-RESULT ro ...")
#   bench  the benchmark agent on xvda (lab/dom0/bench-agent.sh; never returns)
#   fsbench  fs, then the benchmark agent (./run.sh's short fio run)
#   net    (MODE net; configs/guest-net.cfg, no disk) eth0 on a vif, static
#          address lab.ip=, then the network agent (lab/dom0/net-agent.sh;
#          never returns)
#   netbench  (./run.sh bench net; configs/guest-net.cfg) the same eth0 set-up,
#          then the benchmark's network agent (lab/dom0/netbench-agent.sh;
#          never returns)
# After its phase every guest reports "GUEST-DONE <phase>" and then watches for
# xvdb (xl block-attach/-detach from dom0), reporting GUEST-EVENT lines.
# Output lines for dom0 (read from /var/log/xen/console/guest-<name>.log):
#   GUEST-INFO <text>           GUEST-FEATURES <key=value...>
#   GUEST-RESULT <name> PASS|FAIL <detail>
#   GUEST-EVENT <text>          GUEST-DONE <phase>      GUEST-LOAD <text>
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
. /lab/common.sh
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
# Warnings and errors (blkfront, ext4, I/O errors) reach the console log too.
echo 4 >/proc/sys/kernel/printk

up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "GUEST-$*"; }
# Retried: a command can die at random in these PV domains (see lab/README.md).
for i in 1 2 3 4 5; do
    phase=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^lab\.phase=//p' | tail -n 1)
    [ -n "$phase" ] && break
done
[ -n "$phase" ] || phase=idle
say "INFO boot: phase=$phase kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) vCPU(s), uptime $(up) s"

# `xl reboot` / `xl shutdown`: the kernel runs /sbin/reboot or /sbin/poweroff;
# busybox's would signal PID 1 (this script, which ignores it).  Unmount, then go.
for c in reboot poweroff; do
    rm -f /sbin/$c
    printf '#!/bin/sh\nexec >/dev/console 2>&1\necho "GUEST-INFO %s requested at $(cut -d" " -f1 /proc/uptime) s"\numount /mnt 2>/dev/null\nsync\nexec /bin/busybox %s -f\n' $c $c >/sbin/$c
    chmod +x /sbin/$c
done

# Modules, with options from the command line (module.option=value; there is
# no modprobe here to apply them).
KVER=$(uname -r)
for m in $(cat /etc/lab/modules-guest); do
    base=$(basename "$m" .ko | tr - _)
    # MODE net's guests have no disk: only netfront (insmod of ext4 & co. costs
    # ~30 s of a busy TCG lab).
    [ "$phase" = net ] && [ "$base" != xen_netfront ] && continue
    opts=$(tr ' ' '\n' </proc/cmdline | sed -n "s/^$base\.//p" | tr '\n' ' ')
    insmod "/lib/modules/$KVER/$m" $opts || say "INFO insmod $m $opts failed"
done

# wait_for PATH SECONDS
wait_for() {
    i=0
    while [ ! -e "$1" ]; do
        i=$((i + 1)); [ $i -gt $(($2 * 5)) ] && return 1
        sleep 0.2
    done
}

# MODE net's guests have no disk: eth0 and the network agent.
[ "$phase" = net ] && exec /lab/net-agent.sh
[ "$phase" = netbench ] && exec /lab/netbench-agent.sh

t=$(up)
if ! wait_for /sys/block/xvda 60; then
    say "RESULT xvda FAIL /sys/block/xvda did not appear within 60 s"
    dmesg | grep -iE 'blkfront|xen|vbd' | tail -n 20 | sed 's/^/GUEST-INFO dmesg: /'
    say "DONE $phase"
[ "$phase" = fsbench ] && exec /lab/bench-agent.sh /dev/xvda
    while :; do sleep 3600; done
fi
say "INFO xvda appeared $(awk -v a="$t" -v b="$(up)" 'BEGIN{printf "%.1f", b-a}') s after blkfront was loaded"

features() {
    q=/sys/block/xvda/queue
    mq=$(ls /sys/block/xvda/mq 2>/dev/null | wc -l)
    say "FEATURES mq=$mq size_sectors=$(cat /sys/block/xvda/size) max_segments=$(cat $q/max_segments) max_hw_sectors_kb=$(cat $q/max_hw_sectors_kb) max_sectors_kb=$(cat $q/max_sectors_kb) logical_block_size=$(cat $q/logical_block_size) write_cache=$(cat $q/write_cache | tr ' ' _) fua=$(cat $q/fua 2>/dev/null) discard_max_bytes=$(cat $q/discard_max_bytes) discard_granularity=$(cat $q/discard_granularity) nr_requests=$(cat $q/nr_requests)"
    dmesg >/tmp/dmesg.txt 2>&1
    grep -iE 'blkfront|xvda' /tmp/dmesg.txt | tail -n 8 | sed 's/^/GUEST-INFO dmesg: /'
    grep -qi 'blkfront' /tmp/dmesg.txt || say "INFO no blkfront line in dmesg ($(wc -l </tmp/dmesg.txt) lines; last: $(tail -n 1 /tmp/dmesg.txt))"
}
features

secs_since() { awk -v a="$1" -v b="$(up)" 'BEGIN{printf "%.1f", b-a}'; }

# new_fs NAME: mkfs.ext4, files, sha256, unmount, remount, check.
new_fs() {
    name=$1 t0=$(up)
    umount /mnt 2>/dev/null
    mkdir -p /mnt
    # Full path: busybox sh runs its own (ext2-only) mke2fs applet before PATH.
    if ! /sbin/mke2fs -t ext4 -F -q ${MKFS_OPTS:-} /dev/xvda >/tmp/mkfs.log 2>&1; then
        say "RESULT $name FAIL mkfs.ext4 /dev/xvda failed: $(tail -n 3 /tmp/mkfs.log | tr '\n' ' ')"; return 1
    fi
    if ! mount -t ext4 /dev/xvda /mnt 2>/tmp/mount.log; then
        say "RESULT $name FAIL mount after mkfs failed: $(tr '\n' ' ' </tmp/mount.log)"; dmesg | tail -n 5 | sed 's/^/GUEST-INFO dmesg: /'; return 1
    fi
    mkdir -p /mnt/lab
    # Sizes from 4 KiB to 8 MiB: small writes and large (indirect) ones.
    i=0 sizes="4 60 256 1024 3000 8192"
    # A small disk (Ferrite's 4 MiB RAM disk without NVMe): small files only.
    [ "$(cat /sys/block/xvda/size)" -lt 65536 ] && sizes="4 60 256 700"
    total=0
    for kb in $sizes; do
        total=$((total + kb))
        i=$((i + 1))
        dd if=/dev/urandom of=/mnt/lab/f$i bs=1024 count=$kb 2>/dev/null
    done
    (cd /mnt/lab && sha256sum f* >SUMS) && sync
    nfiles=$(wc -l </mnt/lab/SUMS)
    if ! umount /mnt; then say "RESULT $name FAIL umount failed"; return 1; fi
    if ! mount -t ext4 /dev/xvda /mnt 2>/tmp/mount.log; then
        say "RESULT $name FAIL remount failed: $(tr '\n' ' ' </tmp/mount.log)"; dmesg | tail -n 5 | sed 's/^/GUEST-INFO dmesg: /'; return 1
    fi
    if (cd /mnt/lab && sha256sum -c SUMS >/tmp/check.log 2>&1); then
        umount /mnt
        say "RESULT $name PASS mkfs.ext4, $nfiles files ($total KiB) written, unmounted, remounted, sha256 match ($(secs_since "$t0") s)"
    else
        say "RESULT $name FAIL after remount: $(grep -v ': OK' /tmp/check.log | head -n 3 | tr '\n' ' ')"
        dmesg | tail -n 5 | sed 's/^/GUEST-INFO dmesg: /'
        umount /mnt; return 1
    fi
}

verify_fs() {
    t0=$(up)
    if (cd /mnt/lab && sha256sum -c SUMS >/tmp/check.log 2>&1); then
        say "RESULT fs-verify PASS $(wc -l </mnt/lab/SUMS) files match their sha256 after the reboot ($(secs_since "$t0") s)"
    else
        say "RESULT fs-verify FAIL $(grep -v ': OK' /tmp/check.log | head -n 3 | tr '\n' ' ')"
    fi
    umount /mnt
}

# persist write|read [SPEC NAME]: see the header; SPEC (default: lab.persist=)
# is SEED:SKIP:COUNT (64 KiB blocks); NAME defaults to persist-write|read.
persist() {
    name=${3:-persist-$1}
    spec=${2:-$(tr ' ' '\n' </proc/cmdline | sed -n 's/^lab\.persist=//p' | tail -n 1)}
    seed=$(echo "$spec" | cut -d: -f1) skip=$(echo "$spec" | cut -d: -f2) count=$(echo "$spec" | cut -d: -f3)
    case "$seed:$skip:$count" in
        *[!0-9a-f:]*|:*|*::*|*:) say "RESULT $name FAIL bad lab.persist='$spec' (SEED:SKIP:COUNT)"; return 1 ;;
    esac
    if [ "$1" = write ]; then
        persist_data "$seed" $((count * 65536)) >/tmp/persist.bin
        if ! dd if=/tmp/persist.bin of=/dev/xvda bs=64k seek="$skip" count="$count" conv=notrunc,fsync 2>/tmp/dd.log; then
            say "RESULT $name FAIL dd to xvda: $(tr '\n' ' ' </tmp/dd.log)"; return 1
        fi
        rm -f /tmp/persist.bin
        sync
        echo 3 >/proc/sys/vm/drop_caches
    fi
    sum=$(dd if=/dev/xvda bs=64k skip="$skip" count="$count" 2>/dev/null | sha256sum | cut -d' ' -f1)
    say "RESULT $name PASS bytes=$((count * 65536)) at=$((skip * 65536)) sha256=$sum"
}

cmdarg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^lab\.$1=//p" | tail -n 1; }

# regions: lab.blocksize=N (optional: ext4 with N-byte blocks first), then
# every SEED:SKIP:COUNT of lab.regions= written and read back.
regions() {
    bsz=$(cmdarg blocksize)
    if [ -n "$bsz" ]; then
        MKFS_OPTS="-b $bsz"
        new_fs "fs-bs$bsz"
        MKFS_OPTS=""
    fi
    for r in $(cmdarg regions | tr ',' ' '); do
        persist write "$r" "region-$(echo "$r" | cut -d: -f1)"
    done
}

# ro: xvda is attached read-only: ro flag, and a write must fail.
ro_probe() {
    rof=$(cat /sys/block/xvda/ro)
    w1=written; dd if=/dev/urandom of=/dev/xvda bs=4k count=1 oflag=direct conv=notrunc 2>/tmp/ro1.log || w1=failed
    blockdev --setrw /dev/xvda 2>/dev/null
    w2=written; dd if=/dev/urandom of=/dev/xvda bs=4k count=1 oflag=direct conv=notrunc 2>/tmp/ro2.log || w2=failed
    head=$(dd if=/dev/xvda bs=64k count=1 2>/dev/null | sha256sum | cut -c1-16)
    verdict=PASS; [ "$rof" = 1 ] && [ $w1 = failed ] && [ $w2 = failed ] || verdict=FAIL
    say "RESULT ro $verdict ro=$rof write=$w1 write-after-setrw=$w2 size_sectors=$(cat /sys/block/xvda/size) first-64KiB-sha256=$head ($(tr '\n' ' ' </tmp/ro1.log | cut -c1-80))"
}

load() {
    # Until the domain is destroyed: mixed random reads/writes, 4 KiB-256 KiB, queue depth 16 per job.
    if [ -x /usr/local/bin/fio ]; then
        fio --name=load --filename=/dev/xvda --direct=1 --ioengine=libaio --iodepth=16 --numjobs=2 \
            --rw=randrw --bsrange=4k-256k --time_based --runtime=600 --group_reporting >/tmp/fio.log 2>&1 &
        tool="fio randrw libaio iodepth=16 numjobs=2 bs=4k-256k"
    else
        (while :; do dd if=/dev/urandom of=/dev/xvda bs=256k count=64 oflag=direct 2>/dev/null; dd if=/dev/xvda of=/dev/null bs=256k count=64 iflag=direct 2>/dev/null; done) &
        tool="dd loop"
    fi
    sleep 1
    say "LOAD running $tool"
    # Progress: the block layer's counters (reads, writes completed; in flight).
    while :; do
        set -- $(cat /sys/block/xvda/stat)
        say "LOAD stat reads=$1 writes=$5 in_flight=$9 t=$(up)"
        sleep 1
    done
}

case $phase in
    fs|fsbench)
        mkdir -p /mnt
        if mount -t ext4 /dev/xvda /mnt 2>/dev/null && [ -f /mnt/lab/SUMS ]; then
            verify_fs
        else
            umount /mnt 2>/dev/null
            new_fs fs-new
        fi ;;
    fresh) new_fs fs-fresh ;;
    load) load ;;
    persist-write) persist write ;;
    persist-read) persist read ;;
    regions) regions ;;
    ro) ro_probe ;;
    bench) exec /lab/bench-agent.sh /dev/xvda ;;
    idle) ;;
    *) say "INFO unknown phase $phase" ;;
esac
say "DONE $phase"
[ "$phase" = fsbench ] && exec /lab/bench-agent.sh /dev/xvda

# Watch for xvdb (xl block-attach / block-detach from dom0).
had=no
while :; do
    if [ -e /sys/block/xvdb ]; then
        if [ $had = no ]; then
            had=yes
            sleep 0.5
            a=$(dd if=/dev/xvda bs=64k count=16 2>/dev/null | sha256sum | cut -c1-16)
            b=$(dd if=/dev/xvdb bs=64k count=16 2>/dev/null | sha256sum | cut -c1-16)
            z=$(dd if=/dev/zero bs=64k count=16 2>/dev/null | sha256sum | cut -c1-16)
            same=no; [ "$a" = "$b" ] && same=yes
            zero=no; [ "$b" = "$z" ] && zero=yes
            # Then a write of one block, and whether the disk still reads zero.
            wr=ok; dd if=/dev/urandom of=/dev/xvdb bs=4k count=1 oflag=direct 2>/dev/null || wr=fail
            c=$(dd if=/dev/xvdb bs=4k count=1 iflag=direct 2>/dev/null | sha256sum | cut -c1-16)
            zz=$(dd if=/dev/zero bs=4k count=1 2>/dev/null | sha256sum | cut -c1-16)
            still=no; [ "$c" = "$zz" ] && still=yes
            say "EVENT xvdb present t=$(up) size_sectors=$(cat /sys/block/xvdb/size) ro=$(cat /sys/block/xvdb/ro) first-MiB-equals-xvda=$same first-MiB-zero=$zero write=$wr after-write-zero=$still ($a $b)"
        fi
    elif [ $had = yes ]; then
        had=no
        say "EVENT xvdb absent t=$(up)"
    fi
    sleep 0.2
done
