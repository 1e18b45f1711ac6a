#!/bin/sh
# The protected host's clock is not trusted (Documentation/security.rst,
# "Time"). Root on the host steps the clock back three days, writes and
# syncs, then steps it forward again: with the default retention (24h),
# a server that went by the records' times would fold the whole history
# into the base image on its next pass. It must not: the mark taken before
# the step restores exactly, point times never go backwards, and `points`
# shows when the backup host received each one.
. "$(dirname "$0")/../lib.sh"
# The clock is set back to where it was, whatever happens.
real_clock() { date -s "@$(($(date +%s) + 3 * 86400))" >/dev/null; }
clock_back=""
trap '[ -z "$clock_back" ] || real_clock; cleanup_replication' EXIT

replicate_device --log-level debug
mkfs.ext4 -q -F "$dev"
mount "$dev" "$MNT"
make_tree "$MNT/good"
(cd "$MNT" && find good -type f -print0 | sort -z | xargs -0 md5sum) >/tmp/good.md5
rtbackupctl mark --freeze "$MNT" "$dev" good
rtbackupctl sync --timeout 300 "$dev"
good_time=$(rtbackup-server points --store "$STORE" --volume vol0 --json |
    jq -r '.[] | select(.marks == ["good"]) | .time_ns')
[ -n "$good_time" ] || fail "no point for mark good"

say "the clock steps back three days; writes, a mark, sync"
date -s "@$(($(date +%s) - 3 * 86400))" >/dev/null
clock_back=1
rm -rf "$MNT/good/d1"
make_tree "$MNT/after"
sync
rtbackupctl mark "$dev" after
rtbackupctl sync --timeout 300 "$dev"
say "the clock steps forward again; the server's maintenance runs"
real_clock
clock_back=""
# The server's maintenance wakes every second; it retains by its clock.
sleep 5
kill -0 "$SERVER_PID" || fail "the server died"

rtbackup-server points --store "$STORE" --volume vol0 --json >/tmp/points.json
jq -e '[.[] | .marks[]] == ["good", "after"]' /tmp/points.json >/dev/null ||
    fail "marks held: $(jq -c '[.[] | .marks[]]' /tmp/points.json), want good and after"
# Host times and received times never go backwards; the points after the
# step carry the last honest host time.
jq -e '[.[1:][] | .time_ns] as $t | [.[1:][] | .received_ns] as $r
       | ($t == ($t | sort)) and ($r == ($r | sort))' /tmp/points.json >/dev/null ||
    fail "point times go backwards: $(jq -c '[.[] | [.seq, .time, .received]]' /tmp/points.json)"
after_time=$(jq -r '.[] | select(.marks == ["after"]) | .time_ns' /tmp/points.json)
[ "$after_time" -ge "$good_time" ] || fail "the point of mark after is dated before mark good's"
grep -q "host time was before an earlier point" /tmp/server.log ||
    fail "the server did not log the clamped times"

rtbackup-server restore --store "$STORE" --volume vol0 --at mark:good --output /tmp/at.img >/dev/null ||
    fail "mark good no longer restores"
mkdir -p /tmp/atmnt
mount -o loop,ro /tmp/at.img /tmp/atmnt || fail "cannot mount the image at mark good"
(cd /tmp/atmnt && md5sum --quiet -c /tmp/good.md5) || { umount /tmp/atmnt; fail "files at mark good differ"; }
umount /tmp/atmnt
rm -f /tmp/at.img
say "mark good restores exactly after the host's clock went back and forth"

umount "$MNT"
rtbackupctl sync --timeout 300 "$dev"
restored_equals vol0 "$d0"
say "clock: OK"
