#!/bin/sh
# Bad input gets a clear message and a non-zero exit, and changes nothing:
# module not loaded, paths that are not usable block devices, a device
# already attached, a partition in use, marks with bad names or for a
# wrong device or mount point, raw ioctls with garbage, and rmmod while the
# control device is open.
. "$(dirname "$0")/../lib.sh"

d0=$(disk 0); d1=$(disk 1)

say "module not loaded: every command says to modprobe"
lsmod | grep -q '^rtbackup ' && unload
expect_fail 'modprobe rtbackup' rtbackupctl status
expect_fail 'modprobe rtbackup' rtbackupctl attach "$d0"
expect_fail 'modprobe rtbackup' rtbackupctl detach rtbackup0

load
before=$(table)
[ "$before" = "[]" ] || fail "fresh module has devices: $before"

say "paths that cannot be attached"
expect_fail 'no such file' rtbackupctl attach /dev/does-not-exist
expect_fail 'not a block device' rtbackupctl attach /etc/hostname
expect_fail 'not a block device' rtbackupctl attach /tmp
expect_fail 'not a block device' rtbackupctl attach /dev/null
expect_fail 'usage|required' rtbackupctl attach
expect_fail 'not an rtbackup device name' rtbackupctl detach sda
expect_fail 'no such rtbackup device' rtbackupctl detach rtbackup7
expect_fail 'no such rtbackup device' rtbackupctl status 3
expect_fail 'no such rtbackup device' rtbackupctl mark rtbackup7 m1
expect_fail 'not an rtbackup device name' rtbackupctl mark sda m1
[ "$(table)" = "$before" ] || fail "device table changed"

say "a device already attached, and stacking on ourselves"
dev=$(rtbackupctl attach "$d0")
[ "$dev" = /dev/rtbackup0 ] || fail "attach printed '$dev'"
one=$(table)
expect_fail "already attached as /dev/rtbackup0" rtbackupctl attach "$d0"
expect_fail "itself an rtbackup device" rtbackupctl attach /dev/rtbackup0
say "the lower device cannot be mounted or written around the filter"
mkfs.ext4 -q -F /dev/rtbackup0
mkdir -p $MNT
if mount "$d0" $MNT 2>/dev/null; then umount $MNT; fail "mounted $d0 around the filter"; fi
if dd if=/dev/zero of="$d0" bs=4k count=1 oflag=direct status=none 2>/tmp/dd.err; then
    fail "wrote to $d0 around the filter"
fi
say "plain write to $d0 refused: $(cat /tmp/dd.err)"
[ "$(table)" = "$one" ] || fail "device table changed"

say "marks with bad names, or freezing a filesystem of another device, are refused"
w=$(written 0)
expect_fail 'invalid mark name "vol@x": only A-Z' rtbackupctl mark rtbackup0 vol@x
expect_fail 'invalid mark name ".x": starts with a dot' rtbackupctl mark rtbackup0 .x
expect_fail '/tmp is not on /dev/rtbackup0' rtbackupctl mark --freeze /tmp rtbackup0 m1
[ "$(written 0)" = "$w" ] || fail "a refused mark was recorded ($w -> $(written 0) records)"
rtbackupctl detach /dev/rtbackup0
dd if=/dev/zero of="$d0" bs=4k count=1 oflag=direct status=none || fail "$d0 not writable after detach"

say "a partition in use"
printf 'label: dos\n,64M\n,\n' | sfdisk -q "$d1"
partprobe "$d1" 2>/dev/null || blockdev --rereadpt "$d1"
udevadm settle 2>/dev/null || sleep 1
p1=${d1}1
[ -b "$p1" ] || fail "no partition $p1"
mkfs.ext4 -q -F "$p1"
mount "$p1" $MNT
expect_fail "in use \(partition ${p1#/dev/} mounted at $MNT\)" rtbackupctl attach "$d1"
expect_fail "in use \(mounted at $MNT\)" rtbackupctl attach "$p1"
umount $MNT
say "an unused partition can be attached"
rtbackupctl attach "$p1" >/dev/null
rtbackupctl status | grep -q "$p1" || fail "status does not show $p1"
rtbackupctl detach "$p1"
wipefs -qa "$d1"
[ "$(table)" = "$before" ] || fail "device table changed"

say "a zoned device is refused"
modprobe null_blk nr_devices=1 zoned=1 gb=1 zone_size=64
[ "$(cat /sys/block/nullb0/queue/zoned)" = host-managed ] || fail "null_blk is not zoned"
expect_fail 'zoned block devices are not supported' rtbackupctl attach /dev/nullb0
rmmod null_blk
[ "$(table)" = "$before" ] || fail "device table changed"

say "raw ioctls with garbage arguments, with and without a device attached"
rtb-ioctl-garbage
rtbackupctl attach "$d0" >/dev/null
rtb-ioctl-garbage
rtbackupctl detach rtbackup0

say "a non-root caller is refused"
expect_fail 'permission denied|must run as root' setpriv --reuid=65534 --regid=65534 --clear-groups rtbackupctl attach "$d0"
[ "$(table)" = "$before" ] || fail "device table changed"

say "the module cannot be unloaded while its control device is open"
exec 3</dev/rtbackup-control
expect_fail 'in use' rmmod rtbackup
exec 3<&-

unload
say "pass"
