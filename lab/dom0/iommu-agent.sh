#!/bin/sh
# The Linux PV guest of MODE xen's iommu-domu-policy test (lab.role=iommu;
# lab/modes/xen-policy.sh writes its xl config): it issues hypercall 43 for
# itself when dom0 asks, so the PV-IOMMU policy is seen from a real domU.
#
# dom0 writes "<seq> <labtool arguments>" to this domain's data/iommu/cmd
# (relative xenstore paths are under /local/domain/<own domid>); the agent
# runs labtool once per new <seq> (only iommu-op, own-pages and release-pages)
# and writes "<seq> <labtool's LAB- line>" to data/iommu/out.  It says it is
# up with data/iommu/ready = 1.  Console lines: IOMMU-AGENT <text>.
# /init has mounted /proc, /sys, /dev, /tmp, /run, set PATH and sent output to
# the console.
up() { cut -d' ' -f1 /proc/uptime; }
KVER=$(uname -r)
# privcmd: labtool's hypercalls (/dev/xen/privcmd). In a domU, Debian's 6.1
# kernel (stable backport of "xen/privcmd: restrict usage in unprivileged
# domU"; modinfo: parm unrestricted) limits privcmd to the
# domain named by xenstore's "target" node unless loaded with unrestricted=1
# (refused under lockdown); restricted, every hypercall here gets EPERM from
# Linux before Xen sees it. Xen's own checks are what this guest tests.
for m in $(cat /etc/lab/modules-iommu); do
    opts=""
    case $m in */xen-privcmd.ko) opts="unrestricted=1" ;; esac
    insmod "/lib/modules/$KVER/$m" $opts || echo "IOMMU-AGENT insmod $m $opts failed"
done
[ -e /dev/xen/privcmd ] || echo "IOMMU-AGENT no /dev/xen/privcmd"
last=""
xenstore-write data/iommu/ready 1
echo "IOMMU-AGENT ready t=$(up)"
while :; do
    cmd=$(xenstore-read data/iommu/cmd 2>/dev/null)
    seq=${cmd%% *}
    if [ -n "$cmd" ] && [ "$seq" != "$last" ]; then
        last=$seq
        set -- $cmd
        shift
        case $1 in
            iommu-op|own-pages|release-pages)
                res=$(labtool "$@" 2>&1 | grep -m1 '^LAB-') ;;
            *) res="LAB-AGENT refused=$1" ;;
        esac
        echo "IOMMU-AGENT $seq labtool $* -> $res"
        xenstore-write data/iommu/out "$seq ${res:-LAB-AGENT no-output}"
        continue
    fi
    # Returns after the first change (the first event is the registration's own).
    xenstore-watch -n 2 data/iommu/cmd >/dev/null 2>&1 || sleep 0.2
done
