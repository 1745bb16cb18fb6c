#!/usr/bin/env bash
# `./run.sh bench net`: Ferrite's netback against a Linux network driver domain,
# in one lab boot (Xen 4.17 + Debian dom0 under QEMU TCG).
#
#   bench/net.sh [--quick] [--rounds R] [--secs S] [--setups "ferrite linux"] [--jobs "JOB..."]
#
# Two set-ups (lab/modes/benchnet.sh), each a driver domain with one virtio-net
# NIC of its own passed through (QEMU user networking) and two Linux PV guests
# on it: "ferrite" (the product image, NIC only, its L2 switch) and "linux" (a
# Linux PV driver domain: pcifront + virtio_net + xen-netback + a bridge,
# lab/dom0/netdd.sh).  Jobs (fio's net engine and busybox ping in the guests),
# interleaved set-up by set-up, R rounds (default 3; S = 10 s per stream after
# 2 s of warm-up, 20 pings): guest->guest TCP, guest->outside TCP (through the
# NIC to QEMU's user network), guest->guest 64-byte UDP datagrams received per
# second, guest->guest ping round trip.  --quick: 1 round of 3 s + 1 s, 10 pings,
# and the run fails unless every job has a result for both set-ups (CI smoke).
# Results: results/bench/net-<time>/ (raw fio JSON and ping replies, runs.tsv,
# cpu.tsv, consoles, summary.json, table.txt, plot.svg).
# The lab is shared: run it under `flock /tmp/ferrite-qemu.lock` when others use it.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrite-lab}
ROUNDS=3 SECS=10 RAMP=2 PINGS=20 QUICK=0 SETUPS="ferrite linux" JOBS="g2g-tcp g2o-tcp g2g-udp64 g2g-ping"
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ROUNDS=1 SECS=3 RAMP=1 PINGS=10; shift ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --secs) SECS=$2; shift 2 ;;
        --setups) SETUPS=$2; shift 2 ;;      # e.g. "ferrite" (profiling); the default is both
        --jobs) JOBS=$2; shift 2 ;;          # e.g. "g2g-tcp g2g-ping"
        *) echo "usage: ./run.sh bench net [--quick] [--rounds R] [--secs S] [--setups \"ferrite linux\"] [--jobs \"g2g-tcp g2o-tcp g2g-udp64 g2g-ping\"]" >&2; exit 2 ;;
    esac
done
OUT=$ROOT/results/bench/net-$(date +%Y%m%d-%H%M%S)$([ $QUICK = 1 ] && echo -quick)
mkdir -p "$OUT"
say() { echo "[bench net] $*"; }
T0=$(date +%s)

say "building the Ferrite image (log: $OUT/build.log)"
if ! cargo build -p ferrite --release --target x86_64-unknown-none --manifest-path "$ROOT/Cargo.toml" >"$OUT/build.log" 2>&1; then
    tail -n 20 "$OUT/build.log"; say "build FAILED"; exit 1
fi
IMAGE=${CARGO_TARGET_DIR:-$ROOT/target}/x86_64-unknown-none/release/ferrite
"$ROOT/lab/lab.sh" build || { say "lab build FAILED"; exit 1; }

# Boot, four guests and the set-up about 6 min under load; a job about its
# time + 25 s of agent round trips.  The mode stops starting jobs 90 s before
# the limit so its results are still written.
njobs=$(echo $JOBS | wc -w)
runs=$((ROUNDS * njobs * $(echo $SETUPS | wc -w)))
timeout=$((360 + runs * (SECS + RAMP + 25)))
extra=$OUT/extra
mkdir -p "$extra"
cat >"$extra/benchnet.conf" <<EOF
ROUNDS=$ROUNDS
SECS=$SECS
RAMP=$RAMP
PINGS=$PINGS
SETUPS="$SETUPS"
JOBS="$JOBS"
DEADLINE=$((timeout - 90))
EOF
say "$ROUNDS round(s) x $njobs job(s) x set-ups ($SETUPS), streams ${SECS} s after ${RAMP} s of warm-up, $PINGS pings; time limit ${timeout} s"
say "absolute figures under QEMU TCG are not comparable across machines: compare the ratios"
# Never read an older run's results: lab.sh names its run directory in last-run.
rm -f "$CACHE/last-run"
LAB_TIMEOUT=$timeout "$ROOT/lab/lab.sh" run benchnet "$IMAGE" "$extra" 2>&1 | tee "$OUT/lab.log"
rc=${PIPESTATUS[0]}
run=$(cat "$CACHE/last-run" 2>/dev/null)
cp "$run/serial.log" "$OUT/serial.log" 2>/dev/null
if [ -z "$run" ] || [ ! -e "$run/nvme.img" ]; then
    say "no results disk from the lab run (lab.sh status $rc); see $OUT/lab.log"; exit 1
fi
# dom0 wrote a tar onto the results NVMe; the rest of the image is zeros.
if ! tar -xf "$run/nvme.img" -C "$OUT" 2>"$OUT/untar.log"; then
    say "the results disk holds no readable tar (dom0 did not get to write it); see $OUT/lab.log"; exit 1
fi
rm -rf "$extra"
check=()
[ $QUICK = 1 ] && check=(--check)
python3 "$ROOT/bench/netreport.py" "$OUT" "${check[@]}"
prc=$?
say "results: $OUT ($(( $(date +%s) - T0 )) s in all)"
[ $rc -eq 0 ] && [ $prc -eq 0 ]
