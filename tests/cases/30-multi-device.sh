#!/bin/sh
# Several devices at once; attach/detach in a loop while another device is
# under I/O and replicating; detach of a mounted or open device is refused
# with EBUSY and changes nothing; rmmod is refused while a device is
# attached; the replicated device restores byte-identical at the end.
. "$(dirname "$0")/../lib.sh"
trap cleanup_replication EXIT

load
d0=$(disk 0); d1=$(disk 1); d2=$(disk 2)
zero "$d0"
start_server

say "three devices attached at once"
for d in "$d0" "$d1" "$d2"; do rtbackupctl attach "$d"; done
start_agent 0 vol0
[ "$(rtbackupctl status --json | jq '.devices | length')" = 3 ] || fail "status does not list 3 devices"
rtbackupctl status
rtbackupctl status --json | jq -e --arg d "$d1" '.devices[] | select(.device == "/dev/rtbackup1") | .lower == $d' >/dev/null ||
    fail "rtbackup1 is not over $d1"

say "rmmod is refused while devices are attached"
if rmmod rtbackup 2>/tmp/rmmod.err; then fail "rmmod succeeded with devices attached"; fi
[ -c /dev/rtbackup-control ] || fail "control device gone after refused rmmod"
[ "$(rtbackupctl status --json | jq '.devices | length')" = 3 ] || fail "devices lost"

say "detach of a mounted device is refused and changes nothing"
mkfs.ext4 -q -F /dev/rtbackup0
mkdir -p $MNT
mount /dev/rtbackup0 $MNT
before=$(table)
expect_fail 'in use' rtbackupctl detach /dev/rtbackup0
[ "$(table)" = "$before" ] || fail "device table changed"
echo still-writable >$MNT/probe && sync || fail "mounted filesystem broken after refused detach"

say "detach of a device held open is refused"
exec 3<>/dev/rtbackup1
expect_fail 'in use' rtbackupctl detach rtbackup1
exec 3>&-
[ "$(table)" = "$before" ] || fail "device table changed"

say "attach/detach loop on two devices while rtbackup0 is under fio"
rtbackupctl detach rtbackup1
rtbackupctl detach rtbackup2
rm -f /tmp/bg.stop /tmp/bg.failed
(
    runs=0
    while [ ! -f /tmp/bg.stop ]; do
        fio --name=bg --filename=$MNT/bg.dat --size=4M --rw=randwrite --bs=4k \
            --ioengine=libaio --iodepth=8 --direct=1 --verify=crc32c \
            --verify_fatal=1 --do_verify=1 --verify_state_save=0 \
            --output=/tmp/bg.out || { touch /tmp/bg.failed; break; }
        grep -q "err= 0" /tmp/bg.out || { touch /tmp/bg.failed; break; }
        runs=$((runs + 1))
        echo $runs >/tmp/bg.runs
    done
) &
fio_pid=$!
background $fio_pid
n=0
while [ $n -lt 5 ]; do
    a=$(rtbackupctl attach "$d1")
    b=$(rtbackupctl attach "$d2")
    dd if=/dev/urandom of="$a" bs=64k count=16 oflag=direct status=none
    dd if="$b" of=/dev/null bs=64k count=16 iflag=direct status=none
    rtbackupctl detach "$a"
    rtbackupctl detach "$b"
    n=$((n + 1))
done
say "$n attach/detach cycles done"
touch /tmp/bg.stop
wait "$fio_pid"
[ ! -f /tmp/bg.failed ] || { cat /tmp/bg.out; fail "background fio saw errors"; }
say "background fio: $(cat /tmp/bg.runs 2>/dev/null || echo 0) verified runs"
[ -f /tmp/bg.runs ] || fail "background fio never completed a run"
umount $MNT
rtbackupctl sync --timeout 300 /dev/rtbackup0
restored_equals vol0 "$d0"
stop "$AGENT_PID_0"   # its ring file holds the module
rtbackupctl detach rtbackup0
[ "$(table)" = "[]" ] || fail "devices left: $(table)"
unload
load
unload
say "pass"
