#!/bin/sh
# A detach during a resync (issue 5): the agent reads the chunks it sends
# from the lower device, not from /dev/rtbackupN, so `rtbackupctl detach`
# is not refused (EBUSY) because of its reads. The agent then ends cleanly,
# and the unfinished resync leaves the backup at its point before the
# attach (here a new volume: zeroes).
. "$(dirname "$0")/../lib.sh"
trap cleanup_replication EXIT

load
d1=$(disk 1)
size=$(blockdev --getsize64 "$d1")
dd if=/dev/urandom of="$d1" bs=1M count=$((size >> 20)) oflag=direct status=none
start_server
dev=$(rtbackupctl attach "$d1")

say "a full initial sync, slowed down, and a detach while it reads"
# shellcheck disable=SC2086
rtbackup-agent --device "$dev" --server $SERVER_HOST:$PORT --volume vol0 $CLIENT_ARGS \
    --initial-sync full --max-rate 2M >>/tmp/agent0.log 2>&1 &
A=$!
background $A
i=0
until grep -q "resync pass" /tmp/agent0.log; do
    i=$((i + 1)); [ $i -lt 120 ] || { cat /tmp/agent0.log; fail "no resync pass started"; }
    kill -0 $A 2>/dev/null || { cat /tmp/agent0.log; fail "the agent exited"; }
    sleep 1
done
sleep 3
[ "$(mode 0)" = initial-sync ] || fail "mode $(mode 0) during the initial sync"
rtbackupctl detach "$dev" || { tail -20 /tmp/agent0.log; fail "detach during the resync was refused"; }
i=0
while kill -0 $A 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 120 ] || fail "the agent did not end after the detach"
    sleep 1
done
wait $A || { tail -20 /tmp/agent0.log; fail "the agent failed after the detach"; }

say "the backup stays at its point before the attach"
rtbackup-server restore --store "$STORE" --volume vol0 --output /tmp/detach.img || fail "restore failed"
cmp -n "$size" /tmp/detach.img /dev/zero || fail "the backup is not the empty volume it was before the attach"
rm -f /tmp/detach.img
say "detach during a resync: OK"
