#!/bin/sh
# Rollback after a simulated attack: a marked file tree is overwritten in
# random places; `rtbackupctl rollback --to mark:clean` (refused while the
# filesystem is mounted) writes back only the changed ranges, after which
# the device is byte-identical to the restore of the mark, fscks clean,
# holds the original files, and the server's latest image follows.
. "$(dirname "$0")/../lib.sh"
trap cleanup_replication EXIT

replicate_device
mkfs.ext4 -q -F "$dev"
mount "$dev" "$MNT"
make_tree "$MNT/tree"
rtbackupctl mark --freeze "$MNT" "$dev" clean

say "the attack: random 4 KiB overwrites inside every file of the tree"
find "$MNT/tree" -type f -size +4k -print0 | xargs -0 perl -e '
    open(my $rnd, "<", "/dev/urandom") or die;
    for my $f (@ARGV) {
        my $size = -s $f;
        open(my $h, "+<", $f) or die "$f: $!";
        for (1 .. 3) {
            read($rnd, my $junk, 4096);
            seek($h, int(rand($size - 4096)), 0);
            print $h $junk;
        }
        close($h);
    }'
sync
(cd "$MNT/tree" && md5sum --quiet -c "/tmp/$TEST.md5" >/dev/null 2>&1) && fail "the attack changed nothing"
expect_fail 'mounted or open' rtbackupctl rollback "$dev" --to mark:clean --server 127.0.0.1:$PORT --volume vol0 $CLIENT_ARGS
umount "$MNT"

say "rollback to mark:clean"
rtbackupctl rollback "$dev" --to mark:clean --server 127.0.0.1:$PORT --volume vol0 $CLIENT_ARGS --dry-run
rtbackupctl rollback "$dev" --to mark:clean --server 127.0.0.1:$PORT --volume vol0 $CLIENT_ARGS --json >/tmp/rollback.json ||
    fail "rollback failed"
cat /tmp/rollback.json
written=$(jq .bytes_written /tmp/rollback.json)
size=$(jq .device_bytes /tmp/rollback.json)
[ "$written" -gt 0 ] || fail "the rollback wrote nothing"
[ "$written" -lt $((size / 10)) ] || fail "the rollback wrote $written bytes of $size: more than the damage"
jq -e '.marks == ["clean"]' /tmp/rollback.json >/dev/null || fail "the rollback did not use mark clean"
say "rollback wrote $written of $size bytes"

rtbackup-server restore --store "$STORE" --volume vol0 --at mark:clean --output /tmp/clean.img >/dev/null
same_bytes /tmp/clean.img "$dev"
rm -f /tmp/clean.img
fsck.ext4 -fn "$dev" >/tmp/fsck.out 2>&1 || { cat /tmp/fsck.out; fail "fsck after the rollback"; }
mount "$dev" "$MNT"
check_tree "$MNT/tree"
umount "$MNT"
say "after the rollback the device equals mark clean, fscks clean, and holds the original files"
rtbackupctl sync --timeout 300 "$dev"
restored_equals vol0 "$d0"
say "rollback: OK"
