#!/bin/sh
# Marks on a mounted ext4 while the agent streams: `rtbackupctl mark` (a
# flush, then the mark) and `rtbackupctl mark --freeze` (the filesystem
# frozen around them, and thawed again) answer increasing record numbers,
# the ring has written those records, and the server acknowledges all of
# them: `rtbackupctl sync` ends with lag 0 once the filesystem is unmounted
# (mounted, ext4's lazy inode-table init and journal commits may write at
# any moment, after the sync as well).
. "$(dirname "$0")/../lib.sh"
trap cleanup_replication EXIT

load
d0=$(disk 0)
zero "$d0"
start_server
dev=$(rtbackupctl attach "$d0")
start_agent 0 vol0
mkfs.ext4 -q -F "$dev"
mount "$dev" "$MNT"

say "mark after writing a file"
dd if=/dev/urandom of="$MNT/a" bs=1M count=4 status=none
out=$(rtbackupctl mark "$dev" before-upgrade)
s1=${out#*as record }; s1=${s1%% of *}
[ "$out" = "mark before-upgrade recorded as record $s1 of $dev" ] || fail "mark printed '$out'"
say "$out"

say "mark with the filesystem frozen"
dd if=/dev/urandom of="$MNT/b" bs=1M count=4 status=none
s2=$(rtbackupctl mark --freeze "$MNT" --json rtbackup0 frozen.2 |
    jq -e --arg dev "$dev" 'select(.device == $dev and .name == "frozen.2" and .frozen) | .seq') ||
    fail "mark --freeze did not answer the expected JSON"
[ "$s2" -gt "$s1" ] || fail "second mark got record $s2, not after $s1"
timeout 60 touch "$MNT/written-after-thaw" || fail "$MNT is still frozen after the mark"
say "frozen.2 recorded as record $s2; $MNT was thawed"

w=$(written 0)
[ "$w" -ge "$s2" ] || fail "the ring has written $w records, not up to mark $s2"
say "sync: the marks are durable on the server"
umount "$MNT"
rtbackupctl sync --timeout 300 "$dev"
[ "$(lag 0)" = 0 ] || fail "lag is $(lag 0) records after sync"
say "marks: OK"
