#!/usr/bin/env bash
# Ferrite's Xen lab: Xen 4.17 + a Debian dom0 under QEMU TCG.
#
#   lab/lab.sh build                      fetch Debian packages, build the dom0 initramfs
#                                         (cached in .lab-cache/; fast when nothing changed)
#   lab/lab.sh host-tools                 only install QEMU, gcc, binutils if missing
#   lab/lab.sh run MODE IMAGE [EXTRA_DIR] boot Xen + dom0 once and run MODE inside dom0
#        MODE   test  all lab tests (LAB-TEST lines), or  main  (create, show, shut down),
#               or any lab/modes/MODE.sh / EXTRA_DIR/MODE.sh
#        IMAGE  the Ferrite PV ELF (the product), or the word "linux-peer" for a Linux
#               guest that plays Ferrite's part (to check the lab itself)
#        EXTRA_DIR  copied to /extra in dom0
#
# LAB_SELFTEST_IMAGE: the self-test image (ferrite-selftest), put at
# /ferrite/ferrite-selftest in dom0 for MODE test's grant/evtchn/nvme-selftest
# checks; default: ferrite-selftest beside IMAGE, if it exists.
#
# LAB_XEN picks the hypervisor: unset or "debian" = Debian's xen-hypervisor-4.17-amd64;
# "ferrite" = the project's (Debian's 4.17.5 source + hypervisor/xen/patches + the Rust
# PV-IOMMU core, built and cached by lab/xen-build.sh); or a path to a Xen binary.
#
# Environment: LAB_TIMEOUT (seconds, default 900) caps a run; LAB_BOOT_DEADLINE (default 180)
# bounds the boot to dom0's first step (a stalled boot is retried once); LAB_CACHE moves the cache;
# LAB_DOM0_MEM (MiB) and LAB_XEN_ARGS change Xen's command line, LAB_DOM0_ARGS
# (default loglevel=6) dom0's.  See lab/README.md.
set -euo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$LAB_DIR")
CACHE=${LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrite-lab}
LOGS=$CACHE/logs
XENVER=4.17
DOM0_MODULES="xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-blkback xen-pciback xen-netback nvme"
PEER_MODULES="xenfs xen-evtchn xen-gntdev xen-gntalloc"
# The Linux test guest (configs/guest-linux.cfg, configs/guest-net.cfg): blkfront, ext4
# and crc32c (ext4's metadata checksums ask the crypto API for it; no modprobe in the
# guest to load it), netfront (MODE net's guests, vif on Ferrite).
GUEST_MODULES="xen-blkfront crc32c_generic ext4 xen-netfront"
# The Linux driver domain of the benchmark (lab.role=dd, same initramfs as the test
# guest): pcifront for the passed-through NVMe, the nvme driver, xen-blkback.
DD_MODULES="xenfs xen-pcifront nvme xen-blkback"
# MODE net's Linux stand-in for Ferrite's network half (lab.role=netdd, same
# initramfs): pcifront, virtio_net for the passed-through NIC, xen-netback, a bridge.
NETDD_MODULES="xenfs xen-pcifront virtio_pci virtio_net xen-netback bridge"
# MODE xen's PV-IOMMU policy guest (lab.role=iommu, same initramfs): privcmd for
# labtool's hypercalls.
IOMMU_GUEST_MODULES="xen-privcmd"
XEN_PACKAGES="xen-hypervisor-$XENVER-amd64 xen-utils-$XENVER xen-utils-common xenstore-utils
  libxencall1 libxenevtchn1 libxenforeignmemory1 libxengnttab1 libxenmisc$XENVER libxenstore4
  libxentoollog1 libxenhypfs1 libxendevicemodel1 libxentoolcore1 libyajl2 busybox-static libc6 libgcc-s1 bash libtinfo6
  e2fsprogs ethtool"
# Programs whose shared libraries go into the initramfs (paths inside the package tree).
XEN_PROGRAMS="usr/lib/xen-$XENVER/bin/xl usr/lib/xen-$XENVER/bin/xenstored usr/lib/xen-$XENVER/bin/xenconsoled
  usr/lib/xen-$XENVER/bin/xen-init-dom0 usr/lib/xen-$XENVER/bin/libxl-save-helper
  usr/lib/xen-$XENVER/bin/xenconsole usr/bin/xenstore bin/bash sbin/mke2fs sbin/ethtool"
# Sonames the host cannot map to a package with dpkg -S (a fresh machine may lack them).
declare -A SONAME_PKG=(
  [libc.so.6]=libc6 [libm.so.6]=libc6 [liblzma.so.5]=liblzma5 [libuuid.so.1]=libuuid1
  [libz.so.1]=zlib1g [libzstd.so.1]=libzstd1 [libbz2.so.1.0]=libbz2-1.0 [libtinfo.so.6]=libtinfo6
  [libxendevicemodel.so.1]=libxendevicemodel1 [libxentoolcore.so.1]=libxentoolcore1
  [libyajl.so.2]=libyajl2 [libgcc_s.so.1]=libgcc-s1 [libnl-3.so.200]=libnl-3-200
  [libnl-route-3.so.200]=libnl-route-3-200 [libgnutls.so.30]=libgnutls30
  [libext2fs.so.2]=libext2fs2 [libe2p.so.2]=libext2fs2 [libcom_err.so.2]=libcom-err2
  [libblkid.so.1]=libblkid1 [libmnl.so.0]=libmnl0
)

T_START=$(date +%s.%N)
elapsed() { awk -v a="$T_START" -v b="$(date +%s.%N)" 'BEGIN { printf "%6.1f", b - a }'; }
say() { echo "[lab $(elapsed)s] $*"; }
die() { echo "[lab $(elapsed)s] ERROR: $*" >&2; exit 1; }

# step LOGNAME TEXT CMD...: run CMD with its output in logs/LOGNAME.log; show the tail on failure.
step() {
    local log=$LOGS/$1.log text=$2 t0
    shift 2
    t0=$(date +%s.%N)
    echo "[lab $(elapsed)s] $text ..."
    if ! "$@" >>"$log" 2>&1; then
        echo "[lab $(elapsed)s] FAILED: $text; last lines of $log:" >&2
        tail -n 25 "$log" >&2
        exit 1
    fi
    echo "[lab $(elapsed)s]   done in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
}

inputs_hash() {
    # Everything the base initramfs is made from; the run-time parts are hashed apart.
    (cd "$LAB_DIR" && cat lab.sh lib/*.py dom0/* tools/labtool.c) | sha256sum | cut -d' ' -f1
}

# ------------------------------------------------------------------ build steps
ensure_host_tools() {
    local need=()
    command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
    command -v objdump >/dev/null || need+=(binutils)
    command -v gcc >/dev/null || need+=(gcc)
    [ -e /usr/include/xen/gntalloc.h ] || need+=(linux-libc-dev)
    [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
    command -v python3 >/dev/null || need+=(python3)
    command -v make >/dev/null || need+=(make)
    command -v strip >/dev/null || need+=(binutils)
    [ -e /usr/lib/x86_64-linux-gnu/libz.a ] || need+=(zlib1g-dev)
    if [ ${#need[@]} -gt 0 ]; then
        ensure_apt_lists
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
    fi
    command -v qemu-system-x86_64
}

ensure_apt_lists() {
    if [ ! -e "$CACHE/.apt-updated" ] || ! apt-cache show "xen-utils-$XENVER" >/dev/null 2>&1; then
        apt-get update
        touch "$CACHE/.apt-updated"
    fi
}

pick_kernel() {
    # The newest Debian 6.1 generic kernel (not -cloud, not -rt).
    apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -n 1
}

download() {
    # download PKG...: apt-get download what is not in debs/ yet (any version counts).
    mkdir -p "$CACHE/debs"
    local missing=() p
    for p in "$@"; do
        compgen -G "$CACHE/debs/${p}_*.deb" >/dev/null || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "downloading: ${missing[*]}"
    # Stale package lists name versions the archive has dropped: update once and retry.
    (cd "$CACHE/debs" && apt-get download "${missing[@]}") || {
        echo "apt-get download failed; refreshing package lists and retrying"
        apt-get update && touch "$CACHE/.apt-updated"
        (cd "$CACHE/debs" && apt-get download "${missing[@]}")
    }
}

extract_all() {
    # The tree depends only on the set of .debs: keep it when that set is unchanged.
    local d sum
    sum=$(ls -l "$CACHE"/debs/*.deb | sha256sum | cut -d' ' -f1)
    if [ -e "$CACHE/root/.debs-sum" ] && [ "$(cat "$CACHE/root/.debs-sum")" = "$sum" ]; then
        echo "package tree is current"
        return 0
    fi
    rm -rf "$CACHE/root" && mkdir -p "$CACHE/root"
    for d in "$CACHE"/debs/*.deb; do
        echo "extract $(basename "$d")"
        dpkg-deb -x "$d" "$CACHE/root"
    done
    echo "$sum" >"$CACHE/root/.debs-sum"
}

resolve_libs() {
    # Download the packages of any soname the programs need that the tree lacks; repeat.
    local round out so pkg pkgs
    for round in 1 2 3 4 5; do
        out=$(python3 "$LAB_DIR/lib/elfdeps.py" "$CACHE/root" $XEN_PROGRAMS)
        echo "$out" >"$CACHE/libs.txt"
        pkgs=()
        for so in $(echo "$out" | awk '$1 == "missing" {print $2}'); do
            pkg=${SONAME_PKG[$so]:-}
            if [ -z "$pkg" ]; then
                pkg=$(dpkg -S "/$so" 2>/dev/null | head -n 1 | cut -d: -f1 || true)
            fi
            [ -n "$pkg" ] || { echo "no package known for $so"; return 1; }
            echo "round $round: $so -> $pkg"
            pkgs+=("$pkg")
        done
        if [ ${#pkgs[@]} -eq 0 ]; then
            ls -l "$CACHE"/debs/*.deb | sha256sum | cut -d' ' -f1 >"$CACHE/root/.debs-sum"
            echo "all libraries resolved:"; cat "$CACHE/libs.txt"; return 0
        fi
        download "${pkgs[@]}"
        for pkg in "${pkgs[@]}"; do dpkg-deb -x "$(ls "$CACHE"/debs/"${pkg}"_*.deb | head -n 1)" "$CACHE/root"; done
    done
    echo "libraries still missing after 5 rounds"; return 1
}

# copy_rel SRC_ROOT DST_ROOT RELPATH: copy one file (symlinks followed) keeping its path.
copy_rel() {
    mkdir -p "$2/$(dirname "$3")"
    # The tree may hold a busybox applet link of that name (mke2fs): never write through it.
    rm -f "$2/$3"
    cp -L "$1/$3" "$2/$3"
}

install_busybox() {
    local dst=$1 a
    mkdir -p "$dst/bin" "$dst/sbin" "$dst/usr/bin" "$dst/usr/sbin"
    cp "$CACHE/root/bin/busybox" "$dst/bin/busybox"
    for a in $("$CACHE/root/bin/busybox" --list-full); do
        [ -e "$dst/$a" ] || ln -s /bin/busybox "$dst/$a"
    done
}

install_libs() {
    # install_libs DST: the resolved libraries plus the dynamic loader.
    local dst=$1 l
    for l in $(awk '$1 == "lib" {print $2}' "$CACHE/libs.txt"); do copy_rel "$CACHE/root" "$dst" "$l"; done
    copy_rel "$CACHE/root" "$dst" lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
    # glibc dlopen()s libgcc_s for pthread_cancel (xl aborts without it).
    copy_rel "$CACHE/root" "$dst" lib/x86_64-linux-gnu/libgcc_s.so.1
    mkdir -p "$dst/lib64"
    ln -sf /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$dst/lib64/ld-linux-x86-64.so.2"
}

install_modules() {
    # install_modules DST LISTNAME MODULE...: the modules and their dependencies, in load order.
    local dst=$1 list=$2 m
    shift 2
    local mdir=$CACHE/root/lib/modules/$KVER
    python3 "$LAB_DIR/lib/kmods.py" "$mdir" "$@" >"$dst/etc/lab/$list"
    for m in $(cat "$dst/etc/lab/$list"); do copy_rel "$mdir" "$dst/lib/modules/$KVER" "$m"; done
    echo "$list: $(tr '\n' ' ' <"$dst/etc/lab/$list")"
}

common_tree() {
    local dst=$1
    rm -rf "$dst" && mkdir -p "$dst"/{proc,sys,dev,run,tmp,etc/lab,lab,var/log,var/lib,root}
    ln -s /run "$dst/var/run"
    install_busybox "$dst"
    install_libs "$dst"
    cp "$LAB_DIR/dom0/init" "$dst/init"
    cp "$LAB_DIR/dom0/common.sh" "$LAB_DIR/dom0/peer.sh" "$LAB_DIR/dom0/guest.sh" \
        "$LAB_DIR/dom0/dd.sh" "$LAB_DIR/dom0/bench-agent.sh" "$LAB_DIR/dom0/net-agent.sh" \
        "$LAB_DIR/dom0/netdd.sh" "$LAB_DIR/dom0/netbench-agent.sh" "$LAB_DIR/dom0/iommu-agent.sh" "$dst/lab/"
    chmod +x "$dst/init" "$dst/lab/peer.sh" "$dst/lab/guest.sh" "$dst/lab/dd.sh" "$dst/lab/bench-agent.sh" \
        "$dst/lab/net-agent.sh" "$dst/lab/netdd.sh" "$dst/lab/netbench-agent.sh" "$dst/lab/iommu-agent.sh"
    echo "root:x:0:0:root:/root:/bin/sh" >"$dst/etc/passwd"
    echo "root:x:0:" >"$dst/etc/group"
    # xenstore-read etc. are links to the multi-call /usr/bin/xenstore
    cp -a "$CACHE/root/usr/bin/xenstore"* "$dst/usr/bin/"
    mkdir -p "$dst/usr/local/bin"
    cp "$CACHE/labtool" "$dst/usr/local/bin/labtool"
}

build_dom0_tree() {
    local dst=$CACHE/dom0-tree p
    common_tree "$dst"
    for p in $XEN_PROGRAMS; do copy_rel "$CACHE/root" "$dst" "$p"; done
    cp -a "$CACHE/root/usr/lib/xen-$XENVER/bin/." "$dst/usr/lib/xen-$XENVER/bin/" 2>/dev/null || true
    # Only the tools that run here need their libraries; drop the rest to keep the image small.
    local wanted
    wanted=" $(echo $XEN_PROGRAMS) "
    (cd "$dst/usr/lib/xen-$XENVER/bin" && for f in *; do
        case $wanted in *"/bin/$f "*) ;; *) rm -f "$f" ;; esac
    done)
    cp -a "$CACHE/root/etc/xen" "$dst/etc/xen"
    # Data files libxl reads at run time.
    [ -d "$CACHE/root/usr/lib/xen-$XENVER/boot" ] && cp -a "$CACHE/root/usr/lib/xen-$XENVER/boot" "$dst/usr/lib/xen-$XENVER/"
    [ -d "$CACHE/root/usr/share/xen-$XENVER" ] && mkdir -p "$dst/usr/share" && cp -a "$CACHE/root/usr/share/xen-$XENVER" "$dst/usr/share/"
    ln -sf /bin/bash "$dst/usr/bin/bash" 2>/dev/null || true
    install_modules "$dst" modules $DOM0_MODULES
    du -sh "$dst"
}

build_peer_tree() {
    local dst=$CACHE/peer-tree
    common_tree "$dst"
    rm -f "$dst/bin/bash"
    install_modules "$dst" modules-peer $PEER_MODULES
    du -sh "$dst"
}

build_guest_tree() {
    # The Linux test guest: busybox, mke2fs (+ libs), static fio, blkfront + ext4,
    # the xenstore tools (benchmark commands); also the benchmark's Linux driver
    # domain (lab.role=dd: pcifront, nvme, blkback); MODE xen's PV-IOMMU policy
    # guest (lab.role=iommu: privcmd and labtool, lab/dom0/iommu-agent.sh).
    local dst=$CACHE/guest-tree
    common_tree "$dst"
    rm -f "$dst/bin/bash"
    copy_rel "$CACHE/root" "$dst" sbin/mke2fs
    ln -sf mke2fs "$dst/sbin/mkfs.ext4"
    # ethtool -k: the offloads netfront negotiated (MODE net's GUEST-FEATURES).
    copy_rel "$CACHE/root" "$dst" sbin/ethtool
    cp "$CACHE/root/etc/mke2fs.conf" "$dst/etc/mke2fs.conf"
    cp "$CACHE/fio/fio" "$dst/usr/local/bin/fio"
    install_modules "$dst" modules-guest $GUEST_MODULES
    install_modules "$dst" modules-dd $DD_MODULES
    install_modules "$dst" modules-netdd $NETDD_MODULES
    install_modules "$dst" modules-iommu $IOMMU_GUEST_MODULES
    du -sh "$dst"
}

build_fio() {
    # A static fio from Debian's fio source package, linked with libaio.a from
    # libaio-dev (downloaded, not installed).  Cached: built once per cache.
    local d=$CACHE/fio src
    if [ -x "$d/fio" ] && "$d/fio" --version >/dev/null 2>&1; then echo "fio is cached: $("$d/fio" --version)"; return 0; fi
    rm -rf "$d" && mkdir -p "$d/apt/lists/partial" "$d/src"
    # apt-get source needs a deb-src entry: a private list, so the host's apt setup is untouched.
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" >"$d/apt/sources.list"
    local apto=(-o Dir::Etc::SourceList="$d/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists="$d/apt/lists")
    apt-get "${apto[@]}" update
    (cd "$d/src" && apt-get "${apto[@]}" source --download-only fio && apt-get download libaio-dev)
    dpkg-deb -x "$d"/src/libaio-dev_*.deb "$d/aio"
    tar -C "$d/src" -xzf "$d"/src/fio_*.orig.tar.gz
    src=$(ls -d "$d"/src/fio-*/ | head -n 1)
    (cd "$src" && ./configure --build-static --disable-native --extra-cflags="-I$d/aio/usr/include -L$d/aio/usr/lib/x86_64-linux-gnu" \
        --disable-numa --disable-rdma --disable-gfapi --disable-http --disable-rados --disable-rbd \
        --disable-pmem --disable-libnfs --disable-xnvme --disable-libzbc --disable-dfs --disable-tcmalloc --disable-lex)
    grep -q '^CONFIG_LIBAIO=y' "$src/config-host.mak" || { echo "fio configure did not find libaio"; return 1; }
    echo "LDFLAGS+= -L$d/aio/usr/lib/x86_64-linux-gnu" >>"$src/config-host.mak"
    make -C "$src" -j"$(nproc)" fio
    strip -o "$d/fio" "$src/fio"
    file "$d/fio" 2>/dev/null || true
    "$d/fio" --version
    rm -rf "$d/src" "$d/aio" "$d/apt"
}

extract_vmlinux() {
    # Uncompressed kernel for Linux guests (xl create ~3 s instead of ~17 s with bzImage).
    python3 "$LAB_DIR/lib/vmlinux.py" "$CACHE/vmlinuz" "$CACHE/vmlinux"
}

build_labtool() {
    gcc -static -O2 -Wall -o "$CACHE/labtool.new" "$LAB_DIR/tools/labtool.c"
    mv "$CACHE/labtool.new" "$CACHE/labtool"
}

cmd_build() {
    mkdir -p "$CACHE" "$LOGS"
    local want
    want=$(inputs_hash)
    if [ -e "$CACHE/stamp" ] && [ "$(cat "$CACHE/stamp")" = "$want" ] \
        && [ -e "$CACHE/xen" ] && [ -e "$CACHE/dom0-initrd.cpio.gz" ] && [ -e "$CACHE/guest-initrd.cpio.gz" ] && command -v qemu-system-x86_64 >/dev/null; then
        say "lab is up to date ($CACHE, stamp ${want:0:12})"
        return 0
    fi
    say "building the Xen lab in $CACHE (logs: $LOGS/)"
    rm -f "$CACHE/stamp" "$LOGS"/*.log
    step host-tools "host tools (qemu-system-x86, gcc, binutils)" ensure_host_tools
    step apt "apt package lists" ensure_apt_lists
    KPKG=$(pick_kernel)
    [ -n "$KPKG" ] || die "no linux-image-6.1.0-*-amd64 package in apt's lists"
    KVER=${KPKG#linux-image-}
    say "dom0 kernel: $KPKG"
    # A kernel package from an older build must not linger next to the new one.
    find "$CACHE/debs" -name 'linux-image-*.deb' ! -name "${KPKG}_*" -delete 2>/dev/null || true
    step download "download Debian packages (Xen $XENVER, $KPKG, busybox)" download $XEN_PACKAGES "$KPKG"
    step extract "extract packages" extract_all
    step libs "resolve shared libraries of the Xen tools" resolve_libs
    step labtool "build labtool (gcc -static)" build_labtool
    step dom0-tree "assemble the dom0 initramfs tree" build_dom0_tree
    step dom0-cpio "pack dom0 initramfs (cpio newc + gzip)" \
        python3 "$LAB_DIR/lib/mkcpio.py" "$CACHE/dom0-tree" "$CACHE/dom0-initrd.cpio.gz" --gzip
    step peer-tree "assemble the Linux peer guest's initramfs tree" build_peer_tree
    step peer-cpio "pack peer initramfs" \
        python3 "$LAB_DIR/lib/mkcpio.py" "$CACHE/peer-tree" "$CACHE/peer-initrd.cpio.gz" --gzip
    step fio "static fio for the test guest (once; cached in $CACHE/fio)" build_fio
    step guest-tree "assemble the Linux test guest's initramfs tree" build_guest_tree
    step guest-cpio "pack guest initramfs" \
        python3 "$LAB_DIR/lib/mkcpio.py" "$CACHE/guest-tree" "$CACHE/guest-initrd.cpio.gz" --gzip
    step kernel "hypervisor and kernels" install_boot_files
    echo "$want" >"$CACHE/stamp"
    echo "$KVER" >"$CACHE/kernel-version"
    say "lab built: $(du -sh "$CACHE/dom0-initrd.cpio.gz" | cut -f1) dom0 initramfs; logs in $LOGS/"
}

install_boot_files() {
    # Xen's .gz is an ELF32 multiboot image once decompressed: QEMU's -kernel loads it.
    zcat "$CACHE/root/boot/xen-$XENVER-amd64.gz" >"$CACHE/xen"
    cp "$CACHE/root/boot/vmlinuz-$KVER" "$CACHE/vmlinuz"
    extract_vmlinux
    ls -la "$CACHE/xen" "$CACHE/vmlinuz" "$CACHE/vmlinux"
}

# ------------------------------------------------------------------ run
# LAB_DOM0_MEM (MiB, default 1536) and LAB_XEN_ARGS (appended) adjust it.
DOM0_MEM=${LAB_DOM0_MEM:-1536}
XEN_CMDLINE="console=com1 com1=115200 dom0_mem=${DOM0_MEM}M,max:${DOM0_MEM}M dom0_max_vcpus=2 loglvl=all guest_loglvl=all iommu=1,verbose noreboot smap=0 console_timestamps=boot ${LAB_XEN_ARGS:-}"
# No commas allowed here: QEMU splits -initrd modules at commas.
DOM0_CMDLINE="console=hvc0 earlyprintk=xen ${LAB_DOM0_ARGS:-loglevel=6}"

cmd_run() {
    [ $# -ge 2 ] || die "usage: lab.sh run MODE IMAGE [EXTRA_DIR]"
    local mode=$1 image=$2 extra=${3:-}
    local modescript=""
    if [ -n "$extra" ] && [ -e "$extra/$mode.sh" ]; then modescript=$extra/$mode.sh
    elif [ -e "$LAB_DIR/modes/$mode.sh" ]; then modescript=$LAB_DIR/modes/$mode.sh
    else die "unknown MODE '$mode' (lab/modes/: $(cd "$LAB_DIR/modes" && ls | sed 's/\.sh$//' | tr '\n' ' '))"; fi
    if [ "$image" != linux-peer ]; then
        [ -f "$image" ] || die "IMAGE '$image' does not exist (build Ferrite first, or pass linux-peer)"
    fi
    [ -z "$extra" ] || [ -d "$extra" ] || die "EXTRA_DIR '$extra' is not a directory"

    # One QEMU at a time: refuse while a previous lab run's QEMU is alive.
    local pidf pid
    for pidf in "$CACHE"/runs/*/qemu.pid; do
        [ -e "$pidf" ] || continue
        pid=$(cat "$pidf")
        if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q qemu-system; then
            die "a lab QEMU is still running (pid $pid, $(dirname "$pidf")); stop it with: kill $pid"
        fi
    done
    cmd_build
    # cmd_build is a no-op unless lab/ changed (labtool.c and dom0/ are in the stamp).
    local xen_image xen_kind
    case ${LAB_XEN:-debian} in
        debian|stock) xen_image=$CACHE/xen xen_kind=debian ;;
        ferrite) xen_image=$("$LAB_DIR/xen-build.sh" --path) || die "lab/xen-build.sh failed"
                 xen_kind=ferrite ;;
        /*) [ -f "$LAB_XEN" ] || die "LAB_XEN '$LAB_XEN' does not exist"; xen_image=$LAB_XEN xen_kind=other ;;
        *) die "LAB_XEN '$LAB_XEN': debian, ferrite or a path" ;;
    esac
    say "hypervisor: $xen_kind ($xen_image, $(stat -c %s "$xen_image") bytes)"
    local run old
    # Keep the last 20 run directories.
    for old in $(ls -d "$CACHE"/runs/*/ 2>/dev/null | sort | head -n -19); do rm -rf "$old"; done
    run=$CACHE/runs/$(date +%Y%m%d-%H%M%S)-$mode
    mkdir -p "$run/tree/ferrite/configs" "$run/tree/lab" "$run/tree/usr/local/bin"
    say "run directory: $run"
    # Linux guests (the test guest, the peer) share one uncompressed kernel.
    cp "$CACHE/vmlinux" "$run/tree/lab/vmlinux"
    cp "$CACHE/guest-initrd.cpio.gz" "$run/tree/lab/guest-initrd.gz"
    if [ "$image" = linux-peer ]; then
        mkdir -p "$run/tree/lab/peer"
        cp "$CACHE/peer-initrd.cpio.gz" "$run/tree/lab/peer/initrd.gz"
        say "IMAGE: Linux peer guest (stand-in for Ferrite)"
    else
        cp "$image" "$run/tree/ferrite/ferrite"
        say "IMAGE: $image ($(stat -c %s "$image") bytes)"
        local selftest=${LAB_SELFTEST_IMAGE:-$(dirname "$image")/ferrite-selftest}
        if [ -f "$selftest" ]; then
            cp "$selftest" "$run/tree/ferrite/ferrite-selftest"
            say "self-test image: $selftest ($(stat -c %s "$selftest") bytes)"
        elif [ -n "${LAB_SELFTEST_IMAGE:-}" ]; then
            die "LAB_SELFTEST_IMAGE '$selftest' does not exist"
        else
            say "no self-test image ($selftest absent): tests that need it fail in MODE test"
        fi
    fi
    cp "$REPO"/configs/* "$run/tree/ferrite/configs/" 2>/dev/null || true
    cp "$modescript" "$run/tree/lab/mode.sh"
    chmod +x "$run/tree/lab/mode.sh"
    # Files a mode script sources (e.g. xen.sh's xen-policy.sh, xen-devtlb.sh): /lab/modes/ in dom0.
    mkdir -p "$run/tree/lab/modes"
    cp "$LAB_DIR"/modes/*.sh "$run/tree/lab/modes/"
    cp "$CACHE/labtool" "$run/tree/usr/local/bin/labtool"
    echo "$xen_kind" >"$run/tree/lab/xen-kind"
    if [ -n "$extra" ]; then mkdir -p "$run/tree/extra" && cp -a "$extra/." "$run/tree/extra/"; fi
    # NICs: a "# LAB-QEMU-NIC: KIND [KIND ...]" line in the mode script adds one
    # virtio-net-pci per KIND at fixed PCI addresses 00:0a.0, 00:0b.0, ... (the NVMe
    # controllers take 00:04.0 upwards), MAC 52:54:00:fe:0a:00, 52:54:00:fe:0a:01, ...
    # KIND "user": a QEMU user-mode network of its own (slirp: gateway and host
    # 10.0.2.2, DNS 10.0.2.3, DHCP from 10.0.2.15), with an echo service at
    # 10.0.2.100:7 (guestfwd to a `cat` per connection) and a discard sink at
    # 10.0.2.100:9 (a `dd of=/dev/null` per connection: `./run.sh bench net`'s
    # guest->outside stream; slirp splits the command line itself, no shell).
    # Each NIC has its own user-mode network.  dom0 has no virtio driver,
    # so nothing in dom0 binds them; /lab/nics.txt tells the mode script
    # "NAME PCI-ADDRESS KIND MAC" per NIC (also nics.txt in the run directory).
    local nic_args=() nspecs kind slot mac i=0
    nspecs=$(sed -n 's/^# LAB-QEMU-NIC: *//p' "$modescript" | head -n 1)
    : >"$run/nics.txt"
    for kind in $nspecs; do
        slot=$(printf '%02x' $((10 + i)))
        mac=$(printf '52:54:00:fe:0a:%02x' $i)
        case $kind in
            user) nic_args+=(-netdev "user,id=nic$i,net=10.0.2.0/24,guestfwd=tcp:10.0.2.100:7-cmd:cat,guestfwd=tcp:10.0.2.100:9-cmd:dd of=/dev/null bs=65536 status=none"
                             -device "virtio-net-pci,netdev=nic$i,mac=$mac,addr=0x$slot") ;;
            *) die "LAB-QEMU-NIC: unknown kind '$kind' (user)" ;;
        esac
        echo "nic$i 0000:00:$slot.0 $kind $mac" >>"$run/nics.txt"
        i=$((i + 1))
    done
    cp "$run/nics.txt" "$run/tree/lab/nics.txt"
    # ATS: a "# LAB-QEMU-ATS: on" line in the mode script turns on the VT-d unit's
    # device-TLB support (intel-iommu device-iotlb=on), adds a virtio-rng-pci with
    # the ATS capability (ats=on) behind a PCIe root port at 00:10.0 (the device
    # is 0000:01:00.0: QEMU gives virtio devices PCIe and ATS capabilities only
    # behind a PCIe port; its NVMe has no ATS), and Xen's "ats" option (Xen 4.17
    # uses ATS only with it). dom0 has no virtio driver: nothing binds the device.
    # Without the line the QEMU and Xen command lines stay as they are.
    local iommu_opts=intremap=on,caching-mode=on ats_args=() xen_cmdline=$XEN_CMDLINE
    case $(sed -n 's/^# LAB-QEMU-ATS: *//p' "$modescript" | head -n 1) in
        "") ;;
        on) iommu_opts=$iommu_opts,device-iotlb=on
            ats_args=(-device pcie-root-port,id=atsport,bus=pcie.0,chassis=16,addr=0x10
                      -device virtio-rng-pci,bus=atsport,addr=0x0,disable-legacy=on,ats=on)
            xen_cmdline="$xen_cmdline ats=1" ;;
        *) die "LAB-QEMU-ATS: 'on' or no line" ;;
    esac
    python3 "$LAB_DIR/lib/mkcpio.py" "$run/tree" "$run/run.cpio"
    # Linux reads concatenated archives, but an uncompressed one must start on a
    # 4-byte boundary: pad the gzip member with NULs (the unpacker skips them).
    cat "$CACHE/dom0-initrd.cpio.gz" >"$run/initrd"
    head -c $(( (4 - $(stat -c %s "$run/initrd") % 4) % 4 )) /dev/zero >>"$run/initrd"
    cat "$run/run.cpio" >>"$run/initrd"
    rm -rf "$run/tree" "$run/run.cpio"
    # NVMe controllers: one 64 MiB by default; a "# LAB-QEMU-NVME: CTRL CTRL ..." line
    # in the mode script asks for one controller per CTRL, at PCI 00:04.0, 00:05.0, ...
    # with serials ferrite-nvme0, ferrite-nvme1, ...  CTRL is SIZE (one namespace,
    # 512-byte LBAs: the old form) or NS+NS+... with NS = SIZE[/LBA] (namespaces
    # 1, 2, ... of that controller; LBA 512 or 4096).  Images: nvme.img for
    # controller 0 namespace 1, nvme<c>.img for a controller given as a plain
    # SIZE, nvme<c>n<n>.img otherwise; nvme<c>n1.img links to nvme.img / nvme<c>.img,
    # so every namespace is nvme<c>n<n>.img too.  images.txt in the run directory
    # lists "DISK FILE SIZE LBA FILL-ARGS..." per namespace.  A
    # "# LAB-NVME-FILL: nvme<c>n<n> ARGS..." line pre-fills that image with
    # tests/mkimage.py ARGS (background pattern, GPT) before QEMU starts.
    local specs nvme_args=() i=0 img sz ctl ns n lba disk fill
    specs=$(sed -n 's/^# LAB-QEMU-NVME: *//p' "$modescript" | head -n 1)
    : >"$run/images.txt"
    [ "$(echo ${specs:-64M} | wc -w)" -le 6 ] || die "LAB-QEMU-NVME: at most 6 controllers (00:04.0..00:09.0; NICs start at 00:0a.0)"
    for ctl in ${specs:-64M}; do
        case $ctl in
            *[+/]*)
                nvme_args+=(-device "nvme,id=nvme$i,serial=ferrite-nvme$i,addr=0x$((4 + i))")
                n=0
                for ns in $(echo "$ctl" | tr '+' ' '); do
                    n=$((n + 1))
                    sz=${ns%%/*} lba=512
                    case $ns in */*) lba=${ns#*/} ;; esac
                    case $lba in 512|4096) ;; *) die "LAB-QEMU-NVME: LBA size '$lba' in '$ctl' (512 or 4096)" ;; esac
                    img=$run/nvme${i}n$n.img
                    [ $i -eq 0 ] && [ $n -eq 1 ] && { img=$run/nvme.img; ln -sf nvme.img "$run/nvme0n1.img"; }
                    fallocate -l "$sz" "$img" 2>/dev/null || truncate -s "$sz" "$img"
                    local nsopt="nvme-ns,drive=nv${i}n$n,bus=nvme$i,nsid=$n"
                    [ "$lba" = 512 ] || nsopt="$nsopt,logical_block_size=$lba,physical_block_size=$lba"
                    nvme_args+=(-drive "file=$img,if=none,id=nv${i}n$n,format=raw" -device "$nsopt")
                    echo "nvme${i}n$n $(basename "$img") $sz $lba" >>"$run/images.txt"
                done ;;
            *)
                sz=$ctl
                img=$run/nvme.img
                if [ $i -gt 0 ]; then img=$run/nvme$i.img; ln -sf "nvme$i.img" "$run/nvme${i}n1.img"; else ln -sf nvme.img "$run/nvme0n1.img"; fi
                # Allocated up front: first writes then cost the same on every image.
                fallocate -l "$sz" "$img" 2>/dev/null || truncate -s "$sz" "$img"
                nvme_args+=(-drive "file=$img,if=none,id=nv$i,format=raw"
                            -device "nvme,drive=nv$i,serial=ferrite-nvme$i,addr=0x$((4 + i))")
                echo "nvme${i}n1 $(basename "$img") $sz 512" >>"$run/images.txt" ;;
        esac
        i=$((i + 1))
    done
    # Pre-filled images (background pattern, GPT): the same tool the host checks use.
    while read -r disk fill; do
        [ -n "$disk" ] || continue
        set -- $(awk -v d="$disk" '$1 == d' "$run/images.txt")
        [ $# -ge 4 ] || die "LAB-NVME-FILL: no namespace '$disk' in LAB-QEMU-NVME"
        python3 "$REPO/tests/mkimage.py" "$run/$2" --size "$3" --lba "$4" $fill || die "LAB-NVME-FILL $disk $fill failed"
        awk -v d="$disk" -v f="$fill" '$1 == d { $0 = $0 " " f } { print }' "$run/images.txt" >"$run/images.txt.new"
        mv "$run/images.txt.new" "$run/images.txt"
    done < <(sed -n 's/^# LAB-NVME-FILL: *//p' "$modescript")
    echo "$run" >"$CACHE/last-run"

    local timeout=${LAB_TIMEOUT:-900}
    say "booting Xen + dom0 under QEMU TCG (mode $mode, timeout ${timeout}s); serial log: $run/serial.log"
    local rc=0
    # A mode script names the tests it must report in a "# LAB-EXPECT: ..." line.
    local expect
    expect=$(sed -n 's/^# LAB-EXPECT: *//p' "$modescript" | head -n 1)
    # A boot that stalls before dom0's /init (monitor.py exits 75; no test ran,
    # no disk was touched) is booted once more, and says so.
    local attempt
    for attempt in 1 2; do
        python3 "$LAB_DIR/lib/monitor.py" --timeout "$timeout" --boot-deadline "${LAB_BOOT_DEADLINE:-180}" --expect "$expect" --serial "$run/serial.log" --pidfile "$run/qemu.pid" -- \
            qemu-system-x86_64 -machine q35 -accel "${LAB_QEMU_ACCEL:-tcg}" -cpu "${LAB_QEMU_CPU:-qemu64}" -smp "${LAB_QEMU_SMP:-2}" -m 3G \
            -device intel-iommu,$iommu_opts \
            -display none -vga none -nic none -no-reboot -monitor none \
            -serial "file:$run/serial.log" \
            -kernel "$xen_image" -append "$xen_cmdline" \
            -initrd "$CACHE/vmlinuz $DOM0_CMDLINE,$run/initrd" \
            "${nvme_args[@]}" "${nic_args[@]}" "${ats_args[@]}" &
        # The monitor kills QEMU on SIGTERM/SIGHUP/SIGINT; forward ours to it and wait.
        local mon=$!
        trap 'kill -TERM '"$mon"' 2>/dev/null' TERM HUP INT
        while :; do
            rc=0
            wait "$mon" || rc=$?
            kill -0 "$mon" 2>/dev/null || break
        done
        trap - TERM HUP INT
        [ "$rc" -eq 75 ] || break
        cp "$run/serial.log" "$run/serial-stalled-$attempt.log"
        if [ "$attempt" -eq 1 ]; then
            say "the boot stalled before dom0's /init (serial log kept as serial-stalled-1.log); booting again"
        else
            say "the boot stalled twice; giving up"; rc=1
        fi
    done
    rm -f "$run/initrd"
    # Disk images above 64 MiB (benchmark disks) are not kept: runs/ would fill the disk.
    find "$run" -maxdepth 1 -name 'nvme*.img' -size +65536k -delete
    find "$run" -maxdepth 1 -name 'nvme*.img' -xtype l -delete
    say "serial log: $run/serial.log"
    return $rc
}

case ${1:-} in
    build) shift; cmd_build "$@" ;;
    host-tools) mkdir -p "$CACHE"; ensure_host_tools ;;
    run) shift; cmd_run "$@" ;;
    *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
