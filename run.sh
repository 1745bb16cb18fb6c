#!/usr/bin/env bash
# Ferrite — one entry point.
#
#   ./run.sh          the main job: build Ferrite and start it as a Xen driver
#                     domain (`xl create configs/ferrite.cfg`). On a Xen host
#                     (dom0 with xl) that happens directly; anywhere else the
#                     lab is built (Xen 4.17 + Debian dom0 under QEMU TCG,
#                     cached in .lab-cache/) and Ferrite is started inside it.
#   ./run.sh test     every test: host cargo tests, image checks, the PVH boot
#                     test under plain QEMU, the lab end-to-end tests and
#                     `bench --quick` as a smoke test.
#                     Last line: "N passed, M failed"; non-zero exit on failure.
#   ./run.sh lint     only the fmt and clippy gates of ./run.sh test.
#   ./run.sh bench    Ferrite vs a Linux driver domain (xen-blkback) vs raw
#                     NVMe: fio from Linux guests, interleaved, in one lab boot;
#                     table, summary JSON and plot in results/bench/<time>/.
#                     --quick: a short smoke run; see bench/dd.sh for options.
#   ./run.sh bench nvme   NVMe benchmark: Ferrite's polled driver vs Linux's
#                     nvme driver + fio on the same emulated device (ratios).
#
# Logs go to results/logs/; each step says where.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$PWD
TARGET=x86_64-unknown-none
IMAGE=${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET/release/ferrite
LOGS=$ROOT/results/logs
MAX_IMAGE_BYTES=$((2 * 1024 * 1024))
mkdir -p "$LOGS"

T0=$(date +%s.%N)
since() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%6.1f", b - a }'; }
say() { echo "[ferrite $(since)s] $*"; }

ensure_toolchain() {
    if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
        say "installing the Rust target $TARGET"
        rustup target add "$TARGET" >"$LOGS/rustup.log" 2>&1 || { say "rustup target add failed; see $LOGS/rustup.log"; return 1; }
    fi
}

build_image() {
    ensure_toolchain || return 1
    say "building the Ferrite image (release, $TARGET); log: $LOGS/build.log"
    if ! cargo build -p ferrite --release --target "$TARGET" >"$LOGS/build.log" 2>&1; then
        say "build FAILED:"; tail -n 30 "$LOGS/build.log"; return 1
    fi
    say "image: $IMAGE ($(stat -c %s "$IMAGE") bytes)"
}

on_xen_host() {
    [ -r /proc/xen/capabilities ] && grep -q control_d /proc/xen/capabilities && command -v xl >/dev/null
}

# ---------------------------------------------------------------- main job
main_on_xen_host() {
    local t domid state="" deadline
    say "Xen host detected: xl create configs/ferrite.cfg"
    t=$(date +%s.%N)
    xl create "$ROOT/configs/ferrite.cfg" "kernel=\"$IMAGE\"" || { say "xl create failed"; return 1; }
    domid=$(xl domid ferrite)
    deadline=$(( $(date +%s) + 30 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        state=$(xenstore-read "/local/domain/$domid/data/ferrite/state" 2>/dev/null || true)
        [ "$state" = ready ] && break
        sleep 0.1
    done
    if [ "$state" != ready ]; then
        say "Ferrite (domain $domid) did not report ready within 30 s; see 'xl console ferrite' or /var/log/xen/console/guest-ferrite.log"
        return 1
    fi
    say "Ferrite is running as driver domain $domid, ready $(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }') s after xl create"
    xl list ferrite
    say "console: xl console ferrite  (log: /var/log/xen/console/guest-ferrite.log); stop: xl shutdown ferrite"
}

main_job() {
    build_image || return 1
    if on_xen_host; then
        main_on_xen_host
        return
    fi
    say "no Xen here: using the lab (Xen 4.17 + Debian dom0 under QEMU TCG)"
    "$ROOT/lab/lab.sh" build || return 1
    "$ROOT/lab/lab.sh" run main "$IMAGE"
}

# ---------------------------------------------------------------- tests
PASSED=0
FAILED=0
FAILURES=()
record() { # record NAME OK|FAIL [detail]
    if [ "$2" = OK ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); FAILURES+=("$1${3:+: $3}"); fi
}

test_host() {
    say "host tests: cargo test (all library crates); log: $LOGS/cargo-test.log"
    cargo test >"$LOGS/cargo-test.log" 2>&1
    local rc=$? p f
    p=$(grep -E '^test result:' "$LOGS/cargo-test.log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s+=$1} END {print s+0}')
    f=$(grep -E '^test result:' "$LOGS/cargo-test.log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
    PASSED=$((PASSED + p))
    FAILED=$((FAILED + f))
    grep -E '^test .* FAILED$' "$LOGS/cargo-test.log" | sed 's/^test //; s/ \.\.\. FAILED$//' | while read -r t; do echo "    failed: $t"; done
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        record cargo-test FAIL "cargo test exited $rc without a failing test (build error?); see $LOGS/cargo-test.log"
        tail -n 20 "$LOGS/cargo-test.log"
    fi
    say "host tests: $p passed, $f failed"
}

# Lint gates: rustfmt (one root rustfmt.toml) and clippy -D warnings, on the
# host for the library crates (all targets, all features) and on the
# bare-metal target for every library and each image in its own invocation
# (so one image's features never leak into another's check).
workspace_crates() { # workspace_crates lib|image: package names from cargo metadata
    cargo metadata --no-deps --format-version 1 2>/dev/null | python3 -c '
import json, sys
want = sys.argv[1]
for p in json.load(sys.stdin)["packages"]:
    kinds = {k for t in p["targets"] for k in t["kind"]}
    image = "/images/" in p["manifest_path"]
    if (want == "image") == image and (image or "lib" in kinds):
        print(p["name"])' "$1"
}

test_lint() {
    local log=$LOGS/fmt.log args c
    say "lint: cargo fmt --check (workspace and fuzz/); log: $log"
    if cargo fmt --all --check >"$log" 2>&1 && cargo fmt --manifest-path "$ROOT/fuzz/Cargo.toml" --check >>"$log" 2>&1; then
        record fmt OK
    else
        record fmt FAIL "$(grep -c '^Diff in' "$log") unformatted hunks; run cargo fmt --all; see $log"
    fi
    ensure_toolchain || { record clippy-bare-metal FAIL "no $TARGET target"; return; }
    log=$LOGS/clippy-host.log
    say "lint: cargo clippy -D warnings, host (library crates, all targets and features); log: $log"
    if cargo clippy --all-targets --all-features -- -D warnings >"$log" 2>&1; then record clippy-host OK
    else record clippy-host FAIL "see $log"; grep -E '^(error|warning)' -A4 "$log" | head -n 20; fi
    log=$LOGS/clippy-bare-metal.log
    args=()
    for c in $(workspace_crates lib); do args+=(-p "$c"); done
    say "lint: cargo clippy -D warnings, $TARGET (libraries, then each image); log: $log"
    if cargo clippy --release --target "$TARGET" "${args[@]}" -- -D warnings >"$log" 2>&1 \
        && (for c in $(workspace_crates image); do cargo clippy --release --target "$TARGET" -p "$c" -- -D warnings || exit 1; done) >>"$log" 2>&1; then
        record clippy-bare-metal OK
    else
        record clippy-bare-metal FAIL "see $log"; grep -E '^(error|warning)' -A4 "$log" | head -n 20
    fi
}

test_image() {
    if ! build_image; then
        record image-build FAIL; return 1
    fi
    record image-build OK
    local size
    size=$(stat -c %s "$IMAGE")
    if [ "$size" -le "$MAX_IMAGE_BYTES" ]; then record image-size OK; say "image size $size bytes (limit $MAX_IMAGE_BYTES)"
    else record image-size FAIL "$size bytes > $MAX_IMAGE_BYTES"; fi
    if python3 "$ROOT/tests/elf_notes.py" "$IMAGE"; then record elf-notes OK; else record elf-notes FAIL; fi
}

test_pvh() {
    command -v qemu-system-x86_64 >/dev/null || "$ROOT/lab/lab.sh" host-tools >/dev/null 2>&1 || true
    if ! command -v qemu-system-x86_64 >/dev/null; then record pvh-boot FAIL "qemu-system-x86_64 missing"; return; fi
    say "PVH boot test under plain QEMU; serial log: $LOGS/pvh-boot.log"
    if "$ROOT/tests/pvh-boot.sh" "$IMAGE" "$LOGS/pvh-boot.log"; then record pvh-boot OK; else record pvh-boot FAIL; fi
    say "PVH NVMe test (q35 + emulated NVMe, then the image file checked from the host); log: $LOGS/pvh-nvme.log"
    if "$ROOT/tests/pvh-nvme.sh" "$IMAGE" "$LOGS/pvh-nvme.log"; then record pvh-nvme OK; else record pvh-nvme FAIL; fi
    say "PVH IOMMU test (q35 + intel-iommu + NVMe: DMAR, contexts, faults, replay, MSI-X); log: $LOGS/pvh-iommu.log"
    if "$ROOT/tests/pvh-iommu.sh" "$IMAGE" "$LOGS/pvh-iommu.log"; then record pvh-iommu OK; else record pvh-iommu FAIL; fi
}

# cargo-fuzz targets, a short run each (libFuzzer needs nightly flags:
# RUSTC_BOOTSTRAP lets the stable toolchain accept them).
FUZZ_TARGETS="parse_request decode blkback_ops"
FUZZ_SECS=${FERRITE_FUZZ_SECS:-20}
test_fuzz() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        say "installing cargo-fuzz (once); log: $LOGS/cargo-fuzz-install.log"
        cargo install cargo-fuzz --locked >"$LOGS/cargo-fuzz-install.log" 2>&1 || { record fuzz-setup FAIL "cargo install cargo-fuzz failed; see $LOGS/cargo-fuzz-install.log"; return; }
    fi
    local target log
    for target in $FUZZ_TARGETS; do
        log=$LOGS/fuzz-$target.log
        say "fuzzing $target for ${FUZZ_SECS} s; log: $log"
        if (cd "$ROOT" && RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$ROOT/target/fuzz" cargo fuzz run "$target" -- -max_total_time="$FUZZ_SECS") >"$log" 2>&1; then
            record "fuzz:$target" OK
            say "  $(grep -E '^Done [0-9]+ runs' "$log" | tail -n1)"
        else
            record "fuzz:$target" FAIL "see $log"
            tail -n 15 "$log"
        fi
    done
}

test_lab() {
    say "lab tests (one Xen boot under QEMU TCG)"
    if ! "$ROOT/lab/lab.sh" build; then
        record lab-build FAIL "see .lab-cache/logs/"; return
    fi
    local out=$LOGS/lab-test.log
    "$ROOT/lab/lab.sh" run test "$IMAGE" 2>&1 | tee "$out"
    local rc=${PIPESTATUS[0]} n=0 name verdict
    while read -r name verdict; do
        n=$((n + 1))
        if [ "$verdict" = PASS ]; then record "lab:$name" OK; else record "lab:$name" FAIL; fi
    done < <(grep -oE 'LAB-TEST [A-Za-z0-9_.-]+ (PASS|FAIL)' "$out" | awk '{print $2, $3}' | sort -u -k1,1)
    if [ "$n" -eq 0 ] || { [ "$rc" -ne 0 ] && ! grep -q 'LAB-TEST .* FAIL' "$out"; }; then
        record lab-run FAIL "lab.sh exited $rc; see $out"
    fi
}

# The driver-domain benchmark's short variant: a smoke test that every set-up
# (ferrite, linux-dd, raw) produced a result for every job.
test_bench_quick() {
    local out=$LOGS/bench-quick.log
    say "bench --quick (Ferrite vs Linux driver domain vs raw, one short round); log: $out"
    if "$ROOT/bench/dd.sh" --quick >"$out" 2>&1; then
        record bench-quick OK
        sed -n '/^job /,/^Targets/p' "$out" | grep -E 'ferrite/(linux-dd|raw)|^job' | head -n 14
    else
        record bench-quick FAIL "see $out"
        grep -E 'LAB-TEST|CHECK|FAILED|Not measured' "$out" | tail -n 12
    fi
}

run_tests() {
    test_lint
    test_host
    test_image && test_pvh
    test_fuzz
    if [ "${FERRITE_SKIP_LAB:-0}" = 1 ]; then say "FERRITE_SKIP_LAB=1: lab tests skipped"; else
        test_lab
        if [ "${FERRITE_SKIP_BENCH:-0}" = 1 ]; then say "FERRITE_SKIP_BENCH=1: bench --quick skipped"; else test_bench_quick; fi
    fi
    for f in "${FAILURES[@]}"; do echo "FAILED: $f"; done
    say "done; logs in $LOGS"
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
}

case "${1:-main}" in
    main) main_job ;;
    test) run_tests ;;
    lint) test_lint; for f in "${FAILURES[@]}"; do echo "FAILED: $f"; done; echo "$PASSED passed, $FAILED failed"; [ "$FAILED" -eq 0 ] ;;
    bench)
        shift
        case "${1:-}" in
            nvme) shift; exec "$ROOT/bench/nvme.sh" "$@" ;;
            *) exec "$ROOT/bench/dd.sh" "$@" ;;
        esac ;;
    -h|--help|help) sed -n '2,20p' "$0" ;;
    *) echo "usage: ./run.sh [main|test|lint|bench]" >&2; exit 2 ;;
esac
