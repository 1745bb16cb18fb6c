#!/bin/sh
# Linux stand-in for Ferrite inside a PV guest: same xenstore protocol, same
# console lines ("ferrite: ready", "ferrite: poweroff").  /sbin/poweroff is
# replaced so that `xl shutdown` (Linux's orderly_poweroff runs /sbin/poweroff)
# prints the last line before the domain goes away.
rm -f /sbin/poweroff   # a symlink to busybox: writing through it would clobber busybox
cat >/sbin/poweroff <<'P'
#!/bin/sh
echo "ferrite: poweroff" >/dev/hvc0
sleep 0.2
exec /bin/busybox poweroff -f
P
chmod +x /sbin/poweroff
exec labtool peer
