#!/bin/sh
# MODE test: one Xen boot, every lab test; one LAB-TEST line each.
# LAB-EXPECT: grant-map evtchn grant-to-dom0 nvme-selftest ready console nvme dma-fallback blk-features blk-fs blk-attach blk-ro blk-bogus blk-inuse blk-destroy blk-copy blk-cycles blk-persist shutdown
#
# Two images, one after the other, each created as domain "ferrite" with the
# emulated NVMe (0000:00:04.0) passed through:
# 1. the self-test image (/ferrite/ferrite-selftest): grant-to-dom0, grant-map,
#    evtchn and its destructive NVMe disk test (nvme-selftest); then shut down;
# 2. the product (/ferrite/ferrite): ready, console, its read-only disk check
#    (nvme), dma-fallback, the blk-* tests with the Linux test guest
#    (configs/guest-linux.cfg, script lab/dom0/guest.sh) on a disk Ferrite
#    serves, blk-persist (restarts the product), shutdown.
# With the Linux peer (IMAGE=linux-peer) the peer plays Ferrite for the
# grant/evtchn tests; the NVMe and blk-* tests report SKIP.
. /lab/common.sh
ALL="grant-map evtchn grant-to-dom0 nvme-selftest ready console nvme dma-fallback blk-features blk-fs blk-attach blk-ro blk-bogus blk-inuse blk-destroy blk-copy blk-cycles blk-persist shutdown"
BLK="blk-features blk-fs blk-attach blk-ro blk-bogus blk-inuse blk-destroy blk-copy blk-cycles blk-persist"
ST=/ferrite/ferrite-selftest
PCI=0000:00:04.0
GCFG=/ferrite/configs/guest-linux.cfg
GNAME=guest
GLOG=/var/log/xen/console/guest-$GNAME.log
failed=0

skip_rest() { # skip_rest WHY TEST...
    why=$1; shift
    for n in "$@"; do lab_fail "$n" "not run: $why"; done
}
peer=no
[ -d /lab/peer ] && peer=yes

# EXTRA_DIR/no-pci: no passthrough; Ferrite serves its RAM disk (to tell NVMe
# problems from blkback ones).  The nvme test then reports SKIP.
nopci=no
[ -e /extra/no-pci ] && nopci=yes

cfg=$(lab_guest_cfg)
# Ferrite's console log holds every domain named "ferrite" (the self-test
# image, then the product, restarted in blk-persist): checks read it from a
# line offset.
flog_size() { if [ -e "$GUEST_LOG" ]; then wc -l <"$GUEST_LOG"; else echo 0; fi; }
flog_from() { [ -e "$GUEST_LOG" ] && sed -n "$(($1 + 1)),\$p" "$GUEST_LOG"; }
# flog_wait OFFSET TEXT SECONDS: wait for a fixed string after OFFSET.
flog_wait() {
    _fw_end=$(now_after "$3")
    until flog_from "$1" | grep -aqF "$2"; do
        past "$_fw_end" && return 1
        sleep 0.2
    done
}
# ferrite_create [XL-OPTION...]: xl create of Ferrite's config, with the NVMe
# passed through unless this run has none; prints the domid.
ferrite_create() {
    if [ $peer = no ] && [ $nopci = no ]; then lab_create "$cfg" "pci=['$PCI']" "$@"; else lab_create "$cfg" "$@"; fi
}
if [ $peer = no ] && [ $nopci = no ]; then
    # pciback takes the controller from dom0's nvme driver; Ferrite gets it with pci=[...].
    if xl pci-assignable-add $PCI >/tmp/pci.log 2>&1; then
        lab_info "xl pci-assignable-add $PCI: ok ($(xl pci-assignable-list 2>/dev/null | tr '\n' ' '))"
    else
        lab_info "xl pci-assignable-add $PCI failed: $(tr '\n' ' ' </tmp/pci.log)"
    fi
fi

# ------------------------------------------------------------------ self-test image
# grant-to-dom0, grant-map, evtchn (labtool prints their LAB-TEST lines) and
# nvme-selftest: the self-test image's destructive disk test (2 MiB pattern
# over 2 queues, flushed, read back; write-zeroes, discard after it).
if [ $peer = yes ]; then
    lab_skip nvme-selftest "the Linux peer does not drive the NVMe"
elif [ ! -f $ST ]; then
    failed=1
    skip_rest "this run has no self-test image (lab.sh: LAB_SELFTEST_IMAGE)" grant-map evtchn grant-to-dom0 nvme-selftest
else
    stoff=$(flog_size)
    if stdom=$(ferrite_create "kernel=\"$ST\""); then
        lab_info "self-test image: domain $stdom"
        if ! lab_wait_ready "$stdom" 60; then
            lab_info "self-test image: data/ferrite/state = '$READY_STATE' after $READY_AFTER s"
            flog_from "$stoff" | tail -n 15 | sed 's/^/LAB-INFO selftest | /'
        fi
        timeout 120 labtool dom0 "$stdom" || failed=1
        if [ $nopci = yes ]; then
            lab_skip nvme-selftest "no-pci run: no NVMe to test"
        else
            v=$(xenstore-read "/local/domain/$stdom/data/ferrite/nvme" 2>/dev/null) || v="<absent>"
            case $v in
                pass*written*verified*) lab_pass nvme-selftest "self-test image, data/ferrite/nvme = '$v'" ;;
                *) failed=1; lab_fail nvme-selftest "self-test image, data/ferrite/nvme = '$v' (expected 'pass: ... written, flushed, read back and verified')"
                   flog_from "$stoff" | grep -iE 'nvme|pci' | tail -n 15 | sed 's/^/LAB-INFO selftest | /' ;;
            esac
        fi
        lab_shutdown 60
        if [ $SHUTDOWN_RC -ne 0 ] || [ $SHUTDOWN_GONE = no ]; then
            lab_info "self-test image: xl shutdown -w status $SHUTDOWN_RC, gone: $SHUTDOWN_GONE (destroyed)"
        fi
    else
        failed=1
        skip_rest "xl create of the self-test image failed" grant-map evtchn grant-to-dom0 nvme-selftest
    fi
fi
lab_step selftest "self-test image done"

# ------------------------------------------------------------------ the product
PSTART=$(flog_size)
domid=$(ferrite_create) || { skip_rest "xl create $cfg failed" ready console nvme dma-fallback $BLK shutdown; exit 1; }
lab_info "guest domid $domid"
FDOM=$domid

# ready
# Ferrite must be ready within 30 s; the Linux stand-in boots slower under TCG.
ready_limit=30
[ $peer = yes ] && ready_limit=120
if lab_wait_ready "$domid" $ready_limit; then
    lab_pass ready "/local/domain/$domid/data/ferrite/state = ready $READY_AFTER s after xl create returned"
else
    failed=1
    lab_fail ready "/local/domain/$domid/data/ferrite/state = '$READY_STATE' after $READY_AFTER s (expected 'ready' within $ready_limit s)"
fi
lab_step ready "guest readiness checked"

# console
if flog_wait "$PSTART" "ferrite: ready" 5; then
    lab_pass console "$GUEST_LOG contains 'ferrite: ready' after line $PSTART (the product's part)"
else
    failed=1
    lab_fail console "$GUEST_LOG has no 'ferrite: ready' after line $PSTART ($(wc -c <"$GUEST_LOG" 2>/dev/null || echo 0) bytes; tail shown below)"
    lab_show "$GUEST_LOG" 15 console
fi

# The guest's data/ keys with their permissions (xenstore-ls -p), for the record.
lab_info "xenstore /local/domain/$domid/data (with permissions):"
xenstore-ls -p "/local/domain/$domid/data" 2>&1 | head -n 20 | sed 's/^/LAB-INFO xs | /'

# grant-to-dom0, grant-map, evtchn: with the peer here (Ferrite: the self-test image above).
if [ $peer = yes ]; then
    if xl list ferrite >/dev/null 2>&1; then
        timeout 120 labtool dom0 "$domid" || failed=1
    else
        failed=1
        skip_rest "the guest is gone" grant-map evtchn grant-to-dom0
    fi
    lab_step grant-evtchn "grant and event-channel tests done"
fi

# nvme: the product's boot check of its disk, read-only (identify, LBA 0 and the last LBA).
if [ $peer = yes ]; then
    lab_skip nvme "the Linux peer does not drive the NVMe"
elif [ $nopci = yes ]; then
    lab_skip nvme "no-pci run: Ferrite serves its RAM disk"
else
    v=$(xenstore-read "/local/domain/$FDOM/data/ferrite/nvme" 2>/dev/null) || v="<absent>"
    case $v in
        pass*read-only*) lab_pass nvme "data/ferrite/nvme = '$v'" ;;
        *) failed=1; lab_fail nvme "data/ferrite/nvme = '$v' (expected 'pass: ... read-only check ...')"
           flog_from "$PSTART" | grep -iE 'nvme|pci' | tail -n 15 | sed 's/^/LAB-INFO console | /' ;;
    esac
fi

# dma-fallback: on stock Xen (no PV-IOMMU) Ferrite must say which DMA strategy
# it fell back to, in xenstore and on its console, with the reason.
if [ $peer = yes ]; then
    lab_skip dma-fallback "the Linux peer does not drive the NVMe"
elif [ $nopci = yes ]; then
    lab_skip dma-fallback "no-pci run: no device, no DMA strategy"
else
    v=$(xenstore-read "/local/domain/$FDOM/data/ferrite/dma" 2>/dev/null) || v="<absent>"
    line=$(flog_from "$PSTART" | grep -F "DMA strategy" | tail -n 1)
    case "$v" in
        machine-frames)
            if echo "$line" | grep -q "no PV-IOMMU interface (ENOSYS)"; then
                lab_pass dma-fallback "data/ferrite/dma = '$v'; console: ${line#*ferrite: }"
            else
                failed=1; lab_fail dma-fallback "data/ferrite/dma = '$v' but the console gives no ENOSYS reason: '$line'"
            fi ;;
        *) failed=1; lab_fail dma-fallback "data/ferrite/dma = '$v' (expected 'machine-frames' on stock Xen 4.17); console: '$line'" ;;
    esac
fi

# ------------------------------------------------------------------ blk-* tests
# The test guest's console log grows across its domains (same name): each check
# reads only what came after a recorded offset.
# Offsets are line counts: busybox `tail -c +N` crashed ("Segmentation fault",
# "malloc(): invalid size") when polled on these logs in dom0.
glog_size() { if [ -e "$GLOG" ]; then wc -l <"$GLOG"; else echo 0; fi; }
glog_from() { [ -e "$GLOG" ] && sed -n "$(($1 + 1)),\$p" "$GLOG" | tr -d '\r'; }
# glog_wait OFFSET PATTERN SECONDS: wait for an extended regexp after OFFSET; sets GLINE.
glog_wait() {
    GLINE="" gw_end=$(awk -v a="$(lab_uptime)" -v s="$3" 'BEGIN { print a + s }')
    while :; do
        GLINE=$(glog_from "$1" | grep -E "$2" | head -n 1)
        [ -n "$GLINE" ] && return 0
        awk -v a="$(lab_uptime)" -v e="$gw_end" 'BEGIN { exit !(a > e) }' && return 1
        sleep 0.5
    done
}
# gres OFFSET NAME: the detail of "GUEST-RESULT NAME PASS|FAIL detail" after OFFSET.
gres() { glog_from "$1" | sed -n "s/^.*GUEST-RESULT $2 //p" | head -n 1; }
gdomid() { xl domid $GNAME 2>/dev/null; }
fdom_ok() { [ "$(xenstore-read /local/domain/$FDOM/data/ferrite/state 2>/dev/null)" = ready ]; }
# evidence WHY: what the lead needs when a blk test fails.
evidence() {
    lab_info "---- evidence ($1) ----"
    g=$(timeout 10 xl domid $GNAME 2>/dev/null)
    lab_info "test guest console ($GLOG), last lines:"
    lab_show "$GLOG" 30 guest
    lab_info "Ferrite console ($GUEST_LOG): warnings/errors (first 25), then the last lines:"
    flog_from "$PSTART" | grep -E "WARN|ERROR|error|refused|broken|disconnected" | head -n 25 | sed 's/^/LAB-INFO ferrite-warn | /'
    lab_show "$GUEST_LOG" 20 ferrite
    lab_info "xenstore backend (Ferrite, domain $FDOM):"
    timeout 10 xenstore-ls -fp "/local/domain/$FDOM/backend" 2>&1 | head -n 60 | sed 's/^/LAB-INFO xs-be | /'
    if [ -n "$g" ]; then
        lab_info "xenstore frontend (guest, domain $g):"
        timeout 10 xenstore-ls -fp "/local/domain/$g/device/vbd" 2>&1 | head -n 40 | sed 's/^/LAB-INFO xs-fe | /'
    fi
    lab_show /tmp/xl-guest.log 10 xl
    lab_info "Xen (xl dmesg), last lines:"
    timeout 10 xl dmesg 2>/dev/null | tail -n 15 | sed 's/^/LAB-INFO xen | /'
    dom0_crashes
}
# Processes in dom0 that died of a signal (the kernel logs "segfault at"/"traps:").
dom0_crashes() {
    dmesg >/tmp/dom0-dmesg.txt 2>&1
    n=$(grep -cE 'segfault at|traps:|general protection' /tmp/dom0-dmesg.txt)
    [ "$n" -gt 0 ] || return 0
    lab_info "dom0: $n process crash(es) in dmesg; last ones:"
    grep -E 'segfault at|traps:|general protection' /tmp/dom0-dmesg.txt | tail -n 8 | sed 's/^/LAB-INFO dom0-crash | /'
}
# CPU time per domain (a polling driver domain shows here).
xl_times() { timeout 10 xl list 2>/dev/null | sed "s/^/LAB-INFO xl-list | /"; }
# gcreate PHASE: create the test guest in PHASE; sets GDOM (empty on failure).
gcreate() {
    t_gc=$(lab_uptime)
    lab_step guest-create "xl create $GCFG (lab.phase=$1)"
    extra=$(sed -n 's/^extra *= *"\(.*\)"/\1/p' $GCFG | sed "s/lab\.phase=[a-z]*/lab.phase=$1/")
    # More kernel command-line options (module options) for this guest.
    [ -n "${2:-}" ] && extra="$extra $2"
    GDOM=""
    if timeout 90 xl create $GCFG "extra=\"$extra\"" >/tmp/xl-guest.log 2>&1; then
        GDOM=$(gdomid)
        lab_step guest-created "test guest domain $GDOM created in $(lab_since "$t_gc") s"
    else
        lab_info "xl create $GCFG failed after $(lab_since "$t_gc") s:"
        lab_show /tmp/xl-guest.log 15 xl
    fi
}
gdestroy() { xl destroy $GNAME >/dev/null 2>&1; }
# Ferrite's own report of what it serves (data/ferrite/status, key=value ...).
fstatus() { xenstore-read /local/domain/$FDOM/data/ferrite/status 2>/dev/null; }
fval() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
# settled DOMID: within 20 s, Ferrite serves nothing (status vbds=0 buffers=0)
# and DOMID's backend directory under Ferrite is gone.
settled() {
    _st_end=$(now_after 20)
    while :; do
        st=$(fstatus)
        if [ "$(fval "$st" vbds)" = 0 ] && [ "$(fval "$st" buffers)" = 0 ] && \
           ! xenstore-exists "/local/domain/$FDOM/backend/vbd/$1" >/dev/null 2>&1; then
            sleep 0.6   # one more status period
            return 0
        fi
        past "$_st_end" && return 1
        sleep 0.2
    done
}
# unsettled DOMID: what settled found missing.
unsettled() {
    _u="status '$(fstatus)'"
    xenstore-exists "/local/domain/$FDOM/backend/vbd/$1" >/dev/null 2>&1 && _u="$_u, backend/vbd/$1 still there (state $(xenstore-read "/local/domain/$FDOM/backend/vbd/$1/51712/state" 2>/dev/null || echo ?))"
    echo "$_u"
}

if [ $peer = yes ]; then
    for n in $BLK; do lab_skip "$n" "the Linux peer has no block backend"; done
elif ! xl list ferrite >/dev/null 2>&1; then
    failed=1; skip_rest "Ferrite is gone" $BLK
else
    # --- first guest: features, new filesystem
    off=$(glog_size)
    gcreate fs
    if [ -z "$GDOM" ]; then
        failed=1; evidence "xl create of the test guest failed"; skip_rest "xl create of the test guest failed" $BLK
        gdestroy
    elif ! glog_wait "$off" "GUEST-DONE" 150; then
        failed=1; evidence "guest did not finish its fs phase in 150 s"
        skip_rest "the test guest did not finish its first phase within 150 s" $BLK
        gdestroy
    else
        lab_step guest-fs "test guest finished its first phase"
        dom0_crashes
        xl_times
        glog_from "$off" | grep -E "GUEST-(INFO|FEATURES|RESULT)" | sed 's/^.*GUEST-/LAB-INFO guest | /'
        # blk-features: Linux blkfront's view, plus what it wrote in xenstore.
        fe=/local/domain/$GDOM/device/vbd/51712
        be=/local/domain/$FDOM/backend/vbd/$GDOM/51712
        feat=$(glog_from "$off" | sed -n 's/^.*GUEST-FEATURES //p' | head -n 1)
        dm=$(glog_from "$off" | grep -E 'blkfront: xvda: ' | head -n 1 | sed 's/^.*blkfront: //')
        nq_fe=$(xenstore-read $fe/multi-queue-num-queues 2>/dev/null || echo 1)
        order=$(xenstore-read $fe/ring-page-order 2>/dev/null || xenstore-read $fe/queue-0/ring-page-order 2>/dev/null || echo 0)
        fe_pers=$(xenstore-read $fe/feature-persistent 2>/dev/null || echo absent)
        mq=$(echo "$feat" | sed -n 's/.*mq=\([0-9]*\).*/\1/p')
        maxseg=$(echo "$feat" | sed -n 's/.*max_segments=\([0-9]*\).*/\1/p')
        vcpus=$(sed -n 's/^vcpus *= *\([0-9]*\).*/\1/p' $GCFG)
        want_q=$vcpus; [ "$want_q" -gt 4 ] && want_q=4
        why=""
        echo "$dm" | grep -q 'persistent grants: enabled' || why="$why persistent grants not enabled;"
        echo "$dm" | grep -q 'indirect descriptors: enabled' || why="$why indirect descriptors not enabled;"
        echo "$dm" | grep -q 'flush diskcache: enabled' || why="$why flush not enabled;"
        [ "${mq:-0}" = "$want_q" ] || why="$why $mq blk-mq queues (expected $want_q = vcpus capped by multi-queue-max-queues 4);"
        [ "${maxseg:-0}" -gt 11 ] || why="$why max_segments=$maxseg (11 = no indirect);"
        summary="dmesg '$dm'; sysfs $feat; xenstore fe: multi-queue-num-queues=$nq_fe ring-page-order=$order feature-persistent=$fe_pers"
        if [ -z "$why" ]; then
            lab_pass blk-features "$summary"
        else
            failed=1; lab_fail blk-features "$why $summary"
        fi
        lab_info "xenstore backend $be:"
        xenstore-ls -fp "$be" 2>&1 | head -n 40 | sed 's/^/LAB-INFO xs-be | /'
        lab_info "xenstore frontend $fe:"
        xenstore-ls -fp "$fe" 2>&1 | head -n 40 | sed 's/^/LAB-INFO xs-fe | /'
        fs_new=$(gres "$off" fs-new)
        lab_info "fs-new: ${fs_new:-<no result>}"

        # --- blk-attach: xvdb at run time, then away again
        off=$(glog_size)
        t0=$(lab_uptime)
        why=""
        if ! timeout 60 xl block-attach $GNAME 'backend=ferrite, vdev=xvdb, format=raw, target=ram:2M' >/tmp/xl-attach.log 2>&1; then
            why="xl block-attach failed after $(lab_since "$t0") s: $(tr '\n' ' ' </tmp/xl-attach.log);"
        fi
        t_att=$(lab_since "$t0")
        if [ -z "$why" ] && glog_wait "$off" "GUEST-EVENT xvdb present" 30; then
            t_seen=$(lab_since "$t0"); present=$(echo "$GLINE" | sed 's/^.*GUEST-EVENT //')
            off=$(glog_size); t1=$(lab_uptime)
            if ! timeout 60 xl block-detach $GNAME xvdb >/tmp/xl-detach.log 2>&1; then
                why="xl block-detach failed after $(lab_since "$t1") s: $(tr '\n' ' ' </tmp/xl-detach.log);"
            fi
            t_det=$(lab_since "$t1")
            if [ -z "$why" ] && glog_wait "$off" "GUEST-EVENT xvdb absent" 30; then
                t_gone=$(lab_since "$t1")
            else
                why="$why xvdb still present in the guest 30 s after xl block-detach returned;"
            fi
            # xvdb is its own disk (a fresh 2 MiB RAM disk), not xvda's.
            case $present in *size_sectors=4096\ *first-MiB-zero=yes*write=ok*after-write-zero=no*) ;;
                *) why="$why xvdb is not the 2 MiB RAM disk it names, or not writable ($present);" ;; esac
        elif [ -z "$why" ]; then
            why="xl block-attach returned after $t_att s but /sys/block/xvdb did not appear within 30 s;"
        fi
        if [ -z "$why" ]; then
            lab_pass blk-attach "xl block-attach returned in $t_att s, guest saw xvdb after $t_seen s ($present); xl block-detach returned in $t_det s, xvdb gone after $t_gone s"
        else
            failed=1; lab_fail blk-attach "$why"
            evidence blk-attach
            xl block-detach -f $GNAME xvdb >/dev/null 2>&1
        fi

        # --- blk-fs, second half: xl reboot; the new domain checks the sums
        off=$(glog_size)
        t0=$(lab_uptime)
        timeout 60 xl reboot $GNAME >/tmp/xl-reboot.log 2>&1 || lab_info "xl reboot: $(tr '\n' ' ' </tmp/xl-reboot.log)"
        if glog_wait "$off" "GUEST-DONE" 150; then
            fs_verify=$(gres "$off" fs-verify)
            [ -n "$fs_verify" ] || fs_verify="FAIL no fs-verify result: $(glog_from "$off" | grep -E 'GUEST-RESULT' | head -n 1 | sed 's/^.*GUEST-RESULT //')"
        else
            fs_verify="FAIL the rebooted guest did not finish within 150 s"
        fi
        t_rb=$(lab_since "$t0")
        # Persistent grants on the product's NVMe go by zero-copy (issue 14):
        # the disk requests it served so (a status a guest cannot forge).
        zc=$(fval "$(fstatus)" zero-copy)
        if [ "$nopci" != yes ] && [ -n "$zc" ] && [ "$zc" -eq 0 ] 2>/dev/null; then
            fs_verify="FAIL no disk request went by zero-copy (data/ferrite/status zero-copy=0); $fs_verify"
        fi
        case "$fs_new|$fs_verify" in
            PASS*"|"PASS*) lab_pass blk-fs "first boot: ${fs_new#PASS }; xl reboot (domain $GDOM -> $(gdomid)), ${t_rb} s later: ${fs_verify#PASS }; zero-copy disk requests: ${zc:-?}" ;;
            *) failed=1; lab_fail blk-fs "first boot: ${fs_new:-<no result>}; after xl reboot: $fs_verify"; evidence blk-fs ;;
        esac

        # --- blk-ro: access=ro is read-only: the guest sees ro=1, its write fails,
        # the disk still reads zero.
        off=$(glog_size)
        why=""
        if ! timeout 60 xl block-attach $GNAME 'backend=ferrite, vdev=xvdb, format=raw, access=ro, target=ram:1M' >/tmp/xl-attach.log 2>&1; then
            why="xl block-attach (access=ro) failed: $(tr '\n' ' ' </tmp/xl-attach.log);"
        elif glog_wait "$off" "GUEST-EVENT xvdb present" 30; then
            present=$(echo "$GLINE" | sed 's/^.*GUEST-EVENT //')
            case $present in *ro=1\ *write=fail\ after-write-zero=yes*) ;; *) why="$why read-only xvdb: $present;" ;; esac
            g=$(gdomid) # the guest's domain since the reboot
            mode=$(xenstore-read /local/domain/$FDOM/backend/vbd/$g/51728/mode 2>/dev/null)
            info=$(xenstore-read /local/domain/$FDOM/backend/vbd/$g/51728/info 2>/dev/null)
            [ "$mode" = r ] || why="$why backend mode='$mode' (expected r);"
            [ $(( ${info:-0} & 4 )) -ne 0 ] || why="$why backend info=$info lacks VDISK_READONLY (4);"
        else
            why="read-only xvdb did not appear within 30 s;"
        fi
        off=$(glog_size)
        timeout 60 xl block-detach $GNAME xvdb >/dev/null 2>&1 || xl block-detach -f $GNAME xvdb >/dev/null 2>&1
        glog_wait "$off" "GUEST-EVENT xvdb absent" 30 || why="$why xvdb still present after detach;"
        if [ -z "$why" ]; then lab_pass blk-ro "xl block-attach access=ro: $present; mode=$mode info=$info"
        else failed=1; lab_fail blk-ro "$why"; evidence blk-ro; fi

        # (After the reboot: libxl keeps even a failed attach in the guest's
        # saved config, so these run on the guest's last life.)
        # --- blk-bogus / blk-inuse: a target that names no disk, and a second
        # writer on the disk xvda uses: xl block-attach fails within seconds
        # and Ferrite says why in data/ferrite/last-error; xvda keeps working.
        for t in "blk-bogus nvme9n9 no_disk" "blk-inuse nvme0n1 in_use"; do
            set -- $t
            t0=$(lab_uptime)
            if timeout 60 xl block-attach $GNAME "backend=ferrite, vdev=xvdc, format=raw, target=$2" >/tmp/xl-attach.log 2>&1; then
                rc=0
            else
                rc=$?
            fi
            t_fail=$(lab_since "$t0")
            sleep 1
            err=$(xenstore-read /local/domain/$FDOM/data/ferrite/last-error 2>/dev/null)
            timeout 30 xl block-detach $GNAME xvdc >/dev/null 2>&1 || xl block-detach -f $GNAME xvdc >/dev/null 2>&1
            why=""
            [ $rc -ne 0 ] || why="xl block-attach target=$2 succeeded;"
            awk -v t="$t_fail" 'BEGIN { exit !(t <= 15) }' || why="$why it took $t_fail s to fail (limit 15 s);"
            case $3 in
                no_disk) case $err in *"no disk 'nvme9n9'"*) ;; *) why="$why last-error '$err' does not name the missing disk;" ;; esac ;;
                in_use) case $err in *"in use by"*) ;; *) why="$why last-error '$err' does not say the disk is in use;" ;; esac ;;
            esac
            if [ -z "$why" ]; then lab_pass $1 "xl block-attach target=$2 failed after $t_fail s (rc $rc: $(tr '\n' ' ' </tmp/xl-attach.log | cut -c1-160)); data/ferrite/last-error: $err"
            else failed=1; lab_fail $1 "$why"; fi
        done

        # --- blk-destroy: destroy a guest in the middle of its I/O, then a new guest on the disk
        gdestroy
        sleep 1
        off=$(glog_size); foff=$(flog_size)
        gcreate load
        why=""; detail=""
        if [ -z "$GDOM" ]; then
            why="xl create (load guest) failed;"
        elif ! glog_wait "$off" "GUEST-LOAD running" 120; then
            why="the load guest did not start its I/O within 120 s;"
        else
            tool=$(echo "$GLINE" | sed 's/^.*GUEST-LOAD running //')
            sleep 6
            last=$(glog_from "$off" | grep 'GUEST-LOAD stat' | tail -n 1 | sed 's/^.*GUEST-LOAD stat //')
            t0=$(lab_uptime)
            xl destroy $GNAME >/tmp/xl-destroy.log 2>&1 || why="xl destroy failed: $(tr '\n' ' ' </tmp/xl-destroy.log);"
            t_d=$(lab_since "$t0")
            LOADDOM=$GDOM
            detail="$tool; last counters before destroy: $last; xl destroy took $t_d s"
            # Ferrite must see the vbd go: its console says so, its backend dir goes.
            end=$(now_after 30)
            while ! flog_from "$foff" | grep -q "vbd .*: disconnected" && ! past "$end"; do sleep 0.2; done
            disc=$(flog_from "$foff" | grep -E "vbd .*(disconnected|removed)" | tr '\n' ' ' | sed 's/  */ /g')
            [ -n "$disc" ] || why="$why Ferrite's console shows no 'vbd ...: disconnected' within 30 s of xl destroy;"
            # The destroyed guest's vbd must be released: its backend directory
            # goes, Ferrite's status shows no vbd and no buffer left.
            if settled "$LOADDOM"; then
                detail="$detail; vbd released: backend/vbd/$LOADDOM gone, status '$(fstatus)'"
            else
                why="$why vbd of the destroyed domain $LOADDOM not released within 20 s: $(unsettled "$LOADDOM");"
            fi
            fdom_ok || why="$why Ferrite's data/ferrite/state is '$(xenstore-read /local/domain/$FDOM/data/ferrite/state 2>/dev/null)' after the destroy;"
            xl list ferrite >/dev/null 2>&1 || why="$why Ferrite is gone;"
            detail="$detail; Ferrite: $disc"
        fi
        if [ -z "$why" ]; then
            off=$(glog_size)
            gcreate fresh
            if [ -z "$GDOM" ]; then
                why="xl create of the guest after the destroy failed;"
            elif glog_wait "$off" "GUEST-DONE" 150; then
                r=$(gres "$off" fs-fresh)
                case $r in PASS*) detail="$detail; new guest (domain $GDOM): ${r#PASS }" ;; *) why="new guest (domain $GDOM): ${r:-no fs-fresh result};" ;; esac
            else
                why="the new guest did not finish within 150 s;"
            fi
            fdom_ok || why="$why Ferrite's state is not ready after the new guest;"
        fi
        if [ -z "$why" ]; then
            lab_pass blk-destroy "$detail"
        else
            failed=1; lab_fail blk-destroy "$why $detail"; evidence blk-destroy
        fi
        # The guest goes before Ferrite does.
        t0=$(lab_uptime)
        timeout 60 xl shutdown -w $GNAME >/dev/null 2>&1 || gdestroy
        lab_info "test guest shut down in $(lab_since "$t0") s"
        gdestroy

        # --- blk-copy: a frontend without persistent grants is served by grant copy
        c0=$(fval "$(fstatus)" copy-batches)
        off=$(glog_size); foff=$(flog_size)
        gcreate fresh "xen_blkfront.feature_persistent=0"
        why="" detail=""
        if [ -z "$GDOM" ]; then
            why="xl create failed;"
        elif glog_wait "$off" "GUEST-DONE" 150; then
            r=$(gres "$off" fs-fresh)
            case $r in PASS*) detail="${r#PASS }" ;; *) why="guest: ${r:-no fs-fresh result};" ;; esac
            conn=$(flog_from "$foff" | grep "vbd backend/vbd/$GDOM/.*connected" | head -n 1 | sed 's/^.*connected/connected/')
            case $conn in *"persistent grants off"*) ;; *) why="$why Ferrite's connect line does not say 'persistent grants off': '$conn';" ;; esac
            sleep 0.6
            c1=$(fval "$(fstatus)" copy-batches)
            [ "${c1:-0}" -gt "${c0:-0}" ] 2>/dev/null || why="$why Ferrite's copy-batches did not grow (${c0:-?} -> ${c1:-?});"
            detail="$detail; Ferrite: $conn; grant copy batches ${c0:-?} -> ${c1:-?}"
        else
            why="the guest did not finish within 150 s;"
        fi
        if [ -z "$why" ]; then
            lab_pass blk-copy "guest with xen_blkfront.feature_persistent=0: $detail"
        else
            failed=1; lab_fail blk-copy "$why $detail"; evidence blk-copy
        fi
        gdestroy

        # --- blk-cycles: guests created and destroyed in the middle of their I/O,
        # several times; Ferrite's status (data/ferrite/status) must come back to
        # its baseline each time: no device, no buffer, no mapped page left, and
        # the heap does not grow from cycle to cycle.
        # Every settle check is a verdict: the one before the first guest (the
        # baseline) and the one after each destroy.
        why="" detail="" heap1=""
        settled none || why="no baseline: Ferrite did not settle with no guest: $(unsettled none);"
        base=$(fstatus)
        lab_info "Ferrite's status with no guest: $base"
        for c in 1 2 3; do
            off=$(glog_size)
            gcreate load
            if [ -z "$GDOM" ]; then why="$why cycle $c: xl create failed;"; break; fi
            d=$GDOM
            if ! glog_wait "$off" "GUEST-LOAD running" 120; then why="$why cycle $c: the guest did not start its I/O within 120 s;"; gdestroy; break; fi
            sleep 3
            r0=$(fval "$(fstatus)" requests)
            xl destroy $GNAME >/dev/null 2>&1
            if ! settled "$d"; then
                why="$why cycle $c: Ferrite did not settle within 20 s of xl destroy: $(unsettled "$d");"
                continue
            fi
            st=$(fstatus)
            heap=$(fval "$st" heap-used)
            [ -n "$heap1" ] || heap1=$heap
            detail="$detail cycle $c (domain $d, $(( $(fval "$st" requests) - ${r0:-0} ))+ requests during the last 3 s): mapped-pages=$(fval "$st" mapped-pages) heap-used=$heap;"
            if [ "$(fval "$st" mapped-pages)" != "$(fval "$base" mapped-pages)" ]; then
                why="$why cycle $c: $(fval "$st" mapped-pages) pages mapped, $(fval "$base" mapped-pages) before any guest;"
            fi
        done
        if [ -n "$heap1" ] && [ -n "${heap:-}" ] && [ $((heap - heap1)) -gt 65536 ]; then
            why="$why heap grew by $((heap - heap1)) bytes from the first settled cycle to the last;"
        fi
        if [ -z "$why" ]; then
            lab_pass blk-cycles "3 guests destroyed during fio, Ferrite back to its baseline each time (baseline: $base);$detail"
        else
            failed=1; lab_fail blk-cycles "$why baseline: $base;$detail"; evidence blk-cycles
        fi
        gdestroy

        # --- blk-persist: what a guest wrote survives a restart of Ferrite.
        # A guest writes seeded data at 1 MiB..2 MiB of raw xvda (inside the
        # first 2 MiB, which the old image overwrote with its disk test at
        # every boot), fsyncs, is shut down; Ferrite is destroyed and created
        # again with the same NVMe; a new guest reads the bytes back. dom0
        # computes the expected sha256 from the seed itself.
        if [ $nopci = yes ]; then
            lab_skip blk-persist "no-pci run: the RAM disk does not outlive Ferrite"
        else
            seed=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
            pskip=16 pcount=16   # 64 KiB blocks
            spec="lab.persist=$seed:$pskip:$pcount"
            want=$(persist_data "$seed" $((pcount * 65536)) | sha256sum | cut -d' ' -f1)
            lab_info "blk-persist: seed $seed, bytes $((pskip * 65536))..$(((pskip + pcount) * 65536)), sha256 $want"
            why="" detail=""
            off=$(glog_size)
            gcreate persist-write "$spec"
            if [ -z "$GDOM" ]; then
                why="xl create of the writer failed;"
            elif ! glog_wait "$off" "GUEST-DONE" 150; then
                why="the writer did not finish within 150 s;"
            else
                r=$(gres "$off" persist-write)
                got=$(echo "$r" | sed -n 's/.*sha256=\([0-9a-f]*\).*/\1/p')
                [ -n "$got" ] && [ "$got" = "$want" ] || why="writer (domain $GDOM) read back '${got:-<no sha256>}' after fsync ($r);"
                detail="writer domain $GDOM: $((pcount * 64)) KiB at $((pskip * 64)) KiB, sha256 match after fsync and drop_caches"
            fi
            timeout 60 xl shutdown -w $GNAME >/dev/null 2>&1 || why="$why xl shutdown -w of the writer failed;"
            gdestroy
            if [ -z "$why" ]; then
                old=$FDOM
                t0=$(lab_uptime)
                xl destroy ferrite >/tmp/xl-fdestroy.log 2>&1 || why="xl destroy ferrite failed: $(tr '\n' ' ' </tmp/xl-fdestroy.log);"
                end=$(now_after 30)
                while xl list ferrite >/dev/null 2>&1 && ! past "$end"; do sleep 0.5; done
                if [ -n "$why" ]; then
                    :
                elif ! FDOM=$(ferrite_create); then
                    why="xl create of Ferrite after the destroy failed;"
                elif ! lab_wait_ready "$FDOM" 30; then
                    why="restarted Ferrite (domain $FDOM): data/ferrite/state = '$READY_STATE' after $READY_AFTER s;"
                else
                    v=$(xenstore-read "/local/domain/$FDOM/data/ferrite/nvme" 2>/dev/null)
                    detail="$detail; Ferrite destroyed and created again (domain $old -> $FDOM, ready $READY_AFTER s, $(lab_since "$t0") s in all), its boot check: '$v'"
                    off=$(glog_size)
                    gcreate persist-read "$spec"
                    if [ -z "$GDOM" ]; then
                        why="xl create of the reader failed;"
                    elif ! glog_wait "$off" "GUEST-DONE" 150; then
                        why="the reader did not finish within 150 s;"
                    else
                        # The reader's disk is served by the restarted Ferrite (backend state 4 = Connected).
                        bstate=$(xenstore-read "/local/domain/$FDOM/backend/vbd/$GDOM/51712/state" 2>/dev/null)
                        [ "$bstate" = 4 ] || why="the reader's vbd under the restarted Ferrite has state '${bstate:-<absent>}' (expected 4);"
                        r=$(gres "$off" persist-read)
                        got=$(echo "$r" | sed -n 's/.*sha256=\([0-9a-f]*\).*/\1/p')
                        if [ -n "$got" ] && [ "$got" = "$want" ]; then
                            detail="$detail; reader domain $GDOM (served by $FDOM): sha256 matches"
                        else
                            why="$why reader (domain $GDOM) read sha256 '${got:-<none>}', expected $want ($r);"
                        fi
                    fi
                    timeout 60 xl shutdown -w $GNAME >/dev/null 2>&1
                    gdestroy
                fi
            fi
            if [ -z "$why" ]; then
                lab_pass blk-persist "$detail"
            else
                failed=1; lab_fail blk-persist "$why $detail"; evidence blk-persist
            fi
        fi
        gdestroy
    fi
fi
lab_step blk "block tests done"
[ $peer = yes ] || { dom0_crashes; xl_times; }

# shutdown
lab_shutdown 60
if [ $SHUTDOWN_RC -eq 0 ] && [ $SHUTDOWN_GONE = yes ] && flog_wait "$PSTART" "ferrite: poweroff" 2; then
    lab_pass shutdown "xl shutdown -w returned after $SHUTDOWN_AFTER s, domain gone after $SHUTDOWN_GONE_AFTER s, console has 'ferrite: poweroff'"
else
    failed=1
    has=no; flog_from "$PSTART" | grep -qF "ferrite: poweroff" && has=yes
    why="returned status $SHUTDOWN_RC"
    case $SHUTDOWN_RC in 124|143) why="did not return within 60 s" ;; esac
    lab_fail shutdown "xl shutdown -w $why after $SHUTDOWN_AFTER s; domain gone: $SHUTDOWN_GONE (15 s later); console line containing 'ferrite: poweroff': $has (expected: status 0, gone, yes)"
    lab_show /tmp/xl-shutdown.log 5 xl
fi
lab_step shutdown "guest shut down"

if [ $failed -ne 0 ]; then
    lab_info "guest console log tail:"
    lab_show "$GUEST_LOG" 25 console
    lab_info "Xen's messages about domain $FDOM (xl dmesg):"
    xl dmesg 2>/dev/null | grep -E "d${FDOM}v|[Dd]omain ${FDOM}\b|dom${FDOM}\b" | tail -n 20 | sed 's/^/LAB-INFO xen | /'
    lab_info "dom0 kernel log tail (Xen's own messages are in the serial log):"
    dmesg 2>/dev/null | tail -n 15 | sed 's/^/LAB-INFO dmesg | /'
fi
exit $failed
