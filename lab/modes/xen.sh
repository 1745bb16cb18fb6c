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
#  ferrite-ready   Ferrite (the product) under this Xen, its NVMe (00:04.0, pci=) passed
#                  through. Ferrite's Xen: Ferrite finds PV-IOMMU (the glue serves a domU
#                  with a PCI device under the core's domU rules), gives the NVMe a context
#                  of its own (IOVA = machine address; only its queues and DMA buffers, and
#                  guests' granted pages while mapped), reattaches it and serves from it:
#                  dma=pv-iommu, data/ferrite/iommu names the context, the core's dump shows
#                  it Paged with mapped > 0 and devs=[00:04.0], Xen's context entry for
#                  00:04.0 on the core's table, NVMe check passed. Debian: machine-frames
#                  (hypercall 43: ENOSYS)
#  nic-context     Ferrite's Xen: Ferrite's NIC (virtio-net 00:0a.0, pci= with the NVMe,
#                  extra metrics=dhcp) in a context of its own too: data/ferrite/iommu
#                  lists it with pages mapped and no guest grants, the core's dump shows
#                  a context of Ferrite's domain holding it, DHCP works through it (rx and
#                  tx packets, a lease), no VT-d fault for 00:0a.0. Debian: SKIP
#  guest-disk      a Linux guest's filesystem check on the NVMe Ferrite serves; Ferrite's
#                  Xen: while the guest is connected the context still holds 00:04.0 with
#                  pages mapped, no VT-d fault for 00:04.0 in xl dmesg during the run,
#                  no map of Ferrite's refused (status iommu-refused=0); once the guest is gone
#                  (Ferrite's status vbds=0) the context maps fewer pages than while it was
#                  connected; the core's pages in all of Ferrite's contexts equal Ferrite's
#                  own count (status iommu-pages=)
#  iommu-dump      Ferrite's Xen: debug key 'F' (xl debug-keys F) dumps the core into xl
#                  dmesg: dom0 with its limits (64 contexts, 4096 table pages), its
#                  default context only, no page reference held; Ferrite's domain under the
#                  domU limits (16 contexts, 1024 table pages) with one context per device.
#                  Debian: no such dump
#  iommu-cycles    Ferrite's Xen: xl destroy ferrite releases its context (the core's
#                  totals back to dom0's default context only, nothing held or waiting for
#                  an invalidation, no Xen pseudo domain id, 00:04.0 back on Xen's
#                  mapping); then 10 cycles of xl create (NVMe in its own context, checked
#                  as in ferrite-ready) and xl destroy, the totals the same after each one.
#                  Ferrite is created once more for the tests below. Debian: SKIP
#  shutdown        xl shutdown of Ferrite; Ferrite's Xen: the core's totals back to dom0's
#                  default context only, nothing held
#  panic-contained Ferrite's Xen only, after Ferrite is gone (a poisoned core releases
#                  nothing more, so a domain whose pages its contexts reference would
#                  stay a zombie): the lab-only sub-op 0xfe7e0001 panics in Rust; the
#                  call fails with EIO, Xen keeps running (xl info, xl list), and later
#                  calls answer ENODEV (interface disabled). Debian: ENOSYS
#  xen-alive       xl info and xl dmesg work at the end; no Xen panic/BUG in xl dmesg
#  iommu-domu-policy  Ferrite's Xen: hypercall 43 from a real Linux PV domU with a device
#                  (00:05.0) under the driver-domain policy: others' frames EPERM, others'
#                  devices ENOENT, remote_cmd EPERM, 16 contexts then ENOSPC, each refusal
#                  changing nothing; its own frame and device succeed; xl destroy leaves
#                  nothing held; a domU without a device gets ENODEV
#                  (lab/modes/xen-policy.sh). Debian: SKIP
# LAB-EXPECT: xen-boot iommu-caps iommu-noop iommu-unknown iommu-init iommu-badarg iommu-reattach iommu-dma iommu-devtlb ferrite-ready nic-context guest-disk iommu-domu-policy iommu-dump iommu-cycles shutdown panic-contained xen-alive
# A second controller (00:05.0) for iommu-reattach: dom0's, used by nothing else.
# LAB-QEMU-NVME: 64M 16M
# A NIC for Ferrite (00:0a.0, user-mode network with DHCP): its own context too.
# LAB-QEMU-NIC: user
# An ATS device (virtio-rng behind a root port, 01:00.0) for iommu-devtlb.
# LAB-QEMU-ATS: on
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
# Debug key F: the core's dump into xl dmesg (read with dump_line).
core_dump() { xl debug-keys F >/dev/null 2>&1; sleep 0.5; }
# vtd_faults SBDF: VT-d fault lines Xen logged for that device so far.
vtd_faults() { xl dmesg | grep -aiE 'DMAR|VT-D' | grep -aiE 'fault' | grep -ac "${1#0000:}"; }
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
    core_dump
    dctx=$(dump_line "d0 ctx$ctx ")
    unit=$(dump_line "unit: $DEV2 ")
    lab_info "in the context: $dctx"
    lab_info "in the context: $unit"
    # DMA through the context: Identify into the mapped page, then into the
    # read-only page and an unmapped IOVA (both must fault, the page unchanged).
    f0=$(vtd_faults $DEV2)
    nv=$(labtool nvme-identify $DEV2 SQ=0x100000:$1 CQ=0x101000:$2 DATA=0x102000:$3 DATA=0x103000:$4 DATA=0x200000 2>&1)
    echo "$nv" | grep '^LAB-NVME' | sed 's/^/LAB-INFO /'
    sleep 0.5
    f1=$(vtd_faults $DEV2)
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
    core_dump
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
. /lab/modes/xen-devtlb.sh; devtlb_test

# ---- Ferrite (the product) under this hypervisor
NIC=$(awk 'NR == 1 { print $2 }' /lab/nics.txt 2>/dev/null)
for p in $PCI $NIC; do
    if xl pci-assignable-add $p >/tmp/pci.log 2>&1; then
        lab_info "$p made assignable"
    else
        lab_info "xl pci-assignable-add $p failed: $(tr '\n' ' ' </tmp/pci.log)"
    fi
done
# Ferrite with the NVMe and the NIC; DHCP on the NIC (traffic through its context).
FERRITE_PCI="pci=['$PCI'${NIC:+,'$NIC'}]"
FERRITE_EXTRA='extra="metrics=dhcp"'
# The core's totals line (debug key F), without the prefix.
core_totals() {
    core_dump
    dump_line "total: "
}
# ferrite_context DOMID: checks Ferrite's NVMe is in a context of its own
# (xenstore data/ferrite/iommu and the core's dump); sets CTX_WHY (empty: fine)
# and CTX_LINE (the dump's line for that context).
ferrite_context() {
    local d=$1 iommu ctx unit
    CTX_WHY=""
    iommu=$(xenstore-read /local/domain/$d/data/ferrite/iommu 2>/dev/null)
    ctx=$(echo "$iommu" | sed -n "s/.*ctx\([0-9]*\) $PCI pages=\([0-9]*\) +grants.*/\1/p")
    [ -n "$ctx" ] || CTX_WHY="$CTX_WHY data/ferrite/iommu '$iommu' names no context with $PCI;"
    core_dump
    CTX_LINE=$(dump_line "d$d ctx${ctx:-?} ")
    unit=$(dump_line "unit: $PCI ")
    case "$CTX_LINE" in
        *"Paged did="*" mapped="[1-9]*" devs=[$PCI]") ;;
        *) CTX_WHY="$CTX_WHY the core's dump for d$d ctx${ctx:-?}: '${CTX_LINE:-none}' (want Paged, mapped > 0, devs=[$PCI]);" ;;
    esac
    case "$unit" in *"present=1 "*": the core's table") ;; *) CTX_WHY="$CTX_WHY Xen's entry for $PCI: '${unit:-none}';" ;; esac
}
cfg=$(lab_guest_cfg)
faults0=$(vtd_faults $PCI)
domid=$(lab_create "$cfg" "$FERRITE_PCI" "$FERRITE_EXTRA") || domid=""
if [ -n "$domid" ] && lab_wait_ready "$domid" 60; then
    dma=$(xenstore-read /local/domain/$domid/data/ferrite/dma 2>/dev/null)
    nvme=$(xenstore-read /local/domain/$domid/data/ferrite/nvme 2>/dev/null)
    why=$(grep -a "DMA strategy" "$GUEST_LOG" | head -n 1 | sed 's/^.*DMA strategy //')
    lab_info "Ferrite: dma=$dma; $why"
    lab_info "Ferrite: data/ferrite/iommu = $(xenstore-read /local/domain/$domid/data/ferrite/iommu 2>/dev/null)"
    if [ "$KIND" = ferrite ]; then
        ferrite_context "$domid"
        lab_info "core: $CTX_LINE"
        case "$dma|$nvme" in pv-iommu\|pass*) ;; *) CTX_WHY="dma='$dma' nvme='$nvme' (want pv-iommu, pass);$CTX_WHY" ;; esac
        if [ -z "$CTX_WHY" ]; then
            lab_pass ferrite-ready "Ferrite (domain $domid) ready after $READY_AFTER s with its NVMe $PCI in a PV-IOMMU context of its own ($CTX_LINE; Xen's entry on the core's table); NVMe check: $nvme"
        else
            lab_fail ferrite-ready "$CTX_WHY"; lab_show "$GUEST_LOG" 20 ferrite
        fi
    else
        case "$dma|$nvme|$why" in
            machine-frames\|pass*\|*ENOSYS*)
                lab_pass ferrite-ready "Ferrite (domain $domid) ready after $READY_AFTER s; DMA machine-frames because hypercall 43 answered ENOSYS; NVMe check: $nvme" ;;
            *) lab_fail ferrite-ready "dma='$dma' nvme='$nvme' why='$why' (expected machine-frames, pass, ENOSYS)"; lab_show "$GUEST_LOG" 20 ferrite ;;
        esac
    fi
else
    lab_fail ferrite-ready "Ferrite not ready: state '${READY_STATE:-<no domain>}'"
    lab_show "$GUEST_LOG" 20 ferrite
fi

# Ferrite's NIC in a context of its own: DHCP through it (packets both ways), no fault.
nic_context_test() {
    local d=$1 iommu pages nicl end why="" nf
    iommu=$(xenstore-read /local/domain/$d/data/ferrite/iommu 2>/dev/null)
    pages=$(echo "$iommu" | tr ';' '\n' | sed -n "s/^ *ctx[0-9]* $NIC pages=\([0-9]*\)\$/\1/p")
    [ "${pages:-0}" -gt 0 ] || why="$why data/ferrite/iommu '$iommu' has no context with pages for $NIC (and none for guests' grants);"
    end=$(now_after 30)
    while :; do
        nicl=$(xenstore-read /local/domain/$d/data/ferrite/nic 2>/dev/null)
        rx=$(echo "$nicl" | sed -n 's/.* rx-packets=\([0-9]*\).*/\1/p')
        tx=$(echo "$nicl" | sed -n 's/.* tx-packets=\([0-9]*\).*/\1/p')
        [ "${rx:-0}" -gt 0 ] && [ "${tx:-0}" -gt 0 ] && [ -n "$(xenstore-read /local/domain/$d/data/ferrite/metrics 2>/dev/null)" ] && break
        past "$end" && break
        sleep 0.5
    done
    lab_info "Ferrite's NIC: $nicl; metrics at $(xenstore-read /local/domain/$d/data/ferrite/metrics 2>/dev/null)"
    [ "${rx:-0}" -gt 0 ] && [ "${tx:-0}" -gt 0 ] || why="$why no packets both ways on the NIC within 30 s: '$nicl';"
    [ -n "$(xenstore-read /local/domain/$d/data/ferrite/metrics 2>/dev/null)" ] || why="$why no DHCP lease (data/ferrite/metrics absent);"
    case "$nicl" in *" device-errors=0"*) ;; *) why="$why NIC errors: '$nicl';" ;; esac
    nf=$(vtd_faults $NIC)
    [ "$nf" -eq 0 ] || why="$why $nf VT-d fault line(s) for $NIC;"
    core_dump
    local line; line=$(dump_line "d$d ctx[0-9]* Paged did=[0-9]* mapped=[0-9]* devs=\[$NIC\]")
    [ -n "$line" ] || why="$why the core's dump shows no context of d$d holding $NIC;"
    if [ -z "$why" ]; then
        lab_pass nic-context "Ferrite's NIC $NIC in a PV-IOMMU context of its own ($line; Ferrite maps $pages pages there: its rings and buffers, no guest grants); DHCP through it (rx-packets=$rx tx-packets=$tx), no VT-d fault"
    else
        lab_fail nic-context "$why"
    fi
}
if [ "$KIND" = ferrite ] && [ -n "$domid" ] && [ -n "$NIC" ]; then
    nic_context_test "$domid"
elif [ "$KIND" = ferrite ]; then
    lab_fail nic-context "no Ferrite or no NIC (/lab/nics.txt: '$(cat /lab/nics.txt 2>/dev/null)')"
else
    lab_skip nic-context "stock Xen: no PV-IOMMU"
fi

# One Linux guest on the disk Ferrite serves (filesystem, files, sha256); under
# Ferrite's Xen the NVMe does all of it from its own context: the guest's pages
# are reachable only while granted and mapped, and no DMA of it faults.
GLOG=/var/log/xen/console/guest-guest.log
if [ -n "$domid" ] && timeout 90 xl create /ferrite/configs/guest-linux.cfg >/tmp/xl-guest.log 2>&1; then
    wait_log "$GLOG" GUEST-DONE 180 || true
    res=$(grep -a "GUEST-RESULT fs-new" "$GLOG" 2>/dev/null | head -n 1 | sed 's/^.*GUEST-RESULT fs-new //')
    gwhy=""
    case "$res" in PASS*) ;; *) gwhy="guest result '${res:-<none within 180 s>}';" ;; esac
    if [ "$KIND" = ferrite ]; then
        # While the guest is connected its persistent grants are mapped.
        ferrite_context "$domid"
        lab_info "core, guest connected: $CTX_LINE"
        nf=$(( $(vtd_faults $PCI) - faults0 ))
        [ "$nf" -eq 0 ] || gwhy="$gwhy $nf VT-d fault line(s) for $PCI in xl dmesg;"
        gwhy="$gwhy$CTX_WHY"
    fi
    xl destroy guest >/dev/null 2>&1
    if [ "$KIND" = ferrite ]; then
        # Gone with the guest: its granted pages leave the NVMe's context (Ferrite's
        # own count and the core's agree, and are below what the guest had mapped).
        connected=$(echo "$CTX_LINE" | sed -n 's/.* mapped=\([0-9]*\) .*/\1/p')
        end=$(now_after 20)
        while :; do
            st=$(xenstore-read /local/domain/$domid/data/ferrite/status 2>/dev/null)
            case "$st" in "vbds=0 "*) break ;; esac
            past "$end" && break
            sleep 0.5
        done
        ferrite_context "$domid"
        mine=$(echo "$st" | sed -n 's/.* iommu-pages=\([0-9]*\) .*/\1/p')
        now=$(echo "$CTX_LINE" | sed -n 's/.* mapped=\([0-9]*\) .*/\1/p')
        # Ferrite counts the pages of all its contexts: the core's lines for each.
        all=0
        for c in $(xenstore-read /local/domain/$domid/data/ferrite/iommu 2>/dev/null | grep -o 'ctx[0-9]*' | sed 's/ctx//'); do
            m=$(dump_line "d$domid ctx$c " | sed -n 's/.* mapped=\([0-9]*\) .*/\1/p')
            all=$((all + ${m:-0}))
        done
        lab_info "core, guest gone: $CTX_LINE (all of Ferrite's contexts: $all pages); Ferrite: $st"
        case "$st" in "vbds=0 "*) ;; *) gwhy="$gwhy Ferrite still has vbds 20 s after the guest went: '$st';" ;; esac
        case "$st" in *" iommu-refused=0 "*) ;; *) gwhy="$gwhy the hypervisor refused some of Ferrite's maps: '$st';" ;; esac
        [ -n "$mine" ] && [ "$all" = "$mine" ] || gwhy="$gwhy the core maps $all pages in Ferrite's contexts, Ferrite counts ${mine:-?};"
        [ -n "$now" ] && [ -n "$connected" ] && [ "$now" -lt "$connected" ] || gwhy="$gwhy mapped ${now:-?} after the guest went (was ${connected:-?} while connected);"
    fi
    if [ -z "$gwhy" ]; then
        lab_pass guest-disk "a Linux guest's filesystem on Ferrite's NVMe under this Xen: ${res#PASS }${connected:+; NVMe context: mapped=$connected while the guest was connected, $now once it was gone; $all in all of Ferrite's contexts by the core's count and by Ferrite's; no VT-d fault for $PCI}"
    else
        lab_fail guest-disk "$gwhy"; lab_show "$GLOG" 20 guest; lab_show "$GUEST_LOG" 20 ferrite
    fi
else
    lab_fail guest-disk "no guest: $(tr '\n' ' ' </tmp/xl-guest.log 2>/dev/null)"
fi

. /lab/modes/xen-policy.sh; policy_test

# ---- the core's state through debug key 'F' (read from xl dmesg): dom0 back to its
# default context after iommu-reattach; Ferrite (a domU) under the domU limits.
core_dump
d0=$(xl dmesg | grep -a 'ferrite-iommu: d0:' | tail -n 1)
dF=$(xl dmesg | grep -a "ferrite-iommu: d${domid:-x}:" | tail -n 1)
# Its default context and one per device (the NVMe, and the NIC if any).
FERRITE_CTXS=$((2 + $([ -n "$NIC" ] && echo 1 || echo 0)))
if [ "$KIND" = ferrite ]; then
    lab_info "xl dmesg: ${d0:-<no d0 line>}"
    lab_info "xl dmesg: ${dF:-<no line for Ferrite's domain>}"
    case "$d0|$dF" in
        *"d0: limits ctx=64 pages=4096; contexts=1 dids=1 "*"refs=0"*"|"*"d$domid: limits ctx=16 pages=1024; contexts=$FERRITE_CTXS dids=$FERRITE_CTXS "*)
            lab_pass iommu-dump "debug key F: dom0 under its limits with its default context only and no reference held; Ferrite's domain under the domU limits with a context of its own per device: ${dF#*ferrite-iommu: }" ;;
        *) lab_fail iommu-dump "d0 line '${d0:-none}', Ferrite's line '${dF:-none}'" ;;
    esac
else
    [ -z "$d0" ] && lab_pass iommu-dump "stock Xen: no PV-IOMMU dump" || lab_fail iommu-dump "stock Xen printed '$d0'"
fi

# ---- xl destroy releases Ferrite's contexts; 10 create/destroy cycles leak nothing
cycles_test() {
    local base t i d why="" tot unit
    xl destroy ferrite >/dev/null 2>&1
    sleep 1
    base=$(core_totals)
    lab_info "core after xl destroy ferrite: $base"
    case "$base" in
        "total: contexts=1 dids=1 table-pages=1 refs=0 held-for-invalidation=0 to-release=0 leaked-behind-broken=0") ;;
        *) why="$why after the first destroy: '$base' (want dom0's default context only, nothing held);" ;;
    esac
    unit=$(dump_line "unit: devices")
    case "$unit" in *"devices in core contexts=0 hardware domain ids=0 failures=0"*) ;; *) why="$why $unit;" ;; esac
    i=1
    while [ $i -le 10 ] && [ -z "$why" ]; do
        d=$(lab_create "$cfg" "$FERRITE_PCI" "$FERRITE_EXTRA") || { why="$why cycle $i: xl create failed;"; break; }
        if ! lab_wait_ready "$d" 60; then why="$why cycle $i: Ferrite not ready ('$READY_STATE');"; break; fi
        ferrite_context "$d"
        [ -z "$CTX_WHY" ] || { why="$why cycle $i (domain $d):$CTX_WHY"; break; }
        xl destroy ferrite >/dev/null 2>&1
        sleep 0.5
        t=$(core_totals)
        unit=$(dump_line "unit: devices")
        [ "$t" = "$base" ] || why="$why cycle $i: totals '$t' (want '$base');"
        case "$unit" in *"devices in core contexts=0 hardware domain ids=0 failures=0"*) ;; *) why="$why cycle $i: $unit;" ;; esac
        lab_info "cycle $i: domain $d ($CTX_LINE) destroyed; $t"
        i=$((i + 1))
    done
    if [ -z "$why" ]; then
        lab_pass iommu-cycles "xl destroy ferrite gave its NVMe context back (and $PCI to Xen's mapping); 10 create/destroy cycles, each with the NVMe in its own context, ended with the core's totals as before ($base) and no Xen domain id held"
    else
        lab_fail iommu-cycles "$why"
    fi
    # Ferrite again for the tests below.
    domid=$(lab_create "$cfg" "$FERRITE_PCI" "$FERRITE_EXTRA") && lab_wait_ready "$domid" 60 || lab_info "Ferrite not created again"
}
if [ "$KIND" = ferrite ] && [ -n "$domid" ]; then
    cycles_test
else
    lab_skip iommu-cycles "stock Xen: no PV-IOMMU"
fi

# With the NIC passed through, libxl's teardown of the devices after the domain
# shut down takes 10-20 s under TCG (Debian's Xen too: MODE net).
lab_shutdown 60 60
after=""
if [ "$KIND" = ferrite ]; then
    sleep 0.5
    after=$(core_totals)
    case "$after" in
        "total: contexts=1 dids=1 table-pages=1 refs=0 held-for-invalidation=0 to-release=0 "*) ;;
        *) SHUTDOWN_GONE="$SHUTDOWN_GONE; the core still holds something: '$after'" ;;
    esac
fi
if [ $SHUTDOWN_RC -eq 0 ] && [ "$SHUTDOWN_GONE" = yes ]; then
    lab_pass shutdown "xl shutdown -w took $SHUTDOWN_AFTER s, the domain was gone after $SHUTDOWN_GONE_AFTER s${after:+; the core after it: $after}"
else
    lab_fail shutdown "xl shutdown -w status $SHUTDOWN_RC after $SHUTDOWN_AFTER s; gone: $SHUTDOWN_GONE"
fi

# ---- a panic in the Rust core fails one hypercall, not the host. Last, after
# Ferrite is gone: a poisoned core no longer releases anything, so a domain
# whose pages its contexts still reference could not be destroyed.
if [ "$KIND" = ferrite ]; then
    op 0xfe7e0001; e1=$ERR
    alive=no; xl info >/dev/null 2>&1 && xl list >/dev/null 2>&1 && alive=yes
    op 1; e2=$ERR
    pl=$(xl dmesg | grep -a 'PANIC in the Rust core' | tail -n 1)
    lab_info "xl dmesg: ${pl:-<no panic line>}"
    if [ "$e1" = EIO ] && [ $alive = yes ] && [ "$e2" = ENODEV ] && [ -n "$pl" ]; then
        lab_pass panic-contained "a Rust panic failed its hypercall with EIO; Xen kept running (xl info, xl list); later calls get ENODEV (interface disabled)"
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

