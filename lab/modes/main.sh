#!/bin/sh
# MODE main: what ./run.sh shows a user: create Ferrite, wait for it, show it, shut it down.
# LAB-EXPECT: ready shutdown
. /lab/common.sh
cfg=$(lab_guest_cfg)
t0=$(lab_uptime)
domid=$(lab_create "$cfg") || { lab_fail ready "xl create $cfg failed"; exit 1; }
t_created=$(lab_since "$t0")
if lab_wait_ready "$domid" 30; then
    lab_pass ready "domain $domid state=ready $READY_AFTER s after xl create"
else
    lab_fail ready "domain $domid state='$READY_STATE' after $READY_AFTER s (expected 'ready')"
fi
lab_step ready "Ferrite is up"
lab_info "xl list:"
xl list | sed 's/^/LAB-INFO   | /'
lab_info "Ferrite's console ($GUEST_LOG), last lines:"
lab_show "$GUEST_LOG" 20
lab_shutdown 60
if [ $SHUTDOWN_RC -eq 0 ] && [ $SHUTDOWN_GONE = yes ]; then
    lab_pass shutdown "xl shutdown -w took $SHUTDOWN_AFTER s"
else
    lab_fail shutdown "xl shutdown -w status $SHUTDOWN_RC after $SHUTDOWN_AFTER s; domain gone: $SHUTDOWN_GONE"
fi
lab_info "console after shutdown:"
lab_show "$GUEST_LOG" 3
lab_info "timings: xl create ${t_created} s, ready +${READY_AFTER} s, shutdown ${SHUTDOWN_AFTER} s"
