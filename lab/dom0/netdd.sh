#!/bin/sh
# The Linux stand-in for Ferrite's network half (lab.role=netdd): MODE net with
# EXTRA_DIR/net-linux creates it as domain "ferrite" (configs/linux-dd.cfg,
# vcpus=2, the NIC passed through), to check the mode itself and as the
# reference a Linux network driver domain gives.  pcifront + virtio_net drive
# the NIC (eth0), xen-netback serves the vifs, a Linux bridge br0 joins them.
#
# On a real Xen host `xl devd` runs the vif-bridge hotplug script in a driver
# domain; here this script does that script's part: each vif<domid>.<devid>
# netback creates is added to br0 and brought up, then backend/vif/<domid>/<devid>/
# hotplug-status = connected (netback waits for it before Connected); a vif's
# backend directory is removed once it is Closed and offline (as xl devd does).
# It publishes what MODE net reads from Ferrite, in the format proposed there
# (lab/modes/net.sh): data/ferrite/state = ready, data/ferrite/nic (one line),
# data/ferrite/net (gauges, then one line per vif), refreshed on every change
# under backend/vif and every 3 s (lab.netdd_poll=SECS on the command line
# changes that period: `./run.sh bench net` makes it long, so the script's
# passes do not take CPU from the set-ups being measured).
# A Linux bridge does not filter spoofed source MACs: net-spoof fails with it.
# Console lines: NETDD-INFO <text>, NETDD-READY <uptime>.
echo 4 >/proc/sys/kernel/printk
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "NETDD-$*"; }
KVER=$(uname -r)
POLL=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^lab\.netdd_poll=\([0-9]*\)$/\1/p' | tail -n 1)
POLL=${POLL:-3}
# Module options from the command line (module.option=value; no modprobe here),
# e.g. xen_netback.max_queues=2 (netback offers as many queues as it has vCPUs).
for m in $(cat /etc/lab/modules-netdd); do
    base=$(basename "$m" .ko | tr - _)
    opts=$(tr ' ' '\n' </proc/cmdline | sed -n "s/^$base\.//p" | tr '\n' ' ')
    insmod "/lib/modules/$KVER/$m" $opts || say "INFO insmod $m $opts failed"
done
mkdir -p /proc/xen && mount -t xenfs xenfs /proc/xen 2>/dev/null
# xl shutdown: the kernel runs /sbin/poweroff; busybox's would signal PID 1 (this script).
rm -f /sbin/poweroff
printf '#!/bin/sh\necho "ferrite: poweroff" >/dev/hvc0\nexec /bin/busybox poweroff -f\n' >/sbin/poweroff
chmod +x /sbin/poweroff

i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 300 ]; do i=$((i + 1)); sleep 0.2; done
if [ ! -e /sys/class/net/eth0 ]; then
    say "INFO no eth0 (virtio_net over pcifront) within 60 s"
    dmesg | grep -iE 'pcifront|virtio|pci' | tail -n 15 | sed 's/^/NETDD-INFO dmesg: /'
fi
pci=$(basename "$(dirname "$(readlink -f /sys/class/net/eth0/device)")")
brctl addbr br0
# No STP (the default), no forwarding delay (busybox's brctl lacks setfd/stp).
echo 0 >/sys/class/net/br0/bridge/stp_state
echo 0 >/sys/class/net/br0/bridge/forward_delay
ip link set eth0 up
brctl addif br0 eth0
ip link set br0 up
# The NIC's features as Linux's virtio_net took them.
say "INFO eth0 pci=$pci mac=$(cat /sys/class/net/eth0/address) queues=$(ls -d /sys/class/net/eth0/queues/tx-* | wc -l) $(ethtool -k eth0 2>/dev/null | grep -E '^(scatter-gather|tcp-segmentation-offload|tx-checksumming|rx-checksumming):' | tr -d ' ' | tr '\n' ' ')"
xenstore-write data/ferrite/nic "eth0 pci=$pci kind=virtio-net mac=$(cat /sys/class/net/eth0/address) link=$(cat /sys/class/net/eth0/operstate) driver=linux-virtio_net"

# publish: data/ferrite/net (gauges first, then one line per vif).
publish() {
    vifs=0 queues=0 lines=""
    for n in $(ls /sys/class/net | grep '^vif'); do
        vifs=$((vifs + 1))
        q=$(ls -d /sys/class/net/$n/queues/tx-* 2>/dev/null | wc -l)
        queues=$((queues + q))
        s=/sys/class/net/$n/statistics
        id=${n#vif}
        lines="$lines
vif ${id%%.*}/${id#*.} mac=$(xenstore-read backend/vif/${id%%.*}/${id#*.}/mac 2>/dev/null) queues=$q tx-packets=$(cat $s/tx_packets) rx-packets=$(cat $s/rx_packets) tx-dropped=$(cat $s/tx_dropped) rx-dropped=$(cat $s/rx_dropped)"
    done
    # Learnt MACs behind the vif ports (port 1 is eth0, the uplink).
    vmacs=$(brctl showmacs br0 2>/dev/null | awk 'NR > 1 && $1 != 1 && $3 == "no"' | wc -l)
    s=/sys/class/net/eth0/statistics
    xenstore-write data/ferrite/net "vifs=$vifs queues=$queues vif-macs=$vmacs nic-tx-packets=$(cat $s/tx_packets) nic-rx-packets=$(cat $s/rx_packets)$lines"
}

# The vif hotplug part (vif-bridge under xl devd), bounded work per pass.
vif_watcher() {
    while :; do
        for fe in $(xenstore-list backend/vif 2>/dev/null); do
            for dev in $(xenstore-list "backend/vif/$fe" 2>/dev/null); do
                b=backend/vif/$fe/$dev
                n=vif$fe.$dev
                # libxl creates hotplug-status empty for a driver domain's backend.
                if [ "$(xenstore-read "$b/hotplug-status" 2>/dev/null)" != connected ] && [ -e /sys/class/net/$n ] \
                   && [ "$(xenstore-read "$b/online" 2>/dev/null)" = 1 ]; then
                    brctl addif br0 $n && ip link set $n up && xenstore-write "$b/hotplug-status" connected \
                        && say "INFO $n (mac $(xenstore-read $b/mac 2>/dev/null)) on br0, hotplug-status connected"
                fi
                st=$(xenstore-read "$b/state" 2>/dev/null)
                on=$(xenstore-read "$b/online" 2>/dev/null)
                # libxl (xl network-detach) gives up after ~10 s without this.
                if [ "$st" = 6 ] && [ "$on" = 0 ]; then
                    xenstore-rm "$b" 2>/dev/null && say "INFO vif $fe/$dev closed: backend directory removed"
                    xenstore-list "backend/vif/$fe" >/dev/null 2>&1 && [ -z "$(xenstore-list "backend/vif/$fe" 2>/dev/null)" ] && xenstore-rm "backend/vif/$fe" 2>/dev/null
                fi
            done
        done
        publish
        # Wakes on any change under backend/vif (the first event is the registration's),
        # else every $POLL s (3) for the counters (each pass forks a few dozen
        # processes: under TCG that is not free).
        timeout "$POLL" xenstore-watch -n 2 backend/vif >/dev/null 2>&1
    done
}
publish
vif_watcher &
xenstore-write data/ferrite/state ready
say "READY $(up)"
echo "ferrite: ready"
while :; do sleep 3600; done
