#!/usr/bin/env bash
# Boots the Ferrite self-test image (ferrite-selftest) via PVH under QEMU q35
# with a virtio-net device on QEMU's user-mode network (slirp: gateway
# 10.0.2.2, guest 10.0.2.15). The image brings its virtio-net driver up,
# asks the gateway's MAC by ARP, pings it three times and checks the offload
# contract and that every transmit buffer came back; QEMU exits 33 on
# success. Like the other PVH tests it takes no lock itself: on a shared
# machine, run it (or ./run.sh) under `flock /tmp/ferrite-qemu.lock`.
#   tests/pvh-nic.sh SELFTEST_IMAGE LOGFILE
set -uo pipefail
image=$1 log=$2
start=$(date +%s.%N)
timeout "${PVH_TIMEOUT:-120}" qemu-system-x86_64 -machine q35,accel=tcg -cpu max -m 256M \
    -display none -vga none -no-reboot -monitor none -serial "file:$log" \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56 \
    -kernel "$image" </dev/null >"$log.qemu" 2>&1
rc=$?
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
if [ "$rc" -ne 33 ] || ! grep -q "pvh test nic: PASS" "$log" || ! grep -q "MAC 52:54:00:12:34:56" "$log"; then
    echo "FAIL pvh-nic: QEMU exit $rc after ${secs} s; serial log $log:"
    tail -n 25 "$log" | sed 's/^/    /'
    exit 1
fi
echo "PASS pvh-nic (${secs} s): $(grep -o 'ARP reply.*' "$log" | head -1); $(grep -c 'echo reply seq' "$log") echo replies"
