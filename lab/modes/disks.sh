#!/bin/sh
# MODE disks: Ferrite with two NVMe controllers, three namespaces, a GPT; four
# Linux guests at once on four different extents.  One Xen boot.
#
# Controller 0 (00:04.0): nvme0n1, 64 MiB, 512-byte LBAs, a host-written GPT:
#   p1 "disks-alpha" 1 MiB..17 MiB, p2 "disks-beta" 18 MiB..34 MiB (a 1 MiB gap).
# Controller 1 (00:05.0): nvme1n1, 32 MiB, 512-byte LBAs; nvme1n2, 16 MiB, 4 KiB LBAs.
# Every image starts as a background pattern (tests/mkimage.py): every byte
# Ferrite or a guest should not write is checked afterwards from the host
# (tests/check_disks.py, run.sh's lab:disks-image).
#
#   disks-list          data/ferrite/disks names the five disks, sizes, LBA sizes, serials
#   disks-three-guests  dA on partlabel=disks-alpha, dB on nvme0n1p2, dC on nvme1n2
#                       (4 KiB): each writes seeded data (1 MiB at the start and
#                       1 MiB at the end of its disk) and reads it back; dC first
#                       makes, mounts and checks an ext4 with 4 KiB blocks.  dom0
#                       checks the sha256s against the seeds, Ferrite's backend
#                       nodes (sectors, sector-size) and the used-by column.
#   disks-ro            dR on nvme1n1 with access=ro: ro=1, its writes fail,
#                       backend mode=r / VDISK_READONLY, used-by says ro.
# The seed is printed as "LAB-INFO disks-seed S"; region data = persist_data
# (lab/dom0/common.sh) with seed S followed by a1/a2 (dA head/tail), b1/b2, c1/c2.
# LAB-QEMU-NVME: 64M 32M+16M/4096
# LAB-NVME-FILL: nvme0n1 --pattern nvme0n1 --part disks-alpha:6b1f3c1e-a1a1-4a00-8000-00000000a001:1M:16M --part disks-beta:6b1f3c1e-b2b2-4b00-8000-00000000b002:18M:16M
# LAB-NVME-FILL: nvme1n1 --pattern nvme1n1
# LAB-NVME-FILL: nvme1n2 --pattern nvme1n2
# LAB-EXPECT: ready disks-list disks-three-guests disks-ro shutdown
. /lab/common.sh
PCIS="0000:00:04.0 0000:00:05.0"
GCFG=/ferrite/configs/guest-linux.cfg
CON=/var/log/xen/console
MIB=1048576
t_all=$(lab_uptime)

for p in $PCIS; do
    if xl pci-assignable-add $p >/tmp/pci.log 2>&1; then lab_info "NVMe $p made assignable"
    else lab_info "xl pci-assignable-add $p failed: $(tr '\n' ' ' </tmp/pci.log)"; fi
done
cfg=$(lab_guest_cfg)
if ! FDOM=$(lab_create "$cfg" "pci=['0000:00:04.0','0000:00:05.0']"); then
    for n in ready disks-list disks-three-guests disks-ro shutdown; do lab_fail $n "xl create of Ferrite failed"; done
    exit 1
fi
t_created=$(lab_since "$t_all")
if lab_wait_ready "$FDOM" 30; then
    lab_pass ready "Ferrite (domain $FDOM, two NVMe controllers) ready $READY_AFTER s after xl create"
else
    lab_fail ready "domain $FDOM state='$READY_STATE' after $READY_AFTER s (expected 'ready')"
fi
t_ready=$READY_AFTER
lab_info "Ferrite's console, disk lines:"
grep -aE "nvme|GPT|partition|disk" "$GUEST_LOG" | tail -n 20 | sed 's/^/LAB-INFO ferrite | /'

# xenstore-read escapes the newlines between the lines (\n): undo that.
disks() { printf '%b\n' "$(xenstore-read /local/domain/$FDOM/data/ferrite/disks 2>/dev/null)" | grep .; }
# dline NAME: NAME's line of data/ferrite/disks.
dline() { disks | awk -v n="$1" '$1 == n'; }
dfield() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

# ------------------------------------------------------------------ disks-list
listing=$(disks)
echo "$listing" | sed 's/^/LAB-INFO disks | /'
why=""
for want in "nvme0n1 $((64 * MIB)) 512 ferrite-nvme0 -" "nvme0n1p1 $((16 * MIB)) 512 ferrite-nvme0 disks-alpha" \
            "nvme0n1p2 $((16 * MIB)) 512 ferrite-nvme0 disks-beta" "nvme1n1 $((32 * MIB)) 512 ferrite-nvme1 -" \
            "nvme1n2 $((16 * MIB)) 4096 ferrite-nvme1 -"; do
    set -- $want
    l=$(echo "$listing" | awk -v n="$1" '$1 == n')
    if [ -z "$l" ]; then why="$why no line for $1;"; continue; fi
    [ "$(dfield "$l" bytes)" = "$2" ] || why="$why $1 bytes=$(dfield "$l" bytes) (expected $2);"
    [ "$(dfield "$l" lba)" = "$3" ] || why="$why $1 lba=$(dfield "$l" lba) (expected $3);"
    [ "$(dfield "$l" serial)" = "$4" ] || why="$why $1 serial=$(dfield "$l" serial) (expected $4: controllers in PCI order);"
    [ "$5" = - ] || [ "$(dfield "$l" partlabel)" = "$5" ] || why="$why $1 partlabel='$(dfield "$l" partlabel)' (expected $5);"
    [ "$(dfield "$l" used-by)" = - ] || why="$why $1 used-by=$(dfield "$l" used-by) before any guest;"
done
n=$(echo "$listing" | grep -c .)
[ "$n" = 5 ] || why="$why $n lines (expected 5);"
if [ -z "$why" ]; then lab_pass disks-list "5 disks: $(echo "$listing" | awk '{printf "%s%s %s %s", s, $1, $2, $3; s = "; "}')"
else lab_fail disks-list "$why"; fi

# ------------------------------------------------------------------ the guests
seed=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
lab_info "disks-seed $seed"
# 64 KiB blocks: a 16 MiB disk is 256 of them; head = 0..16, tail = 240..256.
regions() { echo "lab.regions=${seed}${1}1:0:16,${seed}${1}2:240:16"; }
extra0=$(sed -n 's/^extra *= *"\(.*\)"/\1/p' $GCFG)
# gstart NAME TARGET-SPEC PHASE EXTRA...: xl create of the test guest as NAME.
gstart() {
    _n=$1 _d=$2 _p=$3
    shift 3
    _x=$(echo "$extra0" | sed "s/lab\.phase=[a-z]*/lab.phase=$_p/")
    rm -f $CON/guest-$_n.log
    lab_step guest-create "xl create $_n: disk '$_d', lab.phase=$_p $*"
    if timeout 90 xl create $GCFG "name=\"$_n\"" "memory=200" "disk=['backend=ferrite, vdev=xvda, format=raw, $_d']" \
            "extra=\"$_x $*\"" >/tmp/xl-$_n.log 2>&1; then
        lab_step guest-created "$_n is domain $(xl domid $_n 2>/dev/null)"
    else
        lab_info "xl create $_n failed:"; lab_show /tmp/xl-$_n.log 10 "$_n"
    fi
}
t_g=$(lab_uptime)
gstart dA "target=partlabel=disks-alpha" regions "$(regions a)"
gstart dB "target=nvme0n1p2" regions "$(regions b)"
gstart dC "target=nvme1n2" regions "$(regions c) lab.blocksize=4096"
gstart dR "access=ro, target=nvme1n1" ro
t_created_g=$(lab_since "$t_g")
# Wait for all four (they run at once).
end=$(now_after 300)
for g in dA dB dC dR; do
    if ! wait_log $CON/guest-$g.log "GUEST-DONE" $(awk -v e="$end" -v a="$(lab_uptime)" 'BEGIN { s = e - a; print (s > 1 ? int(s) : 1) }'); then
        lab_info "$g did not finish within 300 s of the first xl create"
    fi
done
t_guests=$(lab_since "$t_g")
lab_step guests-done "the four guests finished after $t_guests s"
for g in dA dB dC dR; do
    tr -d '\r' <$CON/guest-$g.log 2>/dev/null | grep -aE "GUEST-(RESULT|FEATURES)" | sed "s/^.*GUEST-/LAB-INFO $g | /"
done
listing=$(disks)
lab_info "data/ferrite/disks with the guests connected:"
echo "$listing" | sed 's/^/LAB-INFO disks | /'

# gres NAME RESULT: the detail of "GUEST-RESULT RESULT ..." in NAME's log.
gres() { tr -d '\r' <$CON/guest-$1.log 2>/dev/null | sed -n "s/^.*GUEST-RESULT $2 //p" | head -n 1; }
# check_guest NAME DISK LBA LETTER: sets WHY/DETAIL for one writer.
check_guest() {
    _g=$1 _disk=$2 _lba=$3 _l=$4
    _id=$(xl domid $_g 2>/dev/null)
    if [ -z "$_id" ]; then WHY="$WHY $_g: no domain;"; return; fi
    _be=/local/domain/$FDOM/backend/vbd/$_id/51712
    _sec=$(xenstore-read $_be/sectors 2>/dev/null) _ss=$(xenstore-read $_be/sector-size 2>/dev/null)
    [ "$_sec" = $((16 * MIB / 512)) ] || WHY="$WHY $_g: backend sectors='$_sec' (expected $((16 * MIB / 512)));"
    [ "$_ss" = "$_lba" ] || WHY="$WHY $_g: backend sector-size='$_ss' (expected $_lba);"
    _u=$(dfield "$(echo "$listing" | awk -v n="$_disk" '$1 == n')" used-by)
    case ",$_u," in *[!0-9]$_id/51712:rw,*) ;; *) WHY="$WHY $_g (domain $_id): $_disk used-by='$_u' (expected its vbd, rw);" ;; esac
    for k in 1 2; do
        _s=$seed$_l$k
        _want=$(persist_data $_s $((16 * 65536)) | sha256sum | cut -d' ' -f1)
        _r=$(gres $_g region-$_s)
        _got=$(echo "$_r" | sed -n 's/.*sha256=\([0-9a-f]*\).*/\1/p')
        [ -n "$_got" ] && [ "$_got" = "$_want" ] || WHY="$WHY $_g region $_s: read back '${_got:-<none>}' ($_r), expected $_want;"
    done
    DETAIL="$DETAIL $_g (domain $_id) on $_disk: sectors=$_sec sector-size=$_ss, 2 x 1 MiB written and read back;"
}
WHY="" DETAIL=""
check_guest dA nvme0n1p1 512 a
check_guest dB nvme0n1p2 512 b
check_guest dC nvme1n2 4096 c
fs=$(gres dC fs-bs4096)
case $fs in PASS*) DETAIL="$DETAIL dC ext4 -b 4096: ${fs#PASS }" ;; *) WHY="$WHY dC ext4 (mke2fs -b 4096): '${fs:-<no result>}';" ;; esac
lbs=$(tr -d '\r' <$CON/guest-dC.log 2>/dev/null | sed -n 's/.*GUEST-FEATURES.*logical_block_size=\([0-9]*\).*/\1/p' | head -n 1)
[ "$lbs" = 4096 ] || WHY="$WHY dC sees logical_block_size='$lbs' (expected 4096);"
if [ -z "$WHY" ]; then lab_pass disks-three-guests "seed $seed;$DETAIL"
else
    lab_fail disks-three-guests "$WHY"
    for g in dA dB dC; do lab_show $CON/guest-$g.log 12 $g; done
    lab_show "$GUEST_LOG" 20 ferrite
fi

# disks-ro
WHY=""
id=$(xl domid dR 2>/dev/null)
r=$(gres dR ro)
case $r in PASS*ro=1\ write=failed\ write-after-setrw=failed*) ;; *) WHY="$WHY guest: '${r:-<no result>}';" ;; esac
if [ -n "$id" ]; then
    be=/local/domain/$FDOM/backend/vbd/$id/51712
    mode=$(xenstore-read $be/mode 2>/dev/null) info=$(xenstore-read $be/info 2>/dev/null)
    [ "$mode" = r ] || WHY="$WHY backend mode='$mode' (expected r);"
    [ $(( ${info:-0} & 4 )) -ne 0 ] || WHY="$WHY backend info='$info' lacks VDISK_READONLY (4);"
    u=$(dfield "$(echo "$listing" | awk '$1 == "nvme1n1"')" used-by)
    case ",$u," in *[!0-9]$id/51712:ro,*) ;; *) WHY="$WHY nvme1n1 used-by='$u' (expected domain $id's vbd, ro);" ;; esac
else
    WHY="$WHY no dR domain;"
fi
if [ -z "$WHY" ]; then lab_pass disks-ro "dR (domain $id) on nvme1n1 access=ro: ${r#PASS }; backend mode=$mode info=$info; used-by=$u"
else lab_fail disks-ro "$WHY"; lab_show $CON/guest-dR.log 12 dR; fi

# ------------------------------------------------------------------ down
t0=$(lab_uptime)
for g in dA dB dC dR; do timeout 60 xl shutdown -w $g >/dev/null 2>&1 || xl destroy $g >/dev/null 2>&1 & done
wait
lab_info "guests shut down in $(lab_since "$t0") s"
lab_info "Ferrite's vbd lines:"
grep -aE "vbd " "$GUEST_LOG" | tail -n 16 | sed 's/^/LAB-INFO ferrite | /'
grep -aE "WARN|ERROR|refused" "$GUEST_LOG" | head -n 10 | sed 's/^/LAB-INFO ferrite-warn | /'
# Ferrite's shutdown, watched for longer than lab_shutdown's 15 s: with two
# controllers passed through, how long the domain stays listed is evidence.
foff=$(wc -l <"$GUEST_LOG")
t_shut=$(lab_uptime)
timeout 60 xl shutdown -w ferrite >/tmp/xl-shutdown.log 2>&1
SHUTDOWN_RC=$?
SHUTDOWN_AFTER=$(lab_since "$t_shut")
SHUTDOWN_GONE=no
end=$(now_after 60)
while ! past "$end"; do
    xl list ferrite >/dev/null 2>&1 || { SHUTDOWN_GONE=yes; break; }
    sleep 0.5
done
SHUTDOWN_GONE_AFTER=$(lab_since "$t_shut")
poweroff=no
sed -n "$((foff + 1)),\$p" "$GUEST_LOG" | grep -aqF "ferrite: poweroff" && poweroff=yes
if [ $SHUTDOWN_RC -eq 0 ] && [ $SHUTDOWN_GONE = yes ] && [ $poweroff = yes ]; then
    lab_pass shutdown "xl shutdown -w took $SHUTDOWN_AFTER s, domain gone after $SHUTDOWN_GONE_AFTER s, console has 'ferrite: poweroff'"
else
    lab_fail shutdown "xl shutdown -w status $SHUTDOWN_RC after $SHUTDOWN_AFTER s; domain gone: $SHUTDOWN_GONE after $SHUTDOWN_GONE_AFTER s; 'ferrite: poweroff' on its console: $poweroff"
    lab_show /tmp/xl-shutdown.log 5 xl
    lab_info "xl list:"; xl list 2>&1 | sed 's/^/LAB-INFO xl-list | /'
    lab_info "Ferrite's console since xl shutdown:"
    sed -n "$((foff + 1)),\$p" "$GUEST_LOG" | tail -n 25 | sed 's/^/LAB-INFO ferrite | /'
    lab_info "xl dmesg, last lines:"; xl dmesg 2>/dev/null | tail -n 25 | sed 's/^/LAB-INFO xen | /'
    lab_info "dom0 process crashes (the lab's known problem) and dom0's last kernel lines:"
    dmesg 2>/dev/null | grep -E 'segfault at|traps:|general protection' | tail -n 5 | sed 's/^/LAB-INFO dom0-crash | /'
    dmesg 2>/dev/null | tail -n 10 | sed 's/^/LAB-INFO dmesg | /'
    xl destroy ferrite >/dev/null 2>&1
fi
lab_info "timings: Ferrite xl create ${t_created} s, ready +${t_ready} s; four guests created in ${t_created_g} s, done after ${t_guests} s; shutdown ${SHUTDOWN_AFTER} s; mode $(lab_since "$t_all") s in all"
