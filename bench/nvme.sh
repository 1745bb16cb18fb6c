#!/usr/bin/env bash
# NVMe benchmark (not a test): 4 KiB random reads at queue depth 1 and 32
# against QEMU's emulated NVMe, Ferrite's polled driver (PVH boot) beside
# Linux's nvme driver + fio in a small VM, same QEMU flags, same disk size.
# The two are interleaved round by round; medians, ranges and the ratio
# ferrite/linux are printed. Absolute IOPS under TCG mean little and are not
# comparable across machines: compare the ratios.
#
#   bench/nvme.sh [--secs N] [--rounds R]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=5 ROUNDS=3
while [ $# -gt 0 ]; do
    case $1 in
        --secs) SECS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        *) echo "usage: bench/nvme.sh [--secs N] [--rounds R]" >&2; exit 2 ;;
    esac
done
CACHE=${LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrite-lab}
OUT=$ROOT/results/bench-nvme/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
say() { echo "[bench-nvme] $*"; }

# The NVMe benchmark is in the self-test image (PVH, kernel command line bench=SECS).
say "building the Ferrite self-test image"
cargo build -q -p ferrite-selftest --release --target x86_64-unknown-none --manifest-path "$ROOT/Cargo.toml"
IMAGE=${CARGO_TARGET_DIR:-$ROOT/target}/x86_64-unknown-none/release/ferrite-selftest
"$ROOT/lab/lab.sh" build >/dev/null
FIO=$CACHE/fio/fio
[ -x "$FIO" ] || { echo "no static fio in $FIO (lab/lab.sh build makes it)" >&2; exit 1; }
KVER=$(cat "$CACHE/kernel-version")
MODDIR=$CACHE/root/lib/modules/$KVER

say "assembling the Linux VM (Debian $KVER, nvme driver, static fio)"
vm=$OUT/vm-root
rm -rf "$vm"; mkdir -p "$vm"/{bin,dev,proc,sys,mods,tmp}
cp "$CACHE/root/bin/busybox" "$vm/bin/busybox"
cp "$FIO" "$vm/bin/fio"
for m in $(python3 "$ROOT/lab/lib/kmods.py" "$MODDIR" nvme); do
    cp "$MODDIR/$m" "$vm/mods/$(printf '%02d' "$(ls "$vm/mods" | wc -l)")-$(basename "$m")"
done
cat >"$vm/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in /mods/*.ko*; do insmod "$m" 2>/dev/null; done
secs=$(sed -n 's/.*bench_secs=\([0-9]*\).*/\1/p' /proc/cmdline)
i=0; while [ ! -b /dev/nvme0n1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
for qd in 1 32; do
    fio --name=randread --filename=/dev/nvme0n1 --direct=1 --ioengine=libaio --rw=randread --bs=4k \
        --iodepth=$qd --time_based --runtime="$secs" --ramp_time=1 --randrepeat=0 --randseed=$((0x5EED + qd)) \
        --norandommap --output-format=terse >/tmp/t 2>/tmp/e || cat /tmp/e
    awk -F';' -v qd=$qd '{ printf "BENCH linux randread-4k qd=%d ios=%d secs=%s iops=%d mean_lat_us=%.1f\n", qd, $6/4, "'"$secs"'", $8, $40 }' /tmp/t
done
echo BENCH-DONE
poweroff -f
INIT
chmod +x "$vm/init"
python3 "$ROOT/lab/lib/mkcpio.py" "$vm" "$OUT/vm-initrd.cpio.gz" --gzip

qemu_common=(-machine q35,accel=tcg -cpu max -m 512M -display none -vga none -nic none -no-reboot -monitor none)
run_ferrite() {
    local log=$1 disk=$OUT/disk-ferrite.img
    rm -f "$disk"; truncate -s 256M "$disk"
    timeout $((SECS * 4 + 60)) qemu-system-x86_64 "${qemu_common[@]}" -serial "file:$log" \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
        -drive "file=$disk,if=none,id=nv0,format=raw" -device nvme,drive=nv0,serial=bench \
        -kernel "$IMAGE" -append "bench=$SECS" </dev/null >/dev/null 2>&1 || true
}
run_linux() {
    local log=$1 disk=$OUT/disk-linux.img
    rm -f "$disk"; truncate -s 256M "$disk"
    timeout $((SECS * 4 + 120)) qemu-system-x86_64 "${qemu_common[@]}" -serial "file:$log" \
        -drive "file=$disk,if=none,id=nv0,format=raw" -device nvme,drive=nv0,serial=bench \
        -kernel "$CACHE/vmlinuz" -initrd "$OUT/vm-initrd.cpio.gz" \
        -append "console=ttyS0 quiet bench_secs=$SECS" </dev/null >/dev/null 2>&1 || true
}

for r in $(seq 1 "$ROUNDS"); do
    say "round $r/$ROUNDS: ferrite"
    run_ferrite "$OUT/ferrite-$r.log"
    say "round $r/$ROUNDS: linux"
    run_linux "$OUT/linux-$r.log"
done
cat "$OUT"/*.log | grep -ha '^BENCH [a-z]' >"$OUT/bench-lines.txt" || true
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
res = {}
for line in open(f"{out}/bench-lines.txt"):
    m = re.match(r"BENCH (\w+) randread-4k qd=(\d+) ios=(\d+) secs=\S+ iops=(\d+) mean_lat_us=([\d.]+)", line)
    if m:
        who, qd = m.group(1), int(m.group(2))
        res.setdefault((who, qd), []).append((int(m.group(4)), float(m.group(5))))
def stat(v):
    return statistics.median(v), min(v), max(v)
summary = {}
print("\n4 KiB random read, QEMU emulated NVMe (TCG; absolute figures are not comparable across machines, ratios are)")
print(f"{'qd':>3} {'setup':8} {'runs':>4} {'IOPS median':>12} {'range':>17} {'mean lat us':>12}")
ok = True
for qd in (1, 32):
    for who in ("ferrite", "linux"):
        v = res.get((who, qd), [])
        if not v:
            print(f"{qd:>3} {who:8} {0:>4} {'not measured':>12}")
            ok = False
            continue
        im, ilo, ihi = stat([x[0] for x in v])
        lm = statistics.median([x[1] for x in v])
        summary[f"{who}_qd{qd}"] = {"iops": [x[0] for x in v], "mean_lat_us": [x[1] for x in v]}
        print(f"{qd:>3} {who:8} {len(v):>4} {im:>12.0f} {f'{ilo:.0f}..{ihi:.0f}':>17} {lm:>12.1f}")
    f, l = res.get(("ferrite", qd), []), res.get(("linux", qd), [])
    n = min(len(f), len(l))
    if n:
        ratios = [f[i][0] / l[i][0] for i in range(n) if l[i][0]]
        rm, rlo, rhi = stat(ratios)
        summary[f"ratio_qd{qd}"] = ratios
        print(f"{qd:>3} ratio ferrite/linux IOPS: median {rm:.2f} (range {rlo:.2f}..{rhi:.2f}, {n} paired rounds)")
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(f"\nraw logs and summary.json in {out}")
sys.exit(0 if ok else 1)
PY
