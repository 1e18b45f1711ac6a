#!/bin/sh
# A partitioned disk attached whole shows its partitions as
# /dev/rtbackupNpM; a mounted partition keeps the whole device busy.
. "$(dirname "$0")/../lib.sh"

load
d1=$(disk 1)
say "partition $d1, then attach the whole disk"
printf 'label: dos\n,96M\n,\n' | sfdisk -q "$d1"
dev=$(rtbackupctl attach "$d1")
[ -b "${dev}p1" ] && [ -b "${dev}p2" ] || fail "no ${dev}p1 and ${dev}p2: $(ls /dev/rtbackup*)"
[ "$(blockdev --getsize64 "${dev}p2")" = "$(blockdev --getsize64 "${d1}2")" ] ||
    fail "${dev}p2 and ${d1}2 differ in size"
mkfs.ext4 -q -F "${dev}p2"
mount "${dev}p2" "$MNT"
make_tree "$MNT/tree"
expect_fail 'in use' rtbackupctl detach "$dev"
umount "$MNT"
same_bytes "$dev" "$d1"
rtbackupctl detach "$dev"
[ ! -e "${dev}p1" ] || fail "${dev}p1 left after detach"
mount "${d1}2" "$MNT"
check_tree "$MNT/tree"
umount "$MNT"
say "after detach ${d1}2 mounts with the same files"
wipefs -qa "$d1"
unload
say "pass"
