#!/usr/bin/env bash
# Boots the Ferrite self-test image (ferrite-selftest) via PVH under plain QEMU (q35) and checks the
# isa-debug-exit code: 33 = the image's self-tests passed.
#   tests/pvh-boot.sh SELFTEST_IMAGE LOGFILE   (the product image refuses PVH)
set -uo pipefail
image=$1 log=$2
timeout_s=${PVH_TIMEOUT:-60}
start=$(date +%s.%N)
timeout "$timeout_s" qemu-system-x86_64 -machine q35,accel=tcg -cpu max -m 256M \
    -display none -vga none -nic none -no-reboot -monitor none -serial "file:$log" \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -kernel "$image" </dev/null >"$log.qemu" 2>&1
rc=$?
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
if [ "$rc" -eq 33 ] && grep -q "pvh self-test passed" "$log"; then
    echo "PASS pvh-boot (${secs} s, exit 33)"
    exit 0
fi
case $rc in
    124) why="timed out after ${timeout_s} s" ;;
    35) why="self-test reported failure (exit 35)" ;;
    *) why="QEMU exit code $rc" ;;
esac
echo "FAIL pvh-boot: $why; serial log $log:"
tail -n 20 "$log" | sed 's/^/    /'
exit 1
