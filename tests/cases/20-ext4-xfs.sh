#!/bin/sh
# ext4 and xfs on /dev/rtbackupN under a real workload: a tree of files and
# fio with verification. fsck is clean, the bytes read through the filter
# equal the lower device, and after detach the lower device mounts with the
# same files.
. "$(dirname "$0")/../lib.sh"

load
d0=$(disk 0)
mkdir -p $MNT

for fs in ext4 xfs; do
    say "== $fs on $d0 through the filter"
    dev=$(rtbackupctl attach "$d0")
    [ "$(blockdev --getsize64 "$dev")" = "$(blockdev --getsize64 "$d0")" ] ||
        fail "capacity differs from the lower device"
    [ "$(blockdev --getss "$dev")" = "$(blockdev --getss "$d0")" ] ||
        fail "logical block size differs"
    [ "$(cat /sys/block/${dev#/dev/}/queue/stable_writes)" = 1 ] || fail "stable_writes not set"
    [ "$(cat /sys/block/${dev#/dev/}/queue/write_cache)" = "$(cat /sys/block/${d0#/dev/}/queue/write_cache)" ] ||
        fail "write cache mode differs from the lower device"
    case $fs in
    ext4) mkfs.ext4 -q -F "$dev" ;;
    xfs) mkfs.xfs -q -f "$dev" ;;
    esac
    mount "$dev" $MNT
    make_tree $MNT/tree
    fio_verify $MNT/fio.dat 32M
    rm $MNT/fio.dat
    fstrim -v $MNT || true
    sync
    expect_fail 'in use' rtbackupctl detach "$dev"
    umount $MNT
    case $fs in
    ext4) fsck.ext4 -fn "$dev" >/tmp/fsck.out 2>&1 || { cat /tmp/fsck.out; fail "fsck.ext4 found errors"; } ;;
    xfs) xfs_repair -n "$dev" >/tmp/fsck.out 2>&1 || { cat /tmp/fsck.out; fail "xfs_repair -n found errors"; } ;;
    esac
    say "fsck clean"
    same_bytes "$dev" "$d0"
    rtbackupctl status --json | jq -e '.devices[0].stats.writes > 0 and .devices[0].stats.flushes > 0 and .devices[0].stats.errors == 0' >/dev/null ||
        fail "counters do not show the workload: $(rtbackupctl status --json)"
    rtbackupctl detach "$dev"
    [ ! -e "$dev" ] || fail "$dev still exists after detach"
    mount "$d0" $MNT
    check_tree $MNT/tree
    umount $MNT
    say "after detach $d0 mounts with the same files"
done

unload
say "pass"
