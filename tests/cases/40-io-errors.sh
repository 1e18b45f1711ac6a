#!/bin/sh
# I/O errors injected below the filter (dm-flakey, fail_make_request) reach
# the caller unchanged and nothing hangs.
. "$(dirname "$0")/../lib.sh"

load
d0=$(disk 0); d1=$(disk 1)
modprobe dm-flakey
# No udevd in the test VM: let dmsetup create /dev/mapper nodes itself.
export DM_DISABLE_UDEV=1

say "dm-flakey: writes fail while the table errors them"
sectors=$(blockdev --getsz "$d0")
dmsetup create rtbflaky --table "0 $sectors linear $d0 0"
dev=$(rtbackupctl attach /dev/mapper/rtbflaky)
dd if=/dev/urandom of="$dev" bs=4k count=64 oflag=direct status=none || fail "write failed before fault"
dmsetup load rtbflaky --table "0 $sectors flakey $d0 0 0 3600 1 error_writes"
dmsetup resume rtbflaky
if timeout 60 dd if=/dev/zero of="$dev" bs=4k count=16 oflag=direct status=none 2>/tmp/dd.err; then
    fail "write succeeded through an erroring dm-flakey"
fi
grep -q "Input/output error" /tmp/dd.err || fail "write failed but not with EIO: $(cat /tmp/dd.err)"
say "write error reached the caller: $(cat /tmp/dd.err | head -1)"
timeout 60 dd if="$dev" of=/dev/null bs=4k count=16 iflag=direct status=none || fail "reads failed with error_writes"
errors=$(rtbackupctl status --json | jq '.devices[0].stats.errors')
[ "$errors" -gt 0 ] || fail "error counter is $errors"
dmsetup load rtbflaky --table "0 $sectors flakey $d0 0 0 3600"
dmsetup resume rtbflaky
if timeout 60 dd if="$dev" of=/dev/null bs=4k count=16 iflag=direct status=none 2>/tmp/dd.err; then
    fail "read succeeded through a failing dm-flakey"
fi
say "read error reached the caller: $(head -1 /tmp/dd.err)"
dmsetup load rtbflaky --table "0 $sectors linear $d0 0"
dmsetup resume rtbflaky
dd if=/dev/urandom of="$dev" bs=4k count=64 oflag=direct status=none || fail "write failed after the fault cleared"
rtbackupctl detach "$dev"
dmsetup remove rtbflaky

say "fail_make_request on the lower disk"
fi=/sys/kernel/debug/fail_make_request
echo 100 >$fi/probability
echo -1 >$fi/times
echo 0 >$fi/verbose
echo 1 >$fi/interval
dev=$(rtbackupctl attach "$d1")
dd if=/dev/urandom of="$dev" bs=4k count=16 oflag=direct status=none || fail "write failed before fault"
echo 1 >/sys/block/${d1#/dev/}/make-it-fail
if timeout 60 dd if=/dev/zero of="$dev" bs=4k count=16 oflag=direct status=none 2>/tmp/dd.err; then
    fail "write succeeded with fail_make_request on $d1"
fi
grep -q "Input/output error" /tmp/dd.err || fail "not EIO: $(cat /tmp/dd.err)"
if timeout 60 dd if="$dev" of=/dev/null bs=4k count=16 iflag=direct status=none 2>/tmp/dd.err; then
    fail "read succeeded with fail_make_request on $d1"
fi
say "read and write errors reached the caller"
echo 0 >/sys/block/${d1#/dev/}/make-it-fail
dd if=/dev/urandom of="$dev" bs=4k count=16 oflag=direct status=none || fail "write failed after the fault cleared"
rtbackupctl detach "$dev"
unload
say "pass"
