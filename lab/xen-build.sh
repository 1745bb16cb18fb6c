#!/usr/bin/env bash
# The lab's own hypervisor: Debian's Xen 4.17.5 source with the project's patch
# (hypervisor/xen/patches/) and the Rust PV-IOMMU core (hypervisor/xen-glue,
# linking hypervisor/iommu-core) answering hypercall 43.
#
#   lab/xen-build.sh          build it unless a binary for the same inputs is cached
#   lab/xen-build.sh --path   the same, then print only the binary's path on stdout
#                             (progress goes to stderr; lab.sh uses this for LAB_XEN=ferrite)
#   lab/xen-build.sh --lint   hypervisor/xen-glue: rustfmt --check, clippy -D warnings with the
#                             build's flags (with and without lab-panic-test), and its host
#                             unit tests (cargo test, over a fake of the Xen services)
#
# Cache: $LAB_CACHE/xen-ferrite/ (default ~/.cache/ferrite-lab/xen-ferrite/): the
# Debian source package, the build tree, and xen-<hash> binaries keyed by the
# hash of every input (patch, glue crate, iommu-core, pv-iommu-abi, xen-types,
# this script, Debian's source version and config, rustc's version).
# Build deps it installs when missing: bison, flex (apt), rust-src (rustup).
# Builds run under nice -n 10 with -j2 (LAB_XEN_JOBS changes that).
set -euo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$LAB_DIR")
CACHE=${LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrite-lab}
XB=$CACHE/xen-ferrite
DEB_VERSION=4.17.5+72-g01140da4e8-1
JOBS=${LAB_XEN_JOBS:-2}
PATCHES=$REPO/hypervisor/xen/patches
GLUE=$REPO/hypervisor/xen-glue
# Code generation that links into Xen (../shared/XEN-RUST.md): no GOT, Xen's
# thunks for indirect calls and returns, IBT landing pads; legacy mangling keeps
# Xen's symbol table entries (one length byte) from overflowing.
GLUE_RUSTFLAGS="-C relocation-model=pie -C code-model=small -Z plt=yes -Z direct-access-external-data=yes
  -Z cf-protection=branch -Z retpoline-external-thunk -Z function-return=thunk-extern
  -C symbol-mangling-version=legacy -Z unstable-options"

PRINT_PATH=no
[ "${1:-}" = --path ] && PRINT_PATH=yes
if [ "${1:-}" = --lint ]; then
    (cd "$GLUE" && rustfmt --edition 2021 --config-path "$REPO/rustfmt.toml" --check src/*.rs) || exit 1
    for f in "" lab-panic-test; do
        (cd "$GLUE" && RUSTC_BOOTSTRAP=1 RUSTFLAGS="$(echo $GLUE_RUSTFLAGS)" nice -n 10 cargo clippy --release \
            --target x86_64-unknown-none -Z build-std=core,alloc,compiler_builtins ${f:+--features $f} \
            -j "${LAB_XEN_JOBS:-2}" --target-dir "$XB/target" -- -D warnings) || exit 1
    done
    (cd "$GLUE" && nice -n 10 cargo clippy --tests -j "${LAB_XEN_JOBS:-2}" --target-dir "$XB/target-host" -- -D warnings \
        && nice -n 10 cargo test -j "${LAB_XEN_JOBS:-2}" --target-dir "$XB/target-host") || exit 1
    echo "xen-glue: fmt and clippy clean, host tests pass"
    exit 0
fi
T0=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
say() { echo "[xen-build $(since "$T0")s] $*" >&2; }
die() { echo "[xen-build $(since "$T0")s] ERROR: $*" >&2; exit 1; }
mkdir -p "$XB/logs"
# run LOG TEXT CMD...: output to logs/LOG.log, its tail on failure.
run() {
    local log=$XB/logs/$1.log text=$2 t
    shift 2
    t=$(date +%s.%N)
    say "$text ..."
    if ! "$@" >"$log" 2>&1; then
        echo "[xen-build] FAILED: $text; last lines of $log:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    say "  done in $(since "$t") s"
}

debian_config() {
    # Debian's own configuration of its 4.17 hypervisor (from the lab's package tree).
    local c=$CACHE/root/boot/xen-4.17-amd64.config deb
    if [ ! -e "$c" ]; then
        deb=$(ls "$CACHE"/debs/xen-hypervisor-4.17-amd64_*.deb 2>/dev/null | head -n 1)
        [ -n "$deb" ] || die "no Debian Xen package in $CACHE/debs: run lab/lab.sh build first"
        mkdir -p "$XB/deb" && dpkg-deb -x "$deb" "$XB/deb"
        c=$XB/deb/boot/xen-4.17-amd64.config
    fi
    echo "$c"
}

inputs_hash() {
    {
        echo "$DEB_VERSION"
        rustc --version
        sha256sum "$(debian_config)" | cut -d' ' -f1
        (cd "$REPO" && find hypervisor/xen hypervisor/xen-glue hypervisor/iommu-core crates/pv-iommu-abi crates/xen-types lab/xen-build.sh \
            -type f \( -name '*.rs' -o -name '*.toml' -o -name '*.patch' -o -name '*.sh' -o -name '*.c' -o -name Cargo.lock \) \
            -not -path '*/target/*' | LC_ALL=C sort | xargs sha256sum)
    } | sha256sum | cut -c1-16
}

ensure_deps() {
    local need=()
    command -v bison >/dev/null || need+=(bison)
    command -v flex >/dev/null || need+=(flex)
    command -v make >/dev/null || need+=(make)
    command -v gcc >/dev/null || need+=(gcc)
    command -v patch >/dev/null || need+=(patch)
    command -v dpkg-source >/dev/null || need+=(dpkg-dev)
    if [ ${#need[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" \
            || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"; }
    fi
    rustup component list --installed 2>/dev/null | grep -q '^rust-src' || rustup component add rust-src
    rustup target list --installed 2>/dev/null | grep -q '^x86_64-unknown-none$' || rustup target add x86_64-unknown-none
    echo "bison $(bison --version | head -n 1), flex $(flex --version), $(rustc --version)"
}

fetch_source() {
    # Debian bookworm main's xen source (bookworm-security's is refused here; see
    # ../shared/XEN-RUST.md). A private apt list: the host's apt setup is untouched.
    local d=$XB/src
    if [ -e "$d/xen_$DEB_VERSION.dsc" ] && [ -d "$XB/tree-$DEB_VERSION/xen" ]; then
        echo "source $DEB_VERSION is cached"; return 0
    fi
    mkdir -p "$d" "$XB/apt/lists/partial"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" >"$XB/apt/sources.list"
    local apto=(-o Dir::Etc::SourceList="$XB/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists="$XB/apt/lists")
    if [ ! -e "$d/xen_$DEB_VERSION.dsc" ]; then
        apt-get "${apto[@]}" update
        (cd "$d" && apt-get "${apto[@]}" source --download-only "xen=$DEB_VERSION")
    fi
    rm -rf "$XB/tree-$DEB_VERSION"
    # dpkg-source applies Debian's own patches.
    dpkg-source -x "$d/xen_$DEB_VERSION.dsc" "$XB/tree-$DEB_VERSION"
}

prepare_tree() {
    # A build tree per patch set: reused (incremental make) while the patches are
    # unchanged, made afresh from the pristine source when they change.
    local sum
    sum=$(cat "$PATCHES"/*.patch | sha256sum | cut -c1-16)
    if [ -e "$XB/build/.patches" ] && [ "$(cat "$XB/build/.patches")" = "$sum" ]; then
        echo "build tree has patches $sum"; return 0
    fi
    rm -rf "$XB/build"
    cp -a "$XB/tree-$DEB_VERSION" "$XB/build"
    local p
    for p in "$PATCHES"/*.patch; do
        echo "applying $(basename "$p")"
        patch -d "$XB/build" -p1 --no-backup-if-mismatch <"$p"
    done
    cp "$(debian_config)" "$XB/build/xen/.config"
    nice -n 10 make -C "$XB/build/xen" olddefconfig PYTHON=/usr/bin/python3
    echo "$sum" >"$XB/build/.patches"
}

build_glue() {
    (cd "$GLUE" && RUSTC_BOOTSTRAP=1 RUSTFLAGS="$(echo $GLUE_RUSTFLAGS)" nice -n 10 cargo build --release \
        --target x86_64-unknown-none -Z build-std=core,alloc,compiler_builtins \
        --features lab-panic-test -j "$JOBS" --target-dir "$XB/target")
    local a=$XB/target/x86_64-unknown-none/release/libxen_glue.a
    mkdir -p "$XB/build/xen/ferrite"
    cp "$a" "$XB/build/xen/ferrite/libxen_glue.a"
    ls -l "$a"
}

build_xen() {
    nice -n 10 make -C "$XB/build/xen" -j"$JOBS" PYTHON=/usr/bin/python3
}

check_binary() {
    local syms=$XB/build/xen/xen-syms
    nm "$syms" >"$XB/logs/nm.txt"
    # The Rust entry points and the hypercall made it into the image.
    grep -q ' T do_iommu_op$' "$XB/logs/nm.txt" || { echo "do_iommu_op missing"; return 1; }
    grep -q ' T ferrite_iommu_op$' "$XB/logs/nm.txt" || { echo "ferrite_iommu_op (Rust) missing"; return 1; }
    # Xen's symbol table stores a (compressed) name's length in one byte: the
    # assembler warns when one does not fit (it did with v0 mangling).
    if grep -q 'Warning: value .* truncated' "$XB/logs/make.log"; then echo "symbol table entry truncated (name too long)"; return 1; fi
    # No GOT/PLT (Xen's linker script also asserts an empty .got).
    if readelf -S "$syms" | grep -E '\.(got|plt)' >/dev/null; then echo ".got/.plt present"; return 1; fi
    size "$syms"
}

main() {
    local hash bin
    ensure_deps >"$XB/logs/deps.log" 2>&1 || { tail -n 20 "$XB/logs/deps.log" >&2; die "build dependencies"; }
    hash=$(inputs_hash)
    bin=$XB/xen-$hash
    # One build at a time in $XB/build (worktrees and CI share the cache).
    exec 9>"$XB/.build.lock"
    if ! flock -n 9; then
        say "another build of Ferrite's Xen holds $XB/.build.lock: waiting"
        flock 9
    fi
    if [ -e "$bin" ]; then
        say "Ferrite Xen is cached: $bin"
    else
        say "building Ferrite's Xen (inputs $hash; logs in $XB/logs/)"
        run source "Debian xen source $DEB_VERSION (apt-get source, private list)" fetch_source
        run tree "build tree: Debian source + $(ls "$PATCHES" | tr '\n' ' ')+ Debian config (olddefconfig)" prepare_tree
        run glue "Rust core: hypervisor/xen-glue staticlib (build-std, fat LTO)" build_glue
        run make "make -C xen -j$JOBS" build_xen
        run check "check the image (symbols, name lengths, no GOT)" check_binary
        cp "$XB/build/xen/xen" "$bin.new" && mv "$bin.new" "$bin"
        # Keep the five newest binaries of this cache directory (each is 2.6 MB).
        ls -t "$XB"/xen-???????????????? 2>/dev/null | tail -n +6 | xargs -r rm -f
        local stock=$CACHE/xen
        if [ -e "$stock" ]; then
            say "size: $(stat -c %s "$bin") bytes vs Debian's xen-4.17-amd64 $(stat -c %s "$stock") bytes" \
                "($(( $(stat -c %s "$bin") - $(stat -c %s "$stock") )) bytes more)"
        fi
        say "built $bin in $(since "$T0") s"
    fi
    echo "$bin" >"$XB/current"
    [ $PRINT_PATH = yes ] && echo "$bin"
    return 0
}

main
