#!/bin/sh
# xfs on /dev/rtbackupN under a real workload, without an agent: a tree of
# files and fio with verification. fsck is clean, the bytes read through the
# filter equal the lower device, and after detach the lower device mounts
# with the same files. (ext4 through the filter is in 50-replicate,
# 70-history and 75-rollback; one run here keeps the suite within CI's
# time.)
. "$(dirname "$0")/../lib.sh"

load
# The third disk: the one large enough for mkfs.xfs (300 MiB).
d0=$(disk 2)
mkdir -p $MNT

for fs in xfs; do
    say "== $fs on $d0 through the filter"
    # No agent drains the ring in this case: make it hold all the writes.
    dev=$(rtbackupctl attach --ring-size 256M "$d0")
    [ "$(blockdev --getsize64 "$dev")" = "$(blockdev --getsize64 "$d0")" ] ||
        fail "capacity differs from the lower device"
    up=/sys/block/${dev#/dev/}/queue lo=/sys/block/${d0#/dev/}/queue
    for attr in logical_block_size physical_block_size discard_max_bytes \
        write_zeroes_max_bytes; do
        [ "$(cat "$up/$attr")" = "$(cat "$lo/$attr")" ] ||
            fail "$attr is $(cat "$up/$attr"), the lower device's $(cat "$lo/$attr")"
    done
    [ "$(cat "$up/stable_writes")" = 1 ] || fail "stable_writes not set"
    # Flushes are consistency points of the journal: the disk always has a
    # write cache with FUA, whatever the lower device has.
    [ "$(cat "$up/write_cache")" = "write back" ] || fail "write_cache is $(cat "$up/write_cache")"
    [ "$(cat "$up/fua")" = 1 ] || fail "fua is not set"
    # The largest request fits in a quarter of the ring.
    [ "$(cat "$up/max_hw_sectors_kb")" -le $((256 * 1024 / 4)) ] ||
        fail "max_hw_sectors_kb $(cat "$up/max_hw_sectors_kb") exceeds a quarter of the ring"
    say "queue limits match $d0 (write_zeroes_max_bytes $(cat "$up/write_zeroes_max_bytes"), discard_max_bytes $(cat "$up/discard_max_bytes"))"
    dd if=/dev/urandom of="$dev" bs=64k count=16 oflag=direct status=none
    blkdiscard -z -o 0 -l 1048576 "$dev"
    cmp -n 1048576 "$dev" /dev/zero || fail "blkdiscard -z did not zero $dev"
    if [ "$(cat "$lo/write_zeroes_max_bytes")" -gt 0 ]; then
        rtbackupctl status --json | jq -e '.devices[0].stats.write_zeroes > 0' >/dev/null ||
            fail "BLKZEROOUT did not reach the device as write-zeroes"
    fi
    case $fs in
    ext4) mkfs.ext4 -q -F "$dev" ;;
    xfs) mkfs.xfs -q -f "$dev" ;;
    esac
    mount "$dev" $MNT
    make_tree $MNT/tree
    fio_verify $MNT/fio.dat 8M
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
