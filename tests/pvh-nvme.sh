#!/usr/bin/env bash
# Boots the Ferrite self-test image (ferrite-selftest) via PVH under QEMU q35 with an emulated NVMe
# controller backed by a fresh image file. The image's self-test writes a
# pattern over 4 queues, flushes, reads back, tests write-zeroes and
# discard; QEMU exits 33 on success. Then the image file is checked from
# the host: the data really reached the disk.
#   tests/pvh-nvme.sh SELFTEST_IMAGE LOGFILE   (the product image refuses PVH)
set -uo pipefail
image=$1 log=$2
disk=${log%.log}.img
bytes=$((512 * 16 * 1024))
rm -f "$disk"
truncate -s 64M "$disk"
start=$(date +%s.%N)
timeout "${PVH_TIMEOUT:-120}" qemu-system-x86_64 -machine q35,accel=tcg -cpu max -m 256M \
    -display none -vga none -nic none -no-reboot -monitor none -serial "file:$log" \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -drive "file=$disk,if=none,id=nv0,format=raw" -device nvme,drive=nv0,serial=ferrite-test \
    -kernel "$image" </dev/null >"$log.qemu" 2>&1
rc=$?
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
if [ "$rc" -ne 33 ] || ! grep -q "pvh test nvme: PASS" "$log"; then
    echo "FAIL pvh-nvme: QEMU exit $rc after ${secs} s; serial log $log:"
    tail -n 25 "$log" | sed 's/^/    /'
    exit 1
fi
if ! python3 "$(dirname "$0")/check_pattern.py" "$disk" "$bytes"; then
    echo "FAIL pvh-nvme: the self-test passed but the image file does not hold the pattern"
    exit 1
fi
echo "PASS pvh-nvme (${secs} s): $(grep -o 'nvme: QEMU.*' "$log" | head -1 | cut -c1-100)"
rm -f "$disk"
