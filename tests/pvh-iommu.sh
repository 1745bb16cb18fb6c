#!/usr/bin/env bash
# Boots the Ferrite self-test image (ferrite-selftest) via PVH under QEMU q35 with QEMU's VT-d
# (intel-iommu, caching mode, device-IOTLB capability) and an emulated
# NVMe, kernel command line `iommu`: the image finds the unit through the
# ACPI DMAR table, programs it through iommu-core (root/context tables,
# queued invalidation, translation on), runs its NVMe disk test through
# IOVAs in a non-default PV-IOMMU context, provokes and reads a VT-d fault,
# reattaches the device to a replayed context, and takes an MSI-X interrupt.
# QEMU exits 33 on success; every step must log PASS.
#   tests/pvh-iommu.sh SELFTEST_IMAGE LOGFILE   (the product image refuses PVH)
set -uo pipefail
image=$1 log=$2
disk=${log%.log}.img
rm -f "$disk"
truncate -s 64M "$disk"
start=$(date +%s.%N)
timeout "${PVH_TIMEOUT:-120}" qemu-system-x86_64 -machine q35,accel=tcg,kernel-irqchip=split -cpu max -m 512M \
    -display none -vga none -nic none -no-reboot -monitor none -serial "file:$log" \
    -device intel-iommu,intremap=off,caching-mode=on,device-iotlb=on \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -drive "file=$disk,if=none,id=nv0,format=raw" -device nvme,drive=nv0,serial=ferrite-iommu \
    -kernel "$image" -append iommu </dev/null >"$log.qemu" 2>&1
rc=$?
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
steps="dmar enable msi-reserved nvme-io fault reattach-replay msi fault-status queue"
missing=""
for s in $steps; do
    grep -q "pvh test iommu-$s: PASS" "$log" || missing="$missing $s"
done
if [ "$rc" -ne 33 ] || [ -n "$missing" ]; then
    echo "FAIL pvh-iommu: QEMU exit $rc after ${secs} s; not passed:${missing:- none}; serial log $log:"
    grep -E "iommu|FAIL|PANIC" "$log" | tail -n 30 | sed 's/^/    /'
    exit 1
fi
echo "PASS pvh-iommu (${secs} s): $(echo $steps | wc -w) steps"
rm -f "$disk"
