# Shared helpers for /init and the mode scripts (busybox sh).
# Every line the host parses starts with "LAB-": keep them on one line each.

lab_t0=$(cut -d' ' -f1 /proc/uptime 2>/dev/null || echo 0)

# Seconds since the kernel started, with one decimal.
lab_uptime() { cut -d' ' -f1 /proc/uptime; }

# lab_step NAME TEXT...   a progress line; the host prints it with its own clock.
lab_step() { n=$1; shift; echo "LAB-STEP $n $(lab_uptime) $*"; }
lab_info() { echo "LAB-INFO $*"; }
lab_pass() { n=$1; shift; echo "LAB-TEST $n PASS $*"; }
lab_fail() { n=$1; shift; echo "LAB-TEST $n FAIL $*"; }
# A test that does not apply to this run (e.g. NVMe tests with the Linux peer): not a failure.
lab_skip() { n=$1; shift; echo "LAB-TEST $n SKIP $*"; }
lab_done() { echo "LAB-DONE $(lab_uptime)"; }

# Elapsed seconds (one decimal) since the uptime value $1.
lab_since() { awk -v a="$1" -v b="$(lab_uptime)" 'BEGIN { printf "%.1f", b - a }'; }

# run_timeout SECONDS CMD...   busybox timeout, status 124-ish on expiry.
run_timeout() { s=$1; shift; timeout "$s" "$@"; }

# The guest's xl config: Ferrite's, or, when the run carries the Linux peer
# (lab.sh run MODE linux-peer), the same settings pointing at the peer kernel.
lab_guest_cfg() {
    if [ -d /lab/peer ]; then
        sed -e 's|^kernel *=.*|kernel = "/lab/vmlinux"|' \
            -e 's|^memory *=.*|memory = 160|' /ferrite/configs/ferrite.cfg >/lab/peer/peer.cfg
        echo 'ramdisk = "/lab/peer/initrd.gz"' >>/lab/peer/peer.cfg
        echo 'extra = "console=hvc0 lab.role=peer loglevel=7"' >>/lab/peer/peer.cfg
        echo /lab/peer/peer.cfg
    else
        echo /ferrite/configs/ferrite.cfg
    fi
}

# persist_data SEED BYTES: the blk-persist test's data, a function of SEED
# (dom0 computes the expected sha256 with it, the test guest writes it).
persist_data() { seq 0 999999 | sed "s/^/ferrite-persist-$1-/" | head -c "$2"; }

# Print a file's last lines as LAB-INFO lines (so the host shows them).
lab_show() { tail -n "${2:-20}" "$1" 2>/dev/null | sed "s/^/LAB-INFO ${3:-}  | /"; }

GUEST_LOG=/var/log/xen/console/guest-ferrite.log

# lab_create CFG [KEY=VALUE...]: xl create with a timeout (the extra arguments are
# xl config lines, e.g. 'pci=["0000:00:04.0"]'); prints the domid or returns 1.
lab_create() {
    # stdout carries the domid back to the caller: progress goes to stderr (the console).
    t_create=$(lab_uptime)
    lab_step xl-create "xl create $*" >&2
    if ! timeout 90 xl create "$@" >/tmp/xl-create.log 2>&1; then
        lab_info "xl create failed:"
        lab_show /tmp/xl-create.log 20 >&2
        return 1
    fi
    lab_step xl-created "xl create returned after $(lab_since "$t_create") s" >&2
    xl domid ferrite
}

# lab_wait_ready DOMID SECONDS: wait for data/ferrite/state = ready; sets READY_AFTER.
lab_wait_ready() {
    t_ready=$(lab_uptime)
    end=$(awk -v a="$t_ready" -v s="$2" 'BEGIN { print a + s }')
    state=""
    while :; do
        state=$(xenstore-read "/local/domain/$1/data/ferrite/state" 2>/dev/null)
        [ "$state" = ready ] && break
        awk -v a="$(lab_uptime)" -v e="$end" 'BEGIN { exit !(a > e) }' && break
        xl list ferrite >/dev/null 2>&1 || { state="<domain is gone>"; break; }
        sleep 0.2
    done
    READY_AFTER=$(lab_since "$t_ready")
    READY_STATE=${state:-<absent>}
    [ "$state" = ready ]
}

# now_after SECONDS: dom0's uptime SECONDS from now; past T: whether it is later than T.
now_after() { awk -v a="$(lab_uptime)" -v s="$1" 'BEGIN { print a + s }'; }
past() { awk -v a="$(lab_uptime)" -v e="$1" 'BEGIN { exit !(a > e) }'; }

# wait_key PATH VALUE SECONDS: wait until the xenstore node PATH reads VALUE.
wait_key() {
    _wk_end=$(now_after "$3")
    while [ "$(xenstore-read "$1" 2>/dev/null)" != "$2" ]; do
        past "$_wk_end" && return 1
        sleep 0.1
    done
}

# wait_log FILE TEXT SECONDS: wait until FILE holds TEXT (fixed string).
wait_log() {
    _wl_end=$(now_after "$3")
    until grep -aqF "$2" "$1" 2>/dev/null; do
        past "$_wl_end" && return 1
        sleep 0.2
    done
}

# lab_wait_console TEXT SECONDS: wait until the guest's console log holds TEXT.
lab_wait_console() { wait_log "$GUEST_LOG" "$1" "$2"; }

# lab_shutdown SECONDS [GONE_SECONDS]: xl shutdown -w with a timeout, then up to
# GONE_SECONDS (default 15) for the domain to leave xl list; destroy on failure.
lab_shutdown() {
    t_shut=$(lab_uptime)
    timeout "$1" xl shutdown -w ferrite >/tmp/xl-shutdown.log 2>&1
    SHUTDOWN_RC=$?
    SHUTDOWN_AFTER=$(lab_since "$t_shut")
    # With a PCI device, libxl tears the device down after the domain died:
    # the domain can stay listed a few seconds after `xl shutdown -w` returns.
    i=0
    while [ $i -lt $((${2:-15} * 2)) ] && xl list ferrite >/dev/null 2>&1; do sleep 0.5; i=$((i + 1)); done
    SHUTDOWN_GONE_AFTER=$(lab_since "$t_shut")
    if xl list ferrite >/dev/null 2>&1; then
        SHUTDOWN_GONE=no
        xl destroy ferrite >/dev/null 2>&1
    else
        SHUTDOWN_GONE=yes
    fi
}

# fio_brief FILE: one line of figures from fio's JSON output (first job), e.g.
# "read 1234 IOPS 4.8 MiB/s mean 812 us"; directions without I/O are left out.
fio_brief() {
    awk '
        /^ *"(read|write|trim|sync)" : \{/ { d = $1; gsub(/"/, "", d); lat = 0; next }
        d != "read" && d != "write" { next }
        /^ *"bw" : / && !(d in bw) { v = $3; sub(/,/, "", v); bw[d] = v }
        /^ *"iops" : / && !(d in iops) { v = $3; sub(/,/, "", v); iops[d] = v }
        /^ *"total_ios" : / && !(d in ios) { v = $3; sub(/,/, "", v); ios[d] = v }
        /^ *"lat_ns" : \{/ { lat = 1; next }
        lat && /^ *"mean" : / && !(d in mean) { v = $3; sub(/,/, "", v); mean[d] = v; lat = 0 }
        END {
            n = split("read write", ds, " ")
            for (i = 1; i <= n; i++) {
                x = ds[i]
                if (ios[x] + 0 > 0)
                    printf "%s%s %.0f IOPS %.1f MiB/s mean %.0f us", sep, x, iops[x], bw[x] / 1024, mean[x] / 1000
                if (ios[x] + 0 > 0) sep = "; "
            }
            if (sep == "") printf "no I/O completed"
            printf "\n"
        }' "$1"
}

# agent_run DOMAIN SEQ TAG SECONDS OUTFILE FIO-OPTIONS...: have the bench agent
# (lab/dom0/bench-agent.sh) in DOMAIN run fio once as job SEQ; its JSON goes to
# OUTFILE. Sets AGENT_RC (fio's status, or nodomain/nostart/timeout) and
# AGENT_SECS; returns 0 only if fio ran and exited 0.
agent_run() {
    _dom=$1 _seq=$2 _tag=$3 _secs=$4 _out=$5
    shift 5
    _log=/var/log/xen/console/guest-$_dom.log
    AGENT_RC=nodomain AGENT_SECS=0
    _id=$(xl domid "$_dom" 2>/dev/null) || return 1
    [ -n "$_id" ] || return 1
    AGENT_RC=nostart
    # Resend until the agent starts (a write between its read and its watch is missed).
    _n=0
    while :; do
        xenstore-write "/local/domain/$_id/data/bench/cmd" "$_seq $_tag $*"
        wait_log "$_log" "BENCH-BEGIN $_seq " 5 && break
        _n=$((_n + 1))
        [ $_n -ge 6 ] && return 1
    done
    AGENT_RC=timeout
    wait_log "$_log" "BENCH-END $_seq " "$_secs" || return 1
    tr -d '\r' <"$_log" | awk -v s="$_seq" '
        $1 == "BENCH-BEGIN" && $2 == s { on = 1; next }
        $1 == "BENCH-END" && $2 == s { on = 0 }
        on && substr($0, 1, 8) == "BENCH-J " { print substr($0, 9) }' >"$_out"
    _end=$(tr -d '\r' <"$_log" | grep -a "^BENCH-END $_seq " | head -n 1)
    AGENT_RC=$(echo "$_end" | sed -n 's/.* rc=\([0-9]*\).*/\1/p')
    AGENT_SECS=$(echo "$_end" | sed -n 's/.* secs=\([0-9.]*\).*/\1/p')
    AGENT_RC=${AGENT_RC:-?} AGENT_SECS=${AGENT_SECS:-0}
    [ "$AGENT_RC" = 0 ]
}
