#!/bin/sh
# MODE xen: the hypervisor the lab booted (LAB_XEN=ferrite: the project's Xen,
# lab/xen-build.sh; default: Debian's) and hypercall 43 (PV-IOMMU).
# /lab/xen-kind says which one lab.sh booted: "ferrite" or "debian".
#  xen-boot        the expected hypervisor runs (xl info: version; Ferrite's: the
#                  Rust core's start-up line in xl dmesg after the first call)
#  iommu-caps      query_capabilities from dom0 (labtool iommu-op 1 through privcmd):
#                  Ferrite's Xen answers from the Rust core (cap_flags 0x1 =
#                  default_identity; identity contexts are off until Xen lists a
#                  domain's pages to the core; 4 KiB pages, max IOVA from the VT-d
#                  unit's address width, 0 contexts before init); Debian's: ENOSYS
#  iommu-noop      noop: 0 (Debian: ENOSYS)
#  iommu-unknown   sub-ops 13 and 0xffffffff: EOPNOTSUPP from the core (Debian: ENOSYS)
#  iommu-init      init (8 contexts, 2^6 table pages) reaches the core's policy (0, then
#                  -EACCES for a second init);
#                  reattach_device with a zeroed argument reaches the core: 0000:00:00.0
#                  (dom0's) to its default context, where it already is: 0 (Debian: ENOSYS)
#  iommu-badarg    query_capabilities with a hostile argument pointer (unmapped 0x10,
#                  Xen's direct map 0xffff830000000000): EFAULT, and Xen keeps running
#                  (Debian: ENOSYS)
#  iommu-reattach  Ferrite's Xen: a device in one of the core's contexts and back. dom0
#                  writes 1 MiB of random data to the second NVMe (00:05.0, its own, not
#                  used by anything else), unbinds Linux's driver from it, takes 4 new
#                  pages of its own (labtool own-pages), allocates a context, maps them
#                  (2 writable, 2 read-only),
#                  reattaches 00:05.0 to it; debug key F then shows the context with the
#                  device and mapped=4, and Xen's context entry for 00:05.0 pointing at
#                  the core's table; the host bridge 00:00.0 is refused (EOPNOTSUPP), a
#                  free of the busy context EBUSY; one page is unmapped (an IOTLB flush
#                  through Xen); reattach to context 0 gives the device back to Xen's
#                  mapping (the dump shows no device in a core context), the context is
#                  freed and the pages returned; Linux's nvme driver (unbound for the
#                  test) is bound again and reads the 1 MiB back with O_DIRECT: the same
#                  sha256. Debian: SKIP (no PV-IOMMU)
#  iommu-dma       the same context, DMA through it: labtool drives 00:05.0 from dom0
#                  (admin queues at IOVAs 0x100000/0x101000 of the context): Identify
#                  into IOVA 0x102000 lands in the mapped page (serial ferrite-nvme1);
#                  into the read-only 0x103000 and the unmapped 0x200000 the unit blocks
#                  the writes: the read-only page unchanged, and Xen logs a VT-d fault
#                  for 00:05.0 at each address (QEMU's NVMe still completes those
#                  commands with status 0); the core's dump counts the faults
#                  (Xen's fault handler hands each to it) and names the last one:
#                  00:05.0, write, one of the two addresses. Debian: SKIP
#  ferrite-ready   Ferrite (the product) under this Xen: ready, DMA strategy
#                  machine-frames (PV-IOMMU not enabled for a domU: ENODEV from the
#                  glue, so Ferrite keeps its NVMe on machine frames; Debian: ENOSYS),
#                  its NVMe check passed
#  guest-disk      a Linux guest's filesystem check on the NVMe Ferrite serves
#  iommu-dump      Ferrite's Xen: debug key 'F' (xl debug-keys F) dumps the core into xl
#                  dmesg: dom0 with its limits (64 contexts, 4096 table pages), its
#                  default context only, no page reference held, and the totals.
#                  Debian: no such dump
#  panic-contained Ferrite's Xen only: the lab-only sub-op 0xfe7e0001 panics in Rust;
#                  the call fails with EIO, Xen keeps running (xl info, xl list),
#                  and later calls answer ENODEV (interface disabled). Debian: ENOSYS
#  xen-alive       xl info and xl dmesg work at the end; no Xen panic/BUG in xl dmesg
#  shutdown        xl shutdown of Ferrite
# LAB-EXPECT: xen-boot iommu-caps iommu-noop iommu-unknown iommu-init iommu-badarg iommu-reattach iommu-dma ferrite-ready guest-disk iommu-domu-policy iommu-dump panic-contained xen-alive shutdown
# A second controller (00:05.0) for iommu-reattach: dom0's, used by nothing else.
# LAB-QEMU-NVME: 64M 16M
. /lab/common.sh
KIND=$(cat /lab/xen-kind 2>/dev/null || echo debian)
PCI=0000:00:04.0
lab_info "hypervisor booted: $KIND"

# labtool's answer for one sub-op: the whole LAB-IOMMU line in $OUT, errno name in $ERR.
op() {
    OUT=$(labtool iommu-op "$@" 2>&1 | grep '^LAB-IOMMU' | head -n 1)
    echo "$OUT" | sed 's/^LAB-IOMMU/LAB-INFO iommu-op/'
    ERR=$(echo "$OUT" | sed -n 's/.* errno=\([A-Z?]*\).*/\1/p')
}
field() { echo "$OUT" | sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

# ---- the hypervisor
info=$(xl info 2>&1)
ver="$(echo "$info" | awk -F': ' '/^xen_major/ {a=$2} /^xen_minor/ {b=$2} /^xen_extra/ {c=$2} END {print a "." b c}')"
lab_info "xl info: xen $ver; $(echo "$info" | grep -E '^(xen_caps|virt_caps)' | tr -s ' ' | tr '\n' ';')"
case "$KIND:$ver" in
    ferrite:4.17.5*) boot_ok=yes ;;
    debian:4.17.*) boot_ok=yes ;;
    *) boot_ok=no ;;
esac

# ---- hypercall 43 from dom0
op 1
if [ "$KIND" = ferrite ]; then
    # The Rust core's start-up line (printed on the first call) names the unit's width.
    sleep 0.5
    core=$(xl dmesg | grep -a 'ferrite-iommu: Rust core up' | tail -n 1)
    lab_info "xl dmesg: ${core:-<no ferrite-iommu start-up line>}"
    bits=$(echo "$core" | sed -n 's/.*(\([0-9]*\)-bit.*/\1/p')
    case $bits in 39) want_iova=0x7fffffffff ;; 48) want_iova=0xffffffffffff ;; *) want_iova=unknown ;; esac
    if [ "$boot_ok" = yes ] && [ -n "$core" ]; then
        lab_pass xen-boot "the project's Xen $ver is running and its Rust core started: ${core#*ferrite-iommu: }"
    else
        lab_fail xen-boot "expected Ferrite's Xen 4.17.5 with the Rust core; xl info says $ver; core line '${core:-none}'"
    fi
    if [ "$ERR" = OK ] && [ "$(field cap_flags)" = 0x1 ] && [ "$(field pgsize_mask)" = 0x1000 ] \
        && [ "$(field max_iova)" = "$want_iova" ] && [ "$(field max_pasid)" = 0 ] && [ "$(field max_ctx_no)" = 0 ]; then
        lab_pass iommu-caps "hypercall 43 query_capabilities answered by the Rust core: ${OUT#*errno=OK }"
    else
        lab_fail iommu-caps "got '$OUT'; expected rc=0 max_iova=$want_iova cap_flags=0x1 pgsize_mask=0x1000 max_pasid=0 max_ctx_no=0"
    fi
    op 0
    [ "$ERR" = OK ] && lab_pass iommu-noop "noop: 0" || lab_fail iommu-noop "noop: '$OUT'"
    op 13; e1=$ERR; op 0xffffffff; e2=$ERR
    [ "$e1" = EOPNOTSUPP ] && [ "$e2" = EOPNOTSUPP ] && lab_pass iommu-unknown "sub-ops 13 and 0xffffffff: EOPNOTSUPP" \
        || lab_fail iommu-unknown "sub-op 13: $e1, 0xffffffff: $e2 (expected EOPNOTSUPP)"
    op 5; e1=$ERR; op 2 max_ctx=8 order=6; e2=$ERR; op 2 max_ctx=8 order=6; r3=$(field rc)
    [ "$e1" = OK ] && [ "$e2" = OK ] && [ "$r3" = -13 ] \
        && lab_pass iommu-init "init (8 contexts, 64 table pages) reaches the core's policy: OK, then -EACCES; reattach_device (zeroed: 0000:00:00.0 to context 0, where it is): OK" \
        || lab_fail iommu-init "reattach_device: $e1 (want OK); init: $e2 (want OK); second init rc $r3 (want -13)"
    op 1 0x10; e1=$ERR; op 1 0xffff830000000000; e2=$ERR
    if [ "$e1" = EFAULT ] && [ "$e2" = EFAULT ] && xl info >/dev/null 2>&1; then
        lab_pass iommu-badarg "argument at 0x10: EFAULT, at Xen's 0xffff830000000000: EFAULT; xl info still works"
    else
        lab_fail iommu-badarg "argument at 0x10: $e1, at 0xffff830000000000: $e2 (expected EFAULT)"
    fi
else
    [ "$boot_ok" = yes ] && lab_pass xen-boot "Debian's Xen $ver is running" || lab_fail xen-boot "xl info says '$ver'"
    [ "$ERR" = ENOSYS ] && lab_pass iommu-caps "stock Xen: query_capabilities gets ENOSYS (no PV-IOMMU)" || lab_fail iommu-caps "stock Xen: '$OUT' (expected ENOSYS)"
    for t in "iommu-noop 0" "iommu-unknown 13" "iommu-init 2" "iommu-badarg 1 0x10"; do
        set -- $t
        name=$1; shift
        op "$@"
        [ "$ERR" = ENOSYS ] && lab_pass "$name" "stock Xen: iommu-op $* gets ENOSYS" || lab_fail "$name" "stock Xen: '$OUT' (expected ENOSYS)"
    done
fi

# ---- a device in one of the core's contexts, and back (Ferrite's Xen)
DEV2=0000:00:05.0
# The debug key's newest line containing $1 (after the dump just taken).
dump_line() { xl dmesg | grep -a "ferrite-iommu: $1" | tail -n 1 | sed 's/^.*ferrite-iommu: //'; }
# VT-d fault lines Xen logged for 00:05.0 so far.
dma_faults() { xl dmesg | grep -aiE 'DMAR|VT-D' | grep -aiE 'fault' | grep -ac '00:05.0'; }
# dom0's block device of $DEV2's first namespace (waits up to $1 s for it).
nvme_blk() {
    local end=$(now_after "${1:-0}") b
    while :; do
        b=$(ls /sys/bus/pci/devices/$DEV2/nvme/*/ 2>/dev/null | grep -m1 '^nvme[0-9]*n1$')
        [ -n "$b" ] && [ -e /dev/$b ] && { echo "$b"; return 0; }
        past "$end" && return 1
        sleep 0.5
    done
}
reattach_test() {
    local blk want got pages mfns ctx i fl e_host e_busy e_unmap dctx unit back unit2 f0 f1 nv why="" dwhy=""
    blk=$(nvme_blk 10) || { lab_fail iommu-reattach "no NVMe namespace of $DEV2 in dom0"; lab_fail iommu-dma "no device"; return; }
    dd if=/dev/urandom of=/tmp/rand.bin bs=64k count=16 2>/dev/null
    dd if=/tmp/rand.bin of=/dev/$blk bs=64k oflag=direct 2>/dev/null && sync
    want=$(sha256sum </tmp/rand.bin | cut -c1-64)
    # Linux lets go of the controller; labtool drives it below.
    echo $DEV2 >/sys/bus/pci/drivers/nvme/unbind
    pages=$(labtool own-pages 4 | grep '^LAB-PAGES')
    lab_info "dom0's NVMe $DEV2 (was /dev/$blk, unbound); $pages"
    mfns=$(echo "$pages" | sed -n 's/.* mfns=\([0-9a-fx,]*\).*/\1/p' | tr ',' ' ')
    if [ "$(echo $mfns | wc -w)" != 4 ]; then
        lab_fail iommu-reattach "no pages: $pages"; lab_fail iommu-dma "no pages"
        [ -n "$mfns" ] && labtool release-pages $mfns >/dev/null
        echo $DEV2 >/sys/bus/pci/drivers/nvme/bind
        return
    fi
    set -- $mfns
    op 3; ctx=$(field ctx)
    if [ "$ERR" != OK ]; then
        lab_fail iommu-reattach "alloc_context: $OUT"; lab_fail iommu-dma "no context"
        labtool release-pages $mfns >/dev/null
        echo $DEV2 >/sys/bus/pci/drivers/nvme/bind
        return
    fi
    # dfn 0x100: the submission queue (the device reads it), 0x101: the completion
    # queue, 0x102: Identify data, 0x103: a read-only page the device must not write.
    i=0
    for m in $mfns; do
        case $i in 0|3) fl=1 ;; *) fl=3 ;; esac
        op 6 ctx=$ctx gfn=$m dfn=$((0x100 + i)) flags=$fl nr=1
        [ "$ERR" = OK ] && [ "$(field mapped)" = 1 ] || why="$why map $m: $OUT;"
        i=$((i + 1))
    done
    op 5 ctx=$ctx dev=0000:00:00.0; e_host=$ERR
    op 5 ctx=$ctx dev=$DEV2
    [ "$ERR" = OK ] || why="$why reattach to ctx $ctx: $OUT;"
    op 4 ctx=$ctx flags=0; e_busy=$ERR
    xl debug-keys F >/dev/null 2>&1; sleep 0.5
    dctx=$(dump_line "d0 ctx$ctx ")
    unit=$(dump_line "unit: $DEV2 ")
    lab_info "in the context: $dctx"
    lab_info "in the context: $unit"
    # DMA through the context: Identify into the mapped page, then into the
    # read-only page and an unmapped IOVA (both must fault, the page unchanged).
    f0=$(dma_faults)
    nv=$(labtool nvme-identify $DEV2 SQ=0x100000:$1 CQ=0x101000:$2 DATA=0x102000:$3 DATA=0x103000:$4 DATA=0x200000 2>&1)
    echo "$nv" | grep '^LAB-NVME' | sed 's/^/LAB-INFO /'
    sleep 0.5
    f1=$(dma_faults)
    case "$nv" in *"cmd=1 data=0x102000 status=0 "*"page=written serial=ferrite-nvme1"*) ;; *) dwhy="$dwhy Identify into the mapped page failed;" ;; esac
    # QEMU 7.2's NVMe completes a command whose data DMA was blocked with a
    # success status: the verdict is the page and the unit's fault records.
    echo "$nv" | grep -q 'cmd=2 data=0x103000 status=[0-9].* page=unchanged' || dwhy="$dwhy the read-only page was written (or no completion);"
    echo "$nv" | grep -q 'cmd=3 data=0x200000 status=[0-9]' || dwhy="$dwhy no completion for the unmapped IOVA;"
    for a in 103000 200000; do
        xl dmesg | grep -aq "Request device \[$DEV2\] fault addr $a\$" || dwhy="$dwhy no VT-d fault for $DEV2 at $a in xl dmesg;"
    done
    [ $((f1 - f0)) -ge 2 ] || dwhy="$dwhy $((f1 - f0)) new DMA fault lines for 00:05.0 in xl dmesg (want 2 or more);"
    op 7 ctx=$ctx dfn=0x103 nr=1; e_unmap=$ERR
    op 5 ctx=0 dev=$DEV2
    [ "$ERR" = OK ] || why="$why reattach to ctx 0: $OUT;"
    op 4 ctx=$ctx flags=0
    [ "$ERR" = OK ] || why="$why free: $OUT;"
    xl debug-keys F >/dev/null 2>&1; sleep 0.5
    back=$(dump_line "d0 ctx0 ")
    unit2=$(dump_line "unit: devices")
    flt=$(dump_line "faults: ")
    lab_info "core: $flt"
    lab_info "back: $back"
    lab_info "back: $unit2"
    lab_info "$(labtool release-pages $mfns | grep '^LAB-PAGES')"
    # Linux takes the controller back (in its default context again) and reads the data.
    echo $DEV2 >/sys/bus/pci/drivers/nvme/bind
    blk=$(nvme_blk 30) || blk=none
    echo 3 >/proc/sys/vm/drop_caches
    got=$(dd if=/dev/$blk bs=64k count=16 iflag=direct 2>/dev/null | sha256sum | cut -c1-64)
    case "$dctx" in *"Paged did="*" mapped=4 devs=[$DEV2]") ;; *) why="$why dump of ctx $ctx: '$dctx';" ;; esac
    case "$unit" in *"present=1 "*": the core's table") ;; *) why="$why Xen's entry: '$unit';" ;; esac
    case "$back" in *"$DEV2"*) ;; *) why="$why not back in ctx0: '$back';" ;; esac
    case "$unit2" in *"devices in core contexts=0 hardware domain ids=0 failures=0"*) ;; *) why="$why unit after: '$unit2';" ;; esac
    [ "$e_host" = EOPNOTSUPP ] || why="$why host bridge: $e_host (want EOPNOTSUPP);"
    [ "$e_busy" = EBUSY ] || why="$why free while attached: $e_busy (want EBUSY);"
    [ "$e_unmap" = OK ] || why="$why unmap: $e_unmap;"
    [ "$got" = "$want" ] || why="$why data read back by Linux after: ${got:-none} from /dev/$blk (want $want);"
    if [ -z "$why" ]; then
        lab_pass iommu-reattach "$DEV2 in context $ctx of dom0 (4 pages mapped; Xen's context entry on the core's table), host bridge refused, busy free EBUSY, unmap flushed, back to context 0 (Xen's mapping), freed; Linux's driver rebound and read 1 MiB back intact"
    else
        lab_fail iommu-reattach "$why"
    fi
    # The core's own record of the faults (Xen's handler hands each to it).
    case "$flt" in
        "faults: total="*" last=$DEV2 write addr=0x103000 reason="*|"faults: total="*" last=$DEV2 write addr=0x200000 reason="*) ;;
        *) dwhy="$dwhy the core's fault line: '${flt:-none}' (want the last fault: $DEV2 write at 0x103000 or 0x200000);" ;;
    esac
    n=$(echo "$flt" | sed -n 's/^faults: total=\([0-9]*\).*/\1/p')
    [ "${n:-0}" -ge 2 ] || dwhy="$dwhy the core counted ${n:-0} faults (want 2 or more);"
    if [ -z "$dwhy" ]; then
        lab_pass iommu-dma "through the context: Identify landed in the mapped page (serial ferrite-nvme1); its writes to the read-only IOVA 0x103000 (page unchanged) and the unmapped 0x200000 were blocked: VT-d faults for $DEV2 at both in xl dmesg, and the core recorded them ($flt)"
    else
        lab_fail iommu-dma "$dwhy"
    fi
    [ -z "$why$dwhy" ] || xl dmesg | grep -a 'ferrite-iommu\|VT-D\|DMAR' | tail -n 12 | sed 's/^/LAB-INFO   | /'
}
if [ "$KIND" = ferrite ]; then
    reattach_test
else
    lab_skip iommu-reattach "stock Xen: no PV-IOMMU"
    lab_skip iommu-dma "stock Xen: no PV-IOMMU"
fi

# ---- Ferrite (the product) under this hypervisor
if xl pci-assignable-add $PCI >/tmp/pci.log 2>&1; then
    lab_info "NVMe $PCI made assignable"
else
    lab_info "xl pci-assignable-add $PCI failed: $(tr '\n' ' ' </tmp/pci.log)"
fi
cfg=$(lab_guest_cfg)
domid=$(lab_create "$cfg" "pci=['$PCI']") || domid=""
if [ -n "$domid" ] && lab_wait_ready "$domid" 60; then
    dma=$(xenstore-read /local/domain/$domid/data/ferrite/dma 2>/dev/null)
    nvme=$(xenstore-read /local/domain/$domid/data/ferrite/nvme 2>/dev/null)
    why=$(grep -a "DMA strategy" "$GUEST_LOG" | head -n 1 | sed 's/^.*DMA strategy //')
    lab_info "Ferrite: dma=$dma; $why"
    case $KIND in ferrite) want_why="ENODEV" ;; *) want_why="ENOSYS" ;; esac
    case "$dma|$nvme|$why" in
        machine-frames\|pass*\|*"$want_why"*)
            lab_pass ferrite-ready "Ferrite (domain $domid) ready after $READY_AFTER s; DMA machine-frames because hypercall 43 answered $want_why; NVMe check: $nvme" ;;
        *) lab_fail ferrite-ready "dma='$dma' nvme='$nvme' why='$why' (expected machine-frames, pass, $want_why)"; lab_show "$GUEST_LOG" 20 ferrite ;;
    esac
else
    lab_fail ferrite-ready "Ferrite not ready: state '${READY_STATE:-<no domain>}'"
    lab_show "$GUEST_LOG" 20 ferrite
fi

# One Linux guest on the disk Ferrite serves (filesystem, files, sha256).
GLOG=/var/log/xen/console/guest-guest.log
if [ -n "$domid" ] && timeout 90 xl create /ferrite/configs/guest-linux.cfg >/tmp/xl-guest.log 2>&1; then
    wait_log "$GLOG" GUEST-DONE 180 || true
    res=$(grep -a "GUEST-RESULT fs-new" "$GLOG" 2>/dev/null | head -n 1 | sed 's/^.*GUEST-RESULT fs-new //')
    case "$res" in
        PASS*) lab_pass guest-disk "a Linux guest's filesystem on Ferrite's NVMe under this Xen: ${res#PASS }" ;;
        *) lab_fail guest-disk "guest result '${res:-<none within 180 s>}'"; lab_show "$GLOG" 20 guest ;;
    esac
    xl destroy guest >/dev/null 2>&1
else
    lab_fail guest-disk "no guest: $(tr '\n' ' ' </tmp/xl-guest.log 2>/dev/null)"
fi

. /lab/modes/xen-policy.sh; policy_test

# ---- the core's state through debug key 'F' (read from xl dmesg)
xl debug-keys F >/dev/null 2>&1
sleep 0.5
d0=$(xl dmesg | grep -a 'ferrite-iommu: d0:' | tail -n 1)
tot=$(xl dmesg | grep -a 'ferrite-iommu: total:' | tail -n 1)
if [ "$KIND" = ferrite ]; then
    lab_info "xl dmesg: ${d0:-<no d0 line>}"
    lab_info "xl dmesg: ${tot:-<no total line>}"
    case "$d0|$tot" in
        *"d0: limits ctx=64 pages=4096; contexts=1 dids=1 "*"refs=0"*"|"*"total: contexts=1 dids=1 "*"refs=0 "*)
            lab_pass iommu-dump "debug key F: dom0 under its limits with its default context only and no reference held; ${tot#*ferrite-iommu: }" ;;
        *) lab_fail iommu-dump "d0 line '${d0:-none}', total line '${tot:-none}'" ;;
    esac
else
    [ -z "$d0$tot" ] && lab_pass iommu-dump "stock Xen: no PV-IOMMU dump" || lab_fail iommu-dump "stock Xen printed '$d0 $tot'"
fi

# ---- a panic in the Rust core fails one hypercall, not the host
if [ "$KIND" = ferrite ]; then
    op 0xfe7e0001; e1=$ERR
    alive=no; xl info >/dev/null 2>&1 && xl list ferrite >/dev/null 2>&1 && alive=yes
    op 1; e2=$ERR
    pl=$(xl dmesg | grep -a 'PANIC in the Rust core' | tail -n 1)
    lab_info "xl dmesg: ${pl:-<no panic line>}"
    if [ "$e1" = EIO ] && [ $alive = yes ] && [ "$e2" = ENODEV ] && [ -n "$pl" ]; then
        lab_pass panic-contained "a Rust panic failed its hypercall with EIO; Xen and Ferrite kept running; later calls get ENODEV (interface disabled)"
    else
        lab_fail panic-contained "panic sub-op: $e1 (want EIO); xl info/list after: $alive; next query: $e2 (want ENODEV); log: '${pl:-none}'"
    fi
else
    op 0xfe7e0001
    [ "$ERR" = ENOSYS ] && lab_pass panic-contained "stock Xen: ENOSYS" || lab_fail panic-contained "stock Xen: '$OUT'"
fi

# ---- the hypervisor is still fine
bad=$(xl dmesg 2>/dev/null | grep -aE 'Panic on CPU|FATAL|Xen BUG|Assertion' | head -n 3 | tr '\n' ' ')
if xl info >/dev/null 2>&1 && [ -z "$bad" ]; then
    lab_pass xen-alive "xl info works at the end; no Xen panic, BUG or assertion in xl dmesg"
else
    lab_fail xen-alive "xl info status $?; xl dmesg: ${bad:-<nothing>}"
fi
lab_info "xl dmesg, ferrite-iommu lines:"
xl dmesg | grep -a 'ferrite-iommu' | tail -n 8 | sed 's/^/LAB-INFO   | /'

lab_shutdown 60
if [ $SHUTDOWN_RC -eq 0 ] && [ $SHUTDOWN_GONE = yes ]; then
    lab_pass shutdown "xl shutdown -w took $SHUTDOWN_AFTER s"
else
    lab_fail shutdown "xl shutdown -w status $SHUTDOWN_RC after $SHUTDOWN_AFTER s; gone: $SHUTDOWN_GONE"
fi
