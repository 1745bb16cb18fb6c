#!/usr/bin/env bash
# Ferrite — one entry point.
#
#   ./run.sh          the main job: build Ferrite and start it as a Xen driver
#                     domain (`xl create configs/ferrite.cfg`). On a Xen host
#                     (dom0 with xl) that happens directly; anywhere else the
#                     lab is built (Xen 4.17 + Debian dom0 under QEMU TCG,
#                     cached in ~/.cache/ferrite-lab/) and Ferrite is started inside it.
#   ./run.sh test     every test: fmt and clippy gates (host and bare metal,
#                     each image on its own), host cargo tests, image checks, the PVH boot tests (self-test
#                     image) under plain QEMU, the lab end-to-end tests (MODE test,
#                     then MODE disks + tests/check_disks.py) and
#                     `bench --quick` and `bench net --quick` as smoke tests.
#                     Last line: "N passed, M failed"; non-zero exit on failure.
#   ./run.sh lint     only the fmt and clippy gates of ./run.sh test.
#   ./run.sh test-net only the lab's MODE net (issue 12: netback, switch, NIC),
#                     one Xen boot (also part of ./run.sh test).
#                     FERRITE_NET_LINUX=1: a Linux network driver domain
#                     plays Ferrite (checks the lab itself).
#   ./run.sh bench    Ferrite vs a Linux driver domain (xen-blkback) vs raw
#                     NVMe: fio from Linux guests, interleaved, in one lab boot;
#                     table, summary JSON and plot in results/bench/<time>/.
#                     --quick: a short smoke run; see bench/dd.sh for options.
#   ./run.sh bench net    Ferrite's netback vs a Linux network driver domain
#                     (xen-netback + bridge): guest->guest and guest->outside TCP,
#                     64-byte UDP rate, ping, interleaved in one lab boot; table,
#                     JSON and plot in results/bench/net-<time>/; --quick: smoke
#                     run (part of ./run.sh test); see bench/net.sh.
#   ./run.sh bench nvme   NVMe benchmark: Ferrite's polled driver vs Linux's
#                     nvme driver + fio on the same emulated device (ratios).
#   ./run.sh bench cpu    deterministic cost: instructions per request in
#                     blkback + the NVMe driver on the host (callgrind), by
#                     stage; results/bench-cpu/<commit>.json. See bench/cpu.sh.
#   ./run.sh lab-xen  only MODE xen (also part of ./run.sh test): build the project's
#                     Xen (lab/xen-build.sh: Debian's 4.17.5 + the Rust PV-IOMMU
#                     core, cached) and boot it in the lab, MODE xen: hypercall 43
#                     answered by the Rust core, Ferrite and a guest under it, a
#                     contained panic. LAB_XEN=debian runs the same mode on stock Xen.
#
# Logs go to results/logs/; each step says where.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$PWD
TARGET=x86_64-unknown-none
# Two images: the product (serves guests, nothing else) and the self-test
# image (PVH self-tests, disk test, benchmark, VT-d test, lab grant checks).
IMAGE=${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET/release/ferrite
SELFTEST_IMAGE=${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET/release/ferrite-selftest
LOGS=$ROOT/results/logs
# Issue 12 allows 2 MiB with networking; we hold the product to 1 MiB.
MAX_IMAGE_BYTES=$((1024 * 1024))
MAX_SELFTEST_IMAGE_BYTES=$((2 * 1024 * 1024))
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

# build_image [PACKAGE]: ferrite (default) or ferrite-selftest. One cargo
# invocation per image: built together, cargo would unify the self-test's
# features (runtime/selftest) into the product.
build_image() {
    local pkg=${1:-ferrite} out
    out=${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET/release/$pkg
    ensure_toolchain || return 1
    say "building the $pkg image (release, $TARGET); log: $LOGS/build-$pkg.log"
    if ! cargo build -p "$pkg" --release --target "$TARGET" >"$LOGS/build-$pkg.log" 2>&1; then
        say "build FAILED:"; tail -n 30 "$LOGS/build-$pkg.log"; return 1
    fi
    say "image: $out ($(stat -c %s "$out") bytes)"
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
LAB_FAILED_LOGS=()
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
    if cargo clippy --all-targets --all-features -- -D warnings >"$log" 2>&1 \
        && cargo clippy -p cpubench --all-targets -- -D warnings >>"$log" 2>&1; then record clippy-host OK
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
    # The Xen glue is its own workspace (-Z build-std): fmt, clippy with the
    # hypervisor build's flags, and its host tests.
    log=$LOGS/xen-glue-lint.log
    say "lint: hypervisor/xen-glue (lab/xen-build.sh --lint: fmt, clippy, host tests); log: $log"
    if "$ROOT/lab/xen-build.sh" --lint >"$log" 2>&1; then record xen-glue-lint OK
    else record xen-glue-lint FAIL "see $log"; grep -E '^(error|warning)|FAILED|panicked' -A4 "$log" | head -n 20; fi
}

# check_image PACKAGE PATH LIMIT: build, size limit, Xen ELF notes.
check_image() {
    local pkg=$1 path=$2 limit=$3 size
    if ! build_image "$pkg"; then
        record "image-build:$pkg" FAIL; return 1
    fi
    record "image-build:$pkg" OK
    size=$(stat -c %s "$path")
    if [ "$size" -le "$limit" ]; then record "image-size:$pkg" OK; say "$pkg image size $size bytes (limit $limit)"
    else record "image-size:$pkg" FAIL "$size bytes > $limit"; fi
    if python3 "$ROOT/tests/elf_notes.py" "$path"; then record "elf-notes:$pkg" OK; else record "elf-notes:$pkg" FAIL; fi
}

test_image() {
    local rc=0
    check_image ferrite "$IMAGE" "$MAX_IMAGE_BYTES" || rc=1
    check_image ferrite-selftest "$SELFTEST_IMAGE" "$MAX_SELFTEST_IMAGE_BYTES" || rc=1
    return $rc
}

# The PVH boot tests run the self-test image.
test_pvh() {
    local IMAGE=$SELFTEST_IMAGE
    command -v qemu-system-x86_64 >/dev/null || "$ROOT/lab/lab.sh" host-tools >/dev/null 2>&1 || true
    if ! command -v qemu-system-x86_64 >/dev/null; then record pvh-boot FAIL "qemu-system-x86_64 missing"; return; fi
    say "PVH boot test under plain QEMU; serial log: $LOGS/pvh-boot.log"
    if "$ROOT/tests/pvh-boot.sh" "$IMAGE" "$LOGS/pvh-boot.log"; then record pvh-boot OK; else record pvh-boot FAIL; fi
    say "PVH NVMe test (q35 + emulated NVMe, then the image file checked from the host); log: $LOGS/pvh-nvme.log"
    if "$ROOT/tests/pvh-nvme.sh" "$IMAGE" "$LOGS/pvh-nvme.log"; then record pvh-nvme OK; else record pvh-nvme FAIL; fi
    say "PVH NIC test (q35 + virtio-net on QEMU's user network: ARP and ping to 10.0.2.2, offload contract); log: $LOGS/pvh-nic.log"
    if "$ROOT/tests/pvh-nic.sh" "$IMAGE" "$LOGS/pvh-nic.log"; then record pvh-nic OK; else record pvh-nic FAIL; fi
    say "PVH IOMMU test (q35 + intel-iommu + NVMe: DMAR, contexts, faults, replay, MSI-X); log: $LOGS/pvh-iommu.log"
    if "$ROOT/tests/pvh-iommu.sh" "$IMAGE" "$LOGS/pvh-iommu.log"; then record pvh-iommu OK; else record pvh-iommu FAIL; fi
}

# cargo-fuzz targets, a short run each (libFuzzer needs nightly flags:
# RUSTC_BOOTSTRAP lets the stable toolchain accept them).
FUZZ_TARGETS="parse_request decode blkback_ops netif_tx netback_ops"
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
        record lab-build FAIL "see ${LAB_CACHE:-$HOME/.cache/ferrite-lab}/logs/"; return
    fi
    local out=$LOGS/lab-test.log
    LAB_SELFTEST_IMAGE=$SELFTEST_IMAGE "$ROOT/lab/lab.sh" run test "$IMAGE" 2>&1 | tee "$out"
    collect_lab "$out" "${PIPESTATUS[0]}" lab
    # blk-persist, checked from the host: the NVMe image file of the run holds
    # the guest's data (nothing writes there after it in MODE test).
    local run
    run=$(cat "${LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrite-lab}/last-run" 2>/dev/null)
    if grep -q 'LAB-TEST blk-persist SKIP' "$out"; then :
    elif [ -n "$run" ] && [ -f "$run/nvme.img" ] && python3 "$ROOT/tests/check_persist.py" "$run/serial.log" "$run/nvme.img"; then
        record lab:blk-persist-image OK
    else
        record lab:blk-persist-image FAIL "the run's nvme.img does not hold the blk-persist data (run ${run:-?})"
    fi
    test_lab_disks
    test_lab_net
    test_lab_xen
}

# collect_lab OUT RC PREFIX: one verdict per LAB-TEST name in OUT, recorded as
# PREFIX:name (FAIL if any of its lines failed: a test that reported PASS and
# then FAIL has failed), in the order first reported.
collect_lab() {
    local out=$1 rc=$2 prefix=$3 n=0 name verdict why
    while read -r name verdict; do
        n=$((n + 1))
        if [ "$verdict" = PASS ]; then record "$prefix:$name" OK
        else
            # The first failure's own words, so the summary at the end of the
            # output (often all a CI report shows) says why.
            why=$(grep -aoE "LAB-TEST $name FAIL .*" "$out" | head -n 1 | cut -c "$(( ${#name} + 16 ))-" | cut -c 1-300)
            record "$prefix:$name" FAIL "$why"
        fi
    done < <(grep -oE 'LAB-TEST [A-Za-z0-9_.-]+ (PASS|FAIL)' "$out" | awk '
        !($2 in v) { order[++n] = $2; v[$2] = $3 }
        $3 == "FAIL" { v[$2] = "FAIL" }
        END { for (i = 1; i <= n; i++) print order[i], v[order[i]] }')
    if [ "$n" -eq 0 ] || { [ "$rc" -ne 0 ] && ! grep -q 'LAB-TEST .* FAIL' "$out"; }; then
        record "$prefix-run" FAIL "lab.sh exited $rc; see $out"
    fi
    if [ "$n" -eq 0 ] || [ "$rc" -ne 0 ] || grep -q 'LAB-TEST .* FAIL' "$out"; then LAB_FAILED_LOGS+=("$prefix $out"); fi
}

# lab_diagnostics: for each lab boot that failed, the lines that usually say
# why (xl and Ferrite errors, the last console lines), printed once at the very
# end where a truncated CI report still shows them.
lab_diagnostics() {
    local e prefix out
    for e in "${LAB_FAILED_LOGS[@]}"; do
        prefix=${e%% *}; out=${e#* }
        echo "---- $prefix: what the failing boot said (from $out)"
        grep -aE 'LAB-INFO|LAB-TEST .* FAIL|error|Error|ERROR|panic|libxl|refus|timed out|timeout' "$out" | grep -av 'LAB-TEST .* PASS' | tail -n 25 | cut -c 1-240
        echo "---- $prefix: last lines"
        tail -n 8 "$out" | cut -c 1-240
    done
}

# MODE disks (its own Xen boot): two NVMe controllers, three namespaces (one
# with 4 KiB LBAs), a GPT; four guests on four extents. Then, from the host,
# tests/check_disks.py: each guest's data is exactly where its extent is and
# every other byte of the images is as the host wrote it.
test_lab_disks() {
    local out=$LOGS/lab-disks.log run rc
    # The host check itself first: it must fail on images where a vbd escaped its extent.
    say "check_disks.py self-test (fake runs, correct and escaped mappings); log: $LOGS/check-disks-selftest.log"
    if python3 "$ROOT/tests/check_disks_selftest.py" >"$LOGS/check-disks-selftest.log" 2>&1; then record disks-check-selftest OK
    else record disks-check-selftest FAIL "see $LOGS/check-disks-selftest.log"; fi
    say "lab disks tests (a second Xen boot: MODE disks)"
    "$ROOT/lab/lab.sh" run disks "$IMAGE" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    collect_lab "$out" "$rc" lab-disks
    run=$(cat "${LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrite-lab}/last-run" 2>/dev/null)
    if [ -n "$run" ] && [ "${run%-disks}" != "$run" ] && python3 "$ROOT/tests/check_disks.py" "$run" 2>&1 | tee "$LOGS/check-disks.log"; then
        record lab-disks:image OK
    else
        record lab-disks:image FAIL "the disks run's images are not as expected (run ${run:-?}); see $LOGS/check-disks.log"
    fi
}

# MODE net (issue 12; its own Xen boot): Ferrite with the NVMe and a
# virtio-net NIC (QEMU user-mode network) passed through, two Linux guests with
# vifs on Ferrite: net-ready, net-features, net-ping, net-tcp, net-gateway,
# net-spoof, net-metrics (SKIP unless configured), net-detach, net-destroy.
# Part of `./run.sh test`; `./run.sh test-net` runs only it
# (FERRITE_NET_LINUX=1: a Linux network driver domain plays Ferrite, to check
# the lab itself). The mode ends by itself within ~6 min; LAB_TIMEOUT caps QEMU.
test_lab_net() {
    local out=$LOGS/lab-net.log extra="" rc
    say "lab net tests (a Xen boot: MODE net); log: $out"
    if [ "${FERRITE_NET_LINUX:-0}" = 1 ]; then
        extra=$(mktemp -d) && touch "$extra/net-linux"
        say "FERRITE_NET_LINUX=1: a Linux network driver domain plays Ferrite"
    fi
    LAB_TIMEOUT=${LAB_TIMEOUT:-480} "$ROOT/lab/lab.sh" run net "$IMAGE" $extra 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    [ -z "$extra" ] || rm -rf "$extra"
    collect_lab "$out" "$rc" lab-net
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

# The cost benchmark's smoke run: figures printed, every workload must have
# one (no assertion on the figures themselves).
test_bench_cpu() {
    local out=$LOGS/bench-cpu-quick.log
    say "bench cpu --quick (instructions per request, callgrind); log: $out"
    if "$ROOT/bench/cpu.sh" --quick >"$out" 2>&1; then
        record bench-cpu OK
        sed -n '/^workload /,/^  -data/p' "$out"
    else
        record bench-cpu FAIL "see $out"; tail -n 15 "$out"
    fi
}

# The network benchmark's short variant: a smoke test that both set-ups
# (ferrite, linux) produced a result for every job.
test_bench_net_quick() {
    local out=$LOGS/bench-net-quick.log
    say "bench net --quick (Ferrite's netback vs a Linux network driver domain, one short round); log: $out"
    if "$ROOT/bench/net.sh" --quick >"$out" 2>&1; then
        record bench-net-quick OK
        sed -n '/^job /,/^Target/p' "$out" | grep -E 'ferrite/linux|^job|^Target' | head -n 8
    else
        record bench-net-quick FAIL "see $out"
        grep -E 'LAB-TEST|CHECK|FAILED|Not measured' "$out" | tail -n 12
    fi
}

run_tests() {
    test_lint
    test_host
    test_bench_cpu
    test_image && test_pvh
    test_fuzz
    if [ "${FERRITE_SKIP_LAB:-0}" = 1 ]; then say "FERRITE_SKIP_LAB=1: lab tests skipped"; else
        test_lab
        if [ "${FERRITE_SKIP_BENCH:-0}" = 1 ]; then say "FERRITE_SKIP_BENCH=1: bench --quick skipped"; else test_bench_quick; fi
        if [ "${FERRITE_SKIP_BENCH:-0}" = 1 ]; then say "FERRITE_SKIP_BENCH=1: bench net --quick skipped"; else test_bench_net_quick; fi
    fi
    lab_diagnostics
    for f in "${FAILURES[@]}"; do echo "FAILED: $f"; done
    say "done; logs in $LOGS"
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
}

# MODE xen (issue 13; its own Xen boot) on the project's hypervisor
# (lab/xen-build.sh builds it, cached by the hash of its inputs; LAB_XEN=debian:
# the same mode on Debian's Xen): hypercall 43 answered by the Rust core, bad
# arguments refused, Ferrite and a guest's filesystem under it, a contained panic.
test_lab_xen() {
    local out=$LOGS/lab-xen.log
    if [ "${LAB_XEN:-ferrite}" = ferrite ]; then
        say "the project's Xen (lab/xen-build.sh; cached by the hash of its inputs); log: $LOGS/xen-build.log"
        if ! "$ROOT/lab/xen-build.sh" >"$LOGS/xen-build.log" 2>&1; then
            tail -n 20 "$LOGS/xen-build.log"; record lab-xen-build FAIL "see $LOGS/xen-build.log"; return
        fi
        record lab-xen-build OK
    fi
    say "lab xen tests (a Xen boot: MODE xen); log: $out"
    LAB_XEN=${LAB_XEN:-ferrite} "$ROOT/lab/lab.sh" run xen "$IMAGE" 2>&1 | tee "$out"
    collect_lab "$out" "${PIPESTATUS[0]}" lab-xen
}

# ./run.sh lab-xen: only MODE xen.
lab_xen() {
    build_image || return 1
    "$ROOT/lab/lab.sh" build || return 1
    test_lab_xen
    for f in "${FAILURES[@]}"; do echo "FAILED: $f"; done
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
}

case "${1:-main}" in
    main) main_job ;;
    lab-xen) lab_xen ;;
    test) run_tests ;;
    test-net)
        build_image || exit 1
        "$ROOT/lab/lab.sh" build || exit 1
        test_lab_net
        for f in "${FAILURES[@]}"; do echo "FAILED: $f"; done
        echo "$PASSED passed, $FAILED failed"
        [ "$FAILED" -eq 0 ] ;;
    lint) test_lint; for f in "${FAILURES[@]}"; do echo "FAILED: $f"; done; echo "$PASSED passed, $FAILED failed"; [ "$FAILED" -eq 0 ] ;;
    bench)
        shift
        case "${1:-}" in
            nvme) shift; exec "$ROOT/bench/nvme.sh" "$@" ;;
            cpu) shift; exec "$ROOT/bench/cpu.sh" "$@" ;;
            net) shift; exec "$ROOT/bench/net.sh" "$@" ;;
            *) exec "$ROOT/bench/dd.sh" "$@" ;;
        esac ;;
    -h|--help|help) sed -n '2,/^# Logs go/p' "$0" ;;
    *) echo "usage: ./run.sh [main|test|test-net|lint|bench|lab-xen]" >&2; exit 2 ;;
esac
