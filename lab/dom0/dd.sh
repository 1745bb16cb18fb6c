#!/bin/sh
# The benchmark's Linux driver domain (lab.role=dd; configs/linux-dd.cfg): the
# Debian kernel with pcifront, nvme and xen-blkback, serving its passed-through
# NVMe (/dev/nvme0n1) to guests whose disk says backend=linux-dd.
#
# On a real Xen host `xl devd` runs the block hotplug script in a driver domain;
# here this script does that script's part: for every vbd the toolstack puts
# under backend/vbd/ it writes physical-device (major:minor in hex, which
# xen-blkback waits for), physical-device-path and hotplug-status=connected,
# and removes a vbd's backend directory once it is Closed and offline (as
# xl devd does). It also runs the benchmark agent on /dev/nvme0n1 ("raw").
# Console lines: DD-INFO <text>, DD-READY <uptime>, and the agent's BENCH-*.
# /init has mounted /proc, /sys, /dev, /tmp, /run, set PATH and
# LD_LIBRARY_PATH and sent output to the console.
# Warnings and errors (pcifront, nvme, blkback) reach the console log too.
echo 4 >/proc/sys/kernel/printk
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "DD-$*"; }
KVER=$(uname -r)
for m in $(cat /etc/lab/modules-dd); do
    insmod "/lib/modules/$KVER/$m" || say "INFO insmod $m failed"
done
mkdir -p /proc/xen && mount -t xenfs xenfs /proc/xen 2>/dev/null
i=0
while [ ! -e /sys/block/nvme0n1 ]; do
    i=$((i + 1))
    if [ $i -gt 300 ]; then
        say "INFO /sys/block/nvme0n1 did not appear within 60 s"
        dmesg | grep -iE 'pcifront|nvme|pci' | tail -n 15 | sed 's/^/DD-INFO dmesg: /'
        break
    fi
    sleep 0.2
done
say "INFO nvme0n1: $(cat /sys/block/nvme0n1/size 2>/dev/null) sectors, dev $(cat /sys/block/nvme0n1/dev 2>/dev/null), $(grep MemTotal /proc/meminfo | tr -s ' ')"

# hex_dev /dev/NAME: "major:minor" in hex, as the block hotplug script writes it.
hex_dev() {
    n=$(basename "$1")
    [ -r "/sys/class/block/$n/dev" ] || return 1
    IFS=: read -r ma mi <"/sys/class/block/$n/dev"
    printf '%x:%x' "$ma" "$mi"
}

vbd_watcher() {
    # Every vbd: hotplug once; tear down when Closed and offline. Bounded work per pass.
    while :; do
        for fe in $(xenstore-list backend/vbd 2>/dev/null); do
            for dev in $(xenstore-list "backend/vbd/$fe" 2>/dev/null); do
                b=backend/vbd/$fe/$dev
                if ! xenstore-exists "$b/physical-device" 2>/dev/null; then
                    params=$(xenstore-read "$b/params" 2>/dev/null)
                    if hd=$(hex_dev "$params"); then
                        xenstore-write "$b/physical-device" "$hd" "$b/physical-device-path" "$params" "$b/hotplug-status" connected
                        say "INFO vbd $fe/$dev: $params ($hd) hotplugged"
                    else
                        xenstore-write "$b/hotplug-error" "no block device $params" "$b/hotplug-status" error
                        say "INFO vbd $fe/$dev: params '$params' is not a block device here"
                    fi
                fi
                st=$(xenstore-read "$b/state" 2>/dev/null)
                on=$(xenstore-read "$b/online" 2>/dev/null)
                if [ "$st" = 6 ] && [ "$on" = 0 ]; then
                    sleep 2
                    xenstore-rm "$b" 2>/dev/null && say "INFO vbd $fe/$dev closed: backend directory removed"
                fi
            done
        done
        # Block until the backend tree changes (first event is the registration's).
        xenstore-watch -n 2 backend/vbd >/dev/null 2>&1 || sleep 1
    done
}
# backend/ exists once the toolstack made the first vbd; the watch fires then too.
vbd_watcher &
xenstore-write data/dd/state ready 2>/dev/null || say "INFO cannot write data/dd/state"
say "READY $(up)"
exec /lab/bench-agent.sh /dev/nvme0n1
