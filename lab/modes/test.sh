#!/bin/sh
# MODE test: one Xen boot, every lab test; one LAB-TEST line each.
# LAB-EXPECT: ready console grant-map evtchn grant-to-dom0 shutdown
. /lab/common.sh
ALL="ready console grant-map evtchn grant-to-dom0 shutdown"
failed=0

skip_rest() { # skip_rest WHY TEST...
    why=$1; shift
    for n in "$@"; do lab_fail "$n" "not run: $why"; done
}

cfg=$(lab_guest_cfg)
domid=$(lab_create "$cfg") || { skip_rest "xl create $cfg failed" $ALL; exit 1; }
lab_info "guest domid $domid"

# ready
# Ferrite must be ready within 30 s; the Linux stand-in boots slower under TCG.
ready_limit=30
[ -d /lab/peer ] && ready_limit=120
if lab_wait_ready "$domid" $ready_limit; then
    lab_pass ready "/local/domain/$domid/data/ferrite/state = ready $READY_AFTER s after xl create returned"
else
    failed=1
    lab_fail ready "/local/domain/$domid/data/ferrite/state = '$READY_STATE' after $READY_AFTER s (expected 'ready' within $ready_limit s)"
fi
lab_step ready "guest readiness checked"

# console
if lab_wait_console "ferrite: ready" 5; then
    lab_pass console "$GUEST_LOG contains 'ferrite: ready'"
else
    failed=1
    lab_fail console "$GUEST_LOG has no 'ferrite: ready' ($(wc -c <"$GUEST_LOG" 2>/dev/null || echo 0) bytes; tail shown below)"
    lab_show "$GUEST_LOG" 15 console
fi

# The guest's data/ keys with their permissions (xenstore-ls -p), for the record.
lab_info "xenstore /local/domain/$domid/data (with permissions):"
xenstore-ls -p "/local/domain/$domid/data" 2>&1 | head -n 20 | sed 's/^/LAB-INFO xs | /'

# grant-to-dom0, grant-map, evtchn
if xl list ferrite >/dev/null 2>&1; then
    timeout 120 labtool dom0 "$domid" || failed=1
else
    failed=1
    skip_rest "the guest is gone" grant-map evtchn grant-to-dom0
fi
lab_step grant-evtchn "grant and event-channel tests done"

# shutdown
lab_shutdown 60
if [ $SHUTDOWN_RC -eq 0 ] && [ $SHUTDOWN_GONE = yes ] && lab_wait_console "ferrite: poweroff" 2; then
    lab_pass shutdown "xl shutdown -w returned after $SHUTDOWN_AFTER s, domain gone, console has 'ferrite: poweroff'"
else
    failed=1
    has=no; grep -qF "ferrite: poweroff" "$GUEST_LOG" 2>/dev/null && has=yes
    why="returned status $SHUTDOWN_RC"
    case $SHUTDOWN_RC in 124|143) why="did not return within 60 s" ;; esac
    lab_fail shutdown "xl shutdown -w $why after $SHUTDOWN_AFTER s; domain gone: $SHUTDOWN_GONE; console line containing 'ferrite: poweroff': $has (expected: status 0, gone, yes)"
    lab_show /tmp/xl-shutdown.log 5 xl
fi
lab_step shutdown "guest shut down"

if [ $failed -ne 0 ]; then
    lab_info "guest console log tail:"
    lab_show "$GUEST_LOG" 25 console
    lab_info "Xen's messages about domain $domid (xl dmesg):"
    xl dmesg 2>/dev/null | grep -E "d${domid}v|[Dd]omain ${domid}\b|dom${domid}\b" | tail -n 20 | sed 's/^/LAB-INFO xen | /'
    lab_info "dom0 kernel log tail (Xen's own messages are in the serial log):"
    dmesg 2>/dev/null | tail -n 15 | sed 's/^/LAB-INFO dmesg | /'
fi
exit $failed
