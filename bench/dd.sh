#!/usr/bin/env bash
# `./run.sh bench`: Ferrite against a Linux driver domain on the same kind of
# disk, in one lab boot (Xen 4.17 + Debian dom0 under QEMU TCG).
#
#   bench/dd.sh [--quick] [--rounds R] [--secs S] [--no-memprobe]
#               [--setups "ferrite linux-dd raw"] [--jobs "JOB..."] [--ferrite-extra "OPTS"]
#
# Three set-ups (lab/modes/bench.sh): "ferrite" (a Linux guest on a disk Ferrite
# serves), "linux-dd" (a Linux guest on a disk xen-blkback serves in a Linux PV
# driver domain) and "raw" (fio inside that driver domain on its NVMe). Each
# driver domain owns one of two identical emulated NVMe controllers. Six fio
# jobs, interleaved set-up by set-up, R rounds (default 3, 10 s + 2 s warm-up
# per job), then a memory probe. --quick: 1 round of 3 s + 1 s, no memory probe,
# and the run fails unless every job has a result for every set-up (CI smoke).
# Results: results/bench/<time>/ (raw fio JSON, summary.json, table.txt, plot.svg).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrite-lab}
ROUNDS=3 SECS=10 RAMP=2 MEMPROBE=1 QUICK=0 SETUPS="ferrite linux-dd raw" JOBS="" FERRITE_EXTRA=""
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ROUNDS=1 SECS=3 RAMP=1 MEMPROBE=0; shift ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --secs) SECS=$2; shift 2 ;;
        --no-memprobe) MEMPROBE=0; shift ;;
        --setups) SETUPS=$2; shift 2 ;;          # e.g. "ferrite" (profiling); the default is all three
        --jobs) JOBS=$2; shift 2 ;;              # e.g. "seqwrite-128k-qd8 seqread-128k-qd8"
        --ferrite-extra) FERRITE_EXTRA=$2; shift 2 ;;  # Ferrite's command line, e.g. "nvme.sgl=0"
        *) echo "usage: ./run.sh bench [--quick] [--rounds R] [--secs S] [--no-memprobe]   (or: ./run.sh bench nvme ...)" >&2; exit 2 ;;
    esac
done
OUT=$ROOT/results/bench/$(date +%Y%m%d-%H%M%S)$([ $QUICK = 1 ] && echo -quick)
mkdir -p "$OUT"
say() { echo "[bench] $*"; }

say "building the Ferrite image (log: $OUT/build.log)"
if ! cargo build -p ferrite --release --target x86_64-unknown-none --manifest-path "$ROOT/Cargo.toml" >"$OUT/build.log" 2>&1; then
    tail -n 20 "$OUT/build.log"; say "build FAILED"; exit 1
fi
IMAGE=${CARGO_TARGET_DIR:-$ROOT/target}/x86_64-unknown-none/release/ferrite
"$ROOT/lab/lab.sh" build || { say "lab build FAILED"; exit 1; }

extra=$OUT/extra
mkdir -p "$extra"
cat >"$extra/bench.conf" <<EOF
ROUNDS=$ROUNDS
RUNTIME=$SECS
RAMP=$RAMP
MEMPROBE=$MEMPROBE
FERRITE_MEMS="24 16 12 8"
DD_MEMS="192 128 96 64"
SETUPS="$SETUPS"
FERRITE_EXTRA="$FERRITE_EXTRA"
EOF
[ -n "$JOBS" ] && echo "JOBS=\"$JOBS\"" >>"$extra/bench.conf"
# Boots and set-up about 4 min; a job about its time + 10 s; the probe about 6 min.
njobs=6; [ -n "$JOBS" ] && njobs=$(echo $JOBS | wc -w)
jobs=$((ROUNDS * njobs * $(echo $SETUPS | wc -w)))
timeout=$((600 + jobs * (SECS + RAMP + 12) + MEMPROBE * 600))
say "$ROUNDS round(s) x $njobs job(s) x set-ups ($SETUPS), ${SECS} s + ${RAMP} s warm-up per job; memory probe: $([ $MEMPROBE = 1 ] && echo yes || echo no); time limit ${timeout} s"
say "absolute figures under QEMU TCG are not comparable across machines: compare the ratios"
# Never read an older run's results: lab.sh names its run directory in last-run.
rm -f "$CACHE/last-run"
LAB_TIMEOUT=$timeout "$ROOT/lab/lab.sh" run bench "$IMAGE" "$extra" 2>&1 | tee "$OUT/lab.log"
rc=${PIPESTATUS[0]}
run=$(cat "$CACHE/last-run" 2>/dev/null)
cp "$run/serial.log" "$OUT/serial.log" 2>/dev/null
if [ -z "$run" ] || [ ! -e "$run/nvme2.img" ]; then
    say "no results disk from the lab run (lab.sh status $rc); see $OUT/lab.log"; exit 1
fi
# dom0 wrote a tar onto the results NVMe; the rest of the image is zeros.
if ! tar -xf "$run/nvme2.img" -C "$OUT" 2>"$OUT/untar.log"; then
    say "the results disk holds no readable tar (dom0 did not get to write it); see $OUT/lab.log"; exit 1
fi
rm -rf "$extra"
linux_bytes=$(( $(stat -c %s "$CACHE/vmlinuz") + $(stat -c %s "$CACHE/guest-initrd.cpio.gz") ))
check=()
[ $QUICK = 1 ] && check=(--check)
python3 "$ROOT/bench/report.py" "$OUT" --linux-image-bytes "$linux_bytes" "${check[@]}"
prc=$?
say "results: $OUT"
[ $rc -eq 0 ] && [ $prc -eq 0 ]
