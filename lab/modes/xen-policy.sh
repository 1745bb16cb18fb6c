#!/bin/sh
# MODE xen's iommu-domu-policy test (issue 13), sourced by lab/modes/xen.sh
# (which defines KIND, op, field and lab/dom0/common.sh's helpers); it runs
# `policy_test`.
#
#  iommu-domu-policy  Ferrite's Xen: hypercall 43 from a real Linux PV domU
#       under the driver-domain policy. dom0 makes its second NVMe 00:05.0
#       assignable and starts two Linux guests (lab.role=iommu: the agent
#       lab/dom0/iommu-agent.sh runs labtool in the guest when dom0 asks
#       through xenstore): iommu-pol with pci=['0000:00:05.0'] (and maxmem
#       headroom, so it can take pages of its own), iommu-nodev without a
#       device. From iommu-nodev: query_capabilities ENODEV, and the core does
#       not register it. From iommu-pol: query_capabilities, init (asks for
#       64 contexts: clamped), alloc_context OK; mapping a frame of dom0's
#       (labtool own-pages in dom0) EPERM and nothing mapped (the core's dump:
#       mapped=0, refs unchanged); reattach of 00:04.0 and 00:00.0 (not its
#       own) ENOENT with the devices' places and Xen's context entries
#       unchanged; remote_cmd EPERM; contexts allocated until refused: 16 in
#       all, then ENOSPC, and a refusal changes nothing in the dump; the 15
#       extra contexts freed; a page of its own (labtool own-pages in the guest)
#       mapped: mapped=1, one more reference; its own 00:05.0 into its context
#       (dump: devs=[0000:00:05.0], Xen's entry on the core's table), back to
#       context 0 (no unit line, Xen's mapping), and into the context again;
#       then `xl destroy`: the core's dump shows the domain holding nothing
#       (no context, no reference), 00:05.0 is back with Xen (no unit line;
#       the unit's device count as before the guest) and in
#       xl pci-assignable-list. dom0 returns its page and takes 00:05.0 back.
#       Debian's Xen: SKIP.

POL_DEV=0000:00:05.0
POL_SEQ=0
POL_FMFN=""

# gop DOMID LABTOOL-ARGS...: labtool in the guest (its agent); the LAB- line in
# $OUT, the errno name in $ERR (as op does for dom0).
gop() {
    local dom=$1 end resend out
    shift
    POL_SEQ=$((POL_SEQ + 1))
    xenstore-write /local/domain/$dom/data/iommu/cmd "$POL_SEQ $*"
    end=$(now_after 30)
    resend=$(now_after 3)
    OUT="LAB-AGENT timeout"
    while :; do
        out=$(xenstore-read /local/domain/$dom/data/iommu/out 2>/dev/null)
        case "$out" in "$POL_SEQ "*) OUT=${out#"$POL_SEQ "}; break ;; esac
        past "$end" && break
        # A write between the agent's read and its watch is seen on the next one.
        if past "$resend"; then
            xenstore-write /local/domain/$dom/data/iommu/cmd "$POL_SEQ $*"
            resend=$(now_after 3)
        fi
        sleep 0.1
    done
    echo "LAB-INFO d$dom: labtool $* -> $OUT"
    ERR=$(echo "$OUT" | sed -n 's/.* errno=\([A-Z?]*\).*/\1/p')
}

# pdump: debug key F; the lines of that one dump (ferrite-iommu: prefix cut) in $DUMP.
pdump() {
    local last i=0
    last=$(xl dmesg | tail -n 1)
    xl debug-keys F >/dev/null 2>&1
    while :; do
        sleep 0.3
        # What Xen logged after $last (its console lines carry timestamps: unique).
        DUMP=$(xl dmesg | awk -v l="$last" '{ a[NR] = $0; if ($0 == l) s = NR } END { for (i = s + 1; i <= NR; i++) print a[i] }' \
            | grep -a 'ferrite-iommu: ' | sed 's/^.*ferrite-iommu: //')
        echo "$DUMP" | grep -q '^unit: devices in core contexts' && break
        i=$((i + 1))
        [ $i -ge 20 ] && break
    done
}
# dl TEXT: the line of the last dump that starts with TEXT.
dl() { echo "$DUMP" | grep -a "^$1" | tail -n 1; }
# Where a device is in the core (its context line without the counters) and
# Xen's context entry for it (the unit: line, empty when Xen maps it).
dev_state() {
    echo "$DUMP" | grep -a "devs=\[.*$1" | sed 's/ did=.*//' | tr '\n' ' '
    echo "| $(dl "unit: $1 ")"
}
# The unit's summary line without its hardware domain id count.
unit_devs() { dl "unit: devices in core contexts" | sed 's/ hardware domain ids=[0-9]*//'; }
# fnum LINE NAME: the number after NAME= in LINE.
fnum() { echo "$1" | sed -n "s/.* $2=\([0-9]*\).*/\1/p"; }

# pol_guest NAME MEMORY MAXMEM [PCI]: xl create of an agent guest; its domid or return 1.
pol_guest() {
    local cfg=/tmp/$1.cfg
    {
        echo 'type = "pv"'
        echo "name = \"$1\""
        echo 'kernel = "/lab/vmlinux"'
        echo 'ramdisk = "/lab/guest-initrd.gz"'
        echo 'extra = "console=hvc0 lab.role=iommu loglevel=4"'
        echo "memory = $2"
        echo "maxmem = $3"
        echo 'vcpus = 1'
        [ -n "${4:-}" ] && echo "pci = [ '$4' ]"
        echo 'on_poweroff = "destroy"'
        echo 'on_crash = "destroy"'
    } >$cfg
    if ! timeout 90 xl create $cfg >/tmp/xl-$1.log 2>&1; then
        lab_info "xl create $1 failed: $(tr '\n' ' ' </tmp/xl-$1.log)"
        return 1
    fi
    xl domid "$1"
}

# pol_ready DOMID SECONDS: the guest's agent is up.
pol_ready() { wait_key /local/domain/$1/data/iommu/ready 1 "$2"; }

policy_run() {
    local fmfn pol nodev base b04 b00 bunit d1 a l1 l2 n ctxs c own dline t0
    why=""
    t0=$(lab_uptime)
    # dom0's frame: one the guest neither owns nor was granted.
    POL_FMFN=$(labtool own-pages 1 | sed -n 's/^LAB-PAGES got=1 .* mfns=\(0x[0-9a-f]*\)$/\1/p')
    fmfn=$POL_FMFN
    [ -n "$fmfn" ] || { why="dom0 got no page of its own (labtool own-pages 1)"; return; }
    lab_info "a frame of dom0's for the guest to try: $fmfn"
    if ! xl pci-assignable-add $POL_DEV >/tmp/pol-pci.log 2>&1; then
        why="xl pci-assignable-add $POL_DEV: $(tr '\n' ' ' </tmp/pol-pci.log)"; return
    fi
    # The core before any of this: where 00:04.0 and 00:00.0 are, Xen's entries.
    pdump
    b04=$(dev_state 0000:00:04.0) b00=$(dev_state 0000:00:00.0) bunit=$(dl "unit: devices in core contexts")
    lab_info "before: 0000:00:04.0 $b04; 0000:00:00.0 $b00; $bunit"

    nodev=$(pol_guest iommu-nodev 128 128) || { why="no guest without a device"; return; }
    pol=$(pol_guest iommu-pol 128 160 $POL_DEV) || { why="no guest with $POL_DEV"; return; }
    lab_info "guests: iommu-nodev domain $nodev, iommu-pol domain $pol (pci $POL_DEV)"
    pol_ready "$nodev" 90 || { why="iommu-nodev's agent not up within 90 s"; lab_show /var/log/xen/console/guest-iommu-nodev.log 15 nodev; return; }
    pol_ready "$pol" 60 || { why="iommu-pol's agent not up within 60 s"; lab_show /var/log/xen/console/guest-iommu-pol.log 15 pol; return; }
    lab_info "both agents up $(lab_since "$t0") s after the start of the test"

    # ---- a domain without a PCI device
    gop "$nodev" iommu-op 1
    [ "$ERR" = ENODEV ] || why="$why iommu-nodev query_capabilities: '$OUT' (want ENODEV);"
    gop "$nodev" iommu-op 2 max_ctx=4 order=4
    [ "$ERR" = ENODEV ] || why="$why iommu-nodev init: '$OUT' (want ENODEV);"

    # ---- the domain with 00:05.0: the interface for itself
    gop "$pol" iommu-op 1
    [ "$ERR" = OK ] && [ "$(field pgsize_mask)" = 0x1000 ] || why="$why query_capabilities: '$OUT' (want OK, pgsize_mask=0x1000);"
    gop "$pol" iommu-op 2 max_ctx=64 order=12
    [ "$ERR" = OK ] || why="$why init (64 contexts asked, clamped to 16): '$OUT' (want OK);"
    gop "$pol" iommu-op 3
    a=$(field ctx)
    [ "$ERR" = OK ] && [ -n "$a" ] && [ "$a" != 0 ] || { why="$why alloc_context: '$OUT' (want OK and a context);"; return; }
    pdump
    d1=$(dl "d$pol: ")
    lab_info "after init and alloc: $d1 / $(dl "d$pol ctx$a ")"
    [ -z "$(dl "d$nodev[: ]")" ] || why="$why the core registered iommu-nodev: '$(dl "d$nodev[: ]")';"
    case "$d1" in "d$pol: limits ctx=16 pages=1024; "*) ;; *) why="$why the core's line for d$pol: '$d1' (want limits ctx=16 pages=1024);" ;; esac
    base=$d1

    # ---- what is not its own: refused, nothing changed
    gop "$pol" iommu-op 6 ctx=$a gfn=$fmfn dfn=0x20 flags=3 nr=1
    [ "$ERR" = EPERM ] && [ "$(field mapped)" = 0 ] || why="$why map of dom0's frame $fmfn: '$OUT' (want EPERM, mapped=0);"
    gop "$pol" iommu-op 5 ctx=$a dev=0000:00:04.0
    [ "$ERR" = ENOENT ] || why="$why reattach of 0000:00:04.0: '$OUT' (want ENOENT);"
    gop "$pol" iommu-op 5 ctx=$a dev=0000:00:00.0
    [ "$ERR" = ENOENT ] || why="$why reattach of 0000:00:00.0: '$OUT' (want ENOENT);"
    gop "$pol" iommu-op 8
    [ "$ERR" = EPERM ] || why="$why remote_cmd: '$OUT' (want EPERM);"
    pdump
    l1=$(dl "d$pol ctx$a ")
    lab_info "after the refused calls: $(dl "d$pol: ") / $l1"
    case "$l1" in "d$pol ctx$a Paged did="*" mapped=0 devs=[]") ;; *) why="$why context $a after the refused map and reattaches: '$l1' (want Paged, mapped=0, no device);" ;; esac
    [ "$(dl "d$pol: ")" = "$base" ] || why="$why the refused calls changed d$pol: '$base' -> '$(dl "d$pol: ")';"
    [ "$(dev_state 0000:00:04.0)" = "$b04" ] || why="$why 0000:00:04.0 changed: '$b04' -> '$(dev_state 0000:00:04.0)';"
    [ "$(dev_state 0000:00:00.0)" = "$b00" ] || why="$why 0000:00:00.0 changed: '$b00' -> '$(dev_state 0000:00:00.0)';"
    [ "$(dl "unit: devices in core contexts")" = "$bunit" ] || why="$why the unit: '$bunit' -> '$(dl "unit: devices in core contexts")';"

    # ---- its limits: 16 contexts, then ENOSPC, and the refusal changes nothing
    n=1 ctxs=""
    while [ $n -lt 20 ]; do
        gop "$pol" iommu-op 3
        [ "$ERR" = OK ] || break
        ctxs="$ctxs $(field ctx)"
        n=$((n + 1))
    done
    [ $n = 16 ] && [ "$ERR" = ENOSPC ] || why="$why $n contexts allocated, then '$OUT' (want 16, then ENOSPC);"
    pdump
    l1=$(dl "d$pol: ")
    gop "$pol" iommu-op 3
    [ "$ERR" = ENOSPC ] || why="$why alloc past the limit again: '$OUT' (want ENOSPC);"
    pdump
    l2=$(dl "d$pol: ")
    lab_info "at the limit: $l1"
    [ "$(fnum "$l1" contexts)" = $(($(fnum "$base" contexts) + n - 1)) ] || why="$why at the limit: '$l1' (want $((n - 1)) contexts more than '$base');"
    [ "$l1" = "$l2" ] || why="$why a refused alloc changed d$pol: '$l1' -> '$l2';"
    for c in $ctxs; do
        gop "$pol" iommu-op 4 ctx=$c flags=0
        [ "$ERR" = OK ] || why="$why free of context $c: '$OUT';"
    done
    pdump
    [ "$(dl "d$pol: ")" = "$base" ] || why="$why after freeing the extra contexts: '$(dl "d$pol: ")' (want '$base');"

    # ---- the same kinds of calls as the owner: accepted
    gop "$pol" own-pages 1
    own=$(echo "$OUT" | sed -n 's/^LAB-PAGES got=1 .* mfns=\(0x[0-9a-f]*\)$/\1/p')
    if [ -z "$own" ]; then
        why="$why no page of the guest's own (labtool own-pages 1 in the guest: '$OUT');"
    else
        gop "$pol" iommu-op 6 ctx=$a gfn=$own dfn=0x10 flags=3 nr=1
        [ "$ERR" = OK ] && [ "$(field mapped)" = 1 ] || why="$why map of its own frame $own: '$OUT' (want OK, mapped=1);"
    fi
    gop "$pol" iommu-op 5 ctx=$a dev=$POL_DEV
    [ "$ERR" = OK ] || why="$why reattach of its own $POL_DEV to context $a: '$OUT' (want OK);"
    pdump
    l1=$(dl "d$pol ctx$a ") dline=$(dl "d$pol: ")
    lab_info "its own frame and device: $dline / $l1"
    lab_info "its own frame and device: $(dl "unit: $POL_DEV ")"
    case "$l1" in "d$pol ctx$a Paged did="*" mapped=1 devs=[$POL_DEV]") ;; *) why="$why context $a: '$l1' (want mapped=1 devs=[$POL_DEV]);" ;; esac
    [ "$(fnum "$dline" refs)" = $(($(fnum "$base" refs) + 1)) ] || why="$why references: '$dline' (want one more than '$base');"
    case "$(dl "unit: $POL_DEV ")" in *"present=1 "*": the core's table") ;; *) why="$why Xen's entry for $POL_DEV: '$(dl "unit: $POL_DEV ")' (want the core's table);" ;; esac
    gop "$pol" iommu-op 5 ctx=0 dev=$POL_DEV
    [ "$ERR" = OK ] || why="$why reattach of $POL_DEV to context 0: '$OUT' (want OK);"
    pdump
    l1=$(dl "d$pol ctx$a ")
    case "$l1" in *" devs=[]") ;; *) why="$why context $a after reattach to 0: '$l1' (want no device);" ;; esac
    [ -z "$(dl "unit: $POL_DEV ")" ] || why="$why Xen's entry for $POL_DEV after reattach to 0: '$(dl "unit: $POL_DEV ")' (want Xen's mapping);"
    # The context keeps its hardware domain id until it is freed: devices and failures only.
    [ "$(unit_devs)" = "$(echo "$bunit" | sed 's/ hardware domain ids=[0-9]*//')" ] || why="$why the unit after reattach to 0: '$(dl "unit: devices in core contexts")' (want devices and failures as in '$bunit');"
    # In the context again: the teardown has a device to give back.
    gop "$pol" iommu-op 5 ctx=$a dev=$POL_DEV
    [ "$ERR" = OK ] || why="$why reattach of $POL_DEV to context $a again: '$OUT' (want OK);"
    pdump
    lab_info "before xl destroy: $(dl "d$pol: ") / $(dl "d$pol ctx$a ") / $(dl "unit: devices in core contexts")"

    # ---- xl destroy: the glue's domain_destroyed hook releases everything
    xl destroy iommu-pol >/dev/null 2>&1
    n=0
    while [ $n -lt 60 ] && xl list iommu-pol >/dev/null 2>&1; do sleep 0.5; n=$((n + 1)); done
    xl list iommu-pol >/dev/null 2>&1 && why="$why iommu-pol still listed 30 s after xl destroy;"
    pdump
    l1=$(dl "d$pol[: ]")
    lab_info "after xl destroy: ${l1:-<no d$pol line>}; $(dl "unit: devices in core contexts")"
    lab_info "after xl destroy: $(xl dmesg | grep -a "ferrite-iommu: domain $pol torn down" | tail -n 1 | sed 's/^.*ferrite-iommu: //')"
    case "$l1" in
        "") ;;
        "d$pol (dying): limits ctx=16 pages=1024; contexts=0 dids=0 table-pages=0 refs=0") ;;
        *) why="$why after xl destroy the core has '$l1' (want nothing held);" ;;
    esac
    [ -z "$(echo "$DUMP" | grep -a "^d$pol ctx")" ] || why="$why contexts of d$pol after xl destroy: $(echo "$DUMP" | grep -a "^d$pol ctx" | tr '\n' ' ');"
    [ -z "$(dl "unit: $POL_DEV ")" ] || why="$why Xen's entry for $POL_DEV after xl destroy: '$(dl "unit: $POL_DEV ")' (want Xen's);"
    [ "$(dl "unit: devices in core contexts")" = "$bunit" ] || why="$why the unit after xl destroy: '$(dl "unit: devices in core contexts")' (want '$bunit');"
    xl pci-assignable-list 2>/dev/null | grep -q "^$POL_DEV" || why="$why $POL_DEV not in xl pci-assignable-list after xl destroy: $(xl pci-assignable-list 2>&1 | tr '\n' ' ');"
}

policy_test() {
    if [ "$KIND" != ferrite ]; then
        lab_skip iommu-domu-policy "stock Xen: no PV-IOMMU"
        return
    fi
    local why t0
    t0=$(lab_uptime)
    policy_run
    # Whatever happened: nothing of this test stays behind.
    xl destroy iommu-pol >/dev/null 2>&1
    xl destroy iommu-nodev >/dev/null 2>&1
    [ -n "$POL_FMFN" ] && lab_info "$(labtool release-pages $POL_FMFN | grep '^LAB-PAGES')"
    xl pci-assignable-remove -r $POL_DEV >/dev/null 2>&1 || lab_info "xl pci-assignable-remove -r $POL_DEV failed"
    if [ -z "$why" ]; then
        lab_pass iommu-domu-policy "a Linux PV domU with $POL_DEV: caps/init/alloc OK; dom0's frame EPERM (mapped=0); 0000:00:04.0 and 0000:00:00.0 ENOENT (entries unchanged); remote_cmd EPERM; 16 contexts then ENOSPC (no change); its own frame mapped and its own device into its context and back; after xl destroy the core holds nothing for it and $POL_DEV is back with Xen; a domU without a device: ENODEV ($(lab_since "$t0") s)"
    else
        lab_fail iommu-domu-policy "$why"
        xl dmesg | grep -a 'ferrite-iommu' | tail -n 12 | sed 's/^/LAB-INFO   | /'
        lab_show /var/log/xen/console/guest-iommu-pol.log 10 pol
    fi
}
