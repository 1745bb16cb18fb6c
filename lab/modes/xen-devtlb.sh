#!/bin/sh
# MODE xen's iommu-devtlb test (sourced by xen.sh after iommu-reattach/iommu-dma;
# uses its op, field and dump_line). The run's QEMU has the "# LAB-QEMU-ATS: on"
# set-up: intel-iommu device-iotlb=on, a virtio-rng-pci with ATS (ats=on) at
# 0000:01:00.0 behind a PCIe root port, Xen booted with "ats=1".
#
#  iommu-devtlb  Ferrite's Xen: a device-TLB invalidation does not keep a hypercall
#                waiting for the device, and what it covers is held until it
#                completed. dom0 lets go of 01:00.0 (no Linux driver binds it in
#                the lab; one that did is unbound and bound again), takes a page of
#                its own, allocates a context, maps the page, reattaches the device
#                to the context (Xen's context entry: the core's table, translation
#                type 1 = device-TLB enabled), one call lets the move's whole-device
#                invalidation complete; then it unmaps the page: the call returns
#                (0, unmapped=1) with the device-TLB invalidation posted to the unit
#                and not yet seen complete (the unit's line: posted +1, in-flight=1),
#                the page still referenced (the core's refs unchanged, held for
#                invalidation >= 1); after the next call (noop) the unit wrote the
#                status dword (completed +1, in-flight=0) and the page is given back
#                (refs -1, nothing held). Back to context 0, the context freed, the
#                page returned: the core's totals as before the test. Debian: SKIP
DEVTLB_DEV=0000:01:00.0

# "KEY=N" from a dump line ($2): N.
devtlb_kv() { echo " $2" | sed -n "s/.* $1=\([0-9]*\).*/\1/p"; }

# Debug key F, then the core's totals and the unit's device-TLB line.
devtlb_dump() {
    core_dump
    DT_TOTAL=$(dump_line "total: ")
    DT_UNIT=$(dump_line "unit: device-TLB ")
}

devtlb_test() {
    if [ "$KIND" != ferrite ]; then
        lab_skip iommu-devtlb "stock Xen: no PV-IOMMU"
        return
    fi
    local why="" drv="" pages mfn ctx entry t0 u0 t1 u1 t2 u2 t3 e_unmap unmapped
    if [ ! -e /sys/bus/pci/devices/$DEVTLB_DEV ]; then
        lab_fail iommu-devtlb "no $DEVTLB_DEV in dom0 (the ATS device of LAB-QEMU-ATS)"
        return
    fi
    drv=$(basename "$(readlink /sys/bus/pci/devices/$DEVTLB_DEV/driver 2>/dev/null)" 2>/dev/null)
    [ -n "$drv" ] && echo $DEVTLB_DEV >/sys/bus/pci/drivers/$drv/unbind
    devtlb_dump
    t0=$DT_TOTAL
    lab_info "devtlb: $DEVTLB_DEV (Linux driver: ${drv:-none}); before: $t0"
    pages=$(labtool own-pages 1 | grep '^LAB-PAGES')
    mfn=$(echo "$pages" | sed -n 's/.* mfns=\([0-9a-fx]*\).*/\1/p')
    op 3; ctx=$(field ctx)
    if [ -z "$mfn" ] || [ "$ERR" != OK ]; then
        lab_fail iommu-devtlb "no page ($pages) or no context ($OUT)"
        [ -n "$mfn" ] && labtool release-pages $mfn >/dev/null
        [ -n "$drv" ] && echo $DEVTLB_DEV >/sys/bus/pci/drivers/$drv/bind
        return
    fi
    op 6 ctx=$ctx gfn=$mfn dfn=0x100 flags=3 nr=1
    [ "$ERR" = OK ] && [ "$(field mapped)" = 1 ] || why="$why map: $OUT;"
    op 5 ctx=$ctx dev=$DEVTLB_DEV
    [ "$ERR" = OK ] || why="$why reattach to ctx $ctx: $OUT;"
    # The move's own whole-device invalidation completes on this call.
    op 0
    devtlb_dump
    entry=$(dump_line "unit: $DEVTLB_DEV ")
    t1=$DT_TOTAL u0=$DT_UNIT
    lab_info "devtlb: in the context: $entry"
    lab_info "devtlb: mapped: $t1; $u0"
    case "$entry" in *"present=1 tt=1 "*": the core's table") ;; *) why="$why Xen's entry: '${entry:-none}' (want present=1 tt=1 on the core's table);" ;; esac
    # The unmap: the device-TLB invalidation is posted, the call returns.
    op 7 ctx=$ctx dfn=0x100 nr=1; e_unmap=$ERR; unmapped=$(field unmapped)
    devtlb_dump
    t2=$DT_TOTAL u1=$DT_UNIT
    lab_info "devtlb: right after the unmap: $t2; $u1"
    [ "$e_unmap" = OK ] && [ "$unmapped" = 1 ] || why="$why unmap: $e_unmap unmapped=$unmapped;"
    [ "$(devtlb_kv posted "$u1")" = $(( $(devtlb_kv posted "$u0") + 1 )) ] || why="$why no device-TLB invalidation posted by the unmap ('$u0' -> '$u1');"
    [ "$(devtlb_kv in-flight "$u1")" = 1 ] || why="$why not in flight after the unmap returned: '$u1';"
    [ "$(devtlb_kv refs "$t2")" = "$(devtlb_kv refs "$t1")" ] || why="$why the unmap call itself gave the page back (refs $(devtlb_kv refs "$t1") -> $(devtlb_kv refs "$t2")): it waited for the device, or did not wait for the invalidation at all;"
    [ "$(devtlb_kv held-for-invalidation "$t2")" -ge 1 ] 2>/dev/null || why="$why nothing held for invalidation after the unmap: '$t2';"
    # The next call sees the unit's status write and releases the page.
    op 0
    devtlb_dump
    t3=$DT_TOTAL u2=$DT_UNIT
    lab_info "devtlb: after one more call: $t3; $u2"
    [ "$(devtlb_kv completed "$u2")" = $(( $(devtlb_kv completed "$u1") + 1 )) ] && [ "$(devtlb_kv in-flight "$u2")" = 0 ] \
        || why="$why the unit's status write not seen ('$u1' -> '$u2');"
    [ "$(devtlb_kv refs "$t3")" = $(( $(devtlb_kv refs "$t2") - 1 )) ] || why="$why the page not given back after the invalidation completed ('$t3');"
    [ "$(devtlb_kv held-for-invalidation "$t3")" = 0 ] || why="$why still held: '$t3';"
    # Back to Xen's mapping, the context freed, the page returned.
    op 5 ctx=0 dev=$DEVTLB_DEV
    [ "$ERR" = OK ] || why="$why reattach to ctx 0: $OUT;"
    op 0
    op 4 ctx=$ctx flags=0
    [ "$ERR" = OK ] || why="$why free: $OUT;"
    op 0
    lab_info "$(labtool release-pages $mfn | grep '^LAB-PAGES')"
    [ -n "$drv" ] && echo $DEVTLB_DEV >/sys/bus/pci/drivers/$drv/bind
    devtlb_dump
    lab_info "devtlb: after: $DT_TOTAL; $DT_UNIT"
    [ "$DT_TOTAL" = "$t0" ] || why="$why the core's totals changed: '$t0' -> '$DT_TOTAL';"
    case "$DT_UNIT" in *" in-flight=0 "*" refused=0 aborted=0 "*) ;; *) why="$why unit after: '$DT_UNIT';" ;; esac
    if [ -z "$why" ]; then
        lab_pass iommu-devtlb "$DEVTLB_DEV (ATS) in context $ctx with translation type device-TLB; the unmap returned with its device-TLB invalidation posted and in flight, the page still held (${t2#total: }); the next call saw the unit's status write and gave it back (${t3#total: }); totals as before"
    else
        lab_fail iommu-devtlb "$why"
        xl dmesg | grep -a 'ferrite-iommu\|VT-D\|DMAR\|ATS' | tail -n 12 | sed 's/^/LAB-INFO   | /'
    fi
}
