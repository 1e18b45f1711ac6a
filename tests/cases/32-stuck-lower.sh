#!/bin/sh
# A lower device that stops answering holds up only its own device (issue
# 16, item 11): the device table's lock is not held while a disk is added
# (its partition scan reads the lower device) or deleted. With the lower
# device of an attach suspended (device-mapper queues its I/O), status,
# another device's detach and another attach all answer; once it resumes
# the stuck attach completes.
. "$(dirname "$0")/../lib.sh"
slow=rtbslow
cleanup() {
    dmsetup resume $slow 2>/dev/null || true
    for i in 0 1 2 3; do rtbackupctl detach "$i" 2>/dev/null || true; done
    dmsetup remove $slow 2>/dev/null || true
}
trap cleanup EXIT

load
# No udevd in the test VM: let dmsetup create /dev/mapper nodes itself.
export DM_DISABLE_UDEV=1
d0=$(disk 0)
d1=$(disk 1)
dmsetup create $slow --table "0 $(blockdev --getsz "$d0") linear $d0 0"
dev1=$(rtbackupctl attach "$d1")

say "the lower device stops answering; an attach on it waits in its partition scan"
dmsetup suspend $slow
rtbackupctl attach /dev/mapper/$slow >/tmp/stuck-attach.out 2>&1 &
STUCK=$!
sleep 5
kill -0 $STUCK 2>/dev/null ||
    fail "the attach ended although its lower device is suspended: $(cat /tmp/stuck-attach.out)"

say "meanwhile the other devices are served"
timeout 60 rtbackupctl status >/dev/null || fail "status did not answer while an attach waits"
timeout 60 rtbackupctl detach "$dev1" || fail "detach of $dev1 did not answer while an attach waits"
dev1=$(timeout 60 rtbackupctl attach "$d1") || fail "attach of $d1 did not answer while an attach waits"
kill -0 $STUCK 2>/dev/null || fail "the stuck attach ended before its lower device resumed"

say "the lower device answers again: the stuck attach completes"
dmsetup resume $slow
wait $STUCK || fail "the attach failed: $(cat /tmp/stuck-attach.out)"
stuck=$(cat /tmp/stuck-attach.out)
[ -b "$stuck" ] || fail "the attach printed '$stuck', not a device"
[ "$(rtbackupctl status --json | jq '.devices | length')" = 2 ] || fail "not two devices attached"
rtbackupctl detach "$stuck"
rtbackupctl detach "$dev1"
dmsetup remove $slow
say "stuck lower device: OK"
