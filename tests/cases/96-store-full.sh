#!/bin/sh
# The backup host's disk fills up (issue 16, item 11). The store on a
# 40 MiB tmpfs, two devices streaming into it: once it is full the server
# refuses the batches that do not fit (store-full), storing and
# acknowledging none of them and poisoning no volume; the agents keep the
# records in their rings and retry. When room is made (the tmpfs grows),
# both volumes catch up with no restart, and each restores byte-identical.
. "$(dirname "$0")/../lib.sh"
FULL=/tmp/rtbfull
cleanup() {
    cleanup_replication
    umount "$FULL" 2>/dev/null || true
}
trap cleanup EXIT

load
mkdir -p "$FULL"
mount -t tmpfs -o size=40M,mode=0700 rtbfull "$FULL"
STORE=$FULL/store
d0=$(disk 0)
d1=$(disk 1)
zero "$d0"
zero "$d1"
start_server
dev0=$(rtbackupctl attach --ring-size 64M "$d0")
dev1=$(rtbackupctl attach --ring-size 64M "$d1")
start_agent 0 vol0
start_agent 1 vol1

say "2 x 24 MiB of writes into a 40 MiB store"
dd if=/dev/urandom of="$dev0" bs=1M count=24 oflag=direct status=none
dd if=/dev/urandom of="$dev1" bs=1M count=24 oflag=direct status=none
i=0
until grep -q "store's disk is full" /tmp/server.log; do
    i=$((i + 1)); [ $i -lt 120 ] || { tail -20 /tmp/server.log; fail "the store never filled"; }
    sleep 1
done
sleep 5
kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited on a full disk"
left=$(($(lag 0) + $(lag 1)))
[ "$left" -gt 0 ] || fail "no record waits although the store is full"
grep -q "store-full" /tmp/agent0.log /tmp/agent1.log ||
    fail "no agent was told store-full: $(tail -3 /tmp/agent0.log)"
! grep -qi "poison\|fsync failed" /tmp/server.log || fail "the full disk poisoned a volume"
rtbackupctl status
say "store full: $left records wait in the rings, none lost"

say "room is made: both volumes catch up without a restart"
mount -o remount,size=512M "$FULL"
rtbackupctl sync --timeout 600 "$dev0"
rtbackupctl sync --timeout 600 "$dev1"
kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited"
restored_equals vol0 "$d0"
restored_equals vol1 "$d1"
say "store full: OK"
