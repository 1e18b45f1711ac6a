#!/bin/sh
# Replication end to end on loopback: a filesystem workload and fio with
# verify on /dev/rtbackup0, `rtbackupctl sync`, then the image restored from
# the server is byte-identical to the lower device, fscks clean and holds
# the same files. The agent runs with its memory locked, as an I/O
# flusher.
. "$(dirname "$0")/../lib.sh"
trap cleanup_replication EXIT

replicate_device

# The agent cannot wait on the disk it drains: memory locked, and an I/O
# flusher (PF_MEMALLOC_NOIO, 0x80000, in /proc/PID/stat's flags).
grep -Eq '^VmLck:[[:space:]]*[1-9]' "/proc/$AGENT_PID_0/status" ||
    fail "the agent's memory is not locked: $(grep VmLck "/proc/$AGENT_PID_0/status")"
flags=$(cut -d' ' -f9 "/proc/$AGENT_PID_0/stat")
[ $((flags & 0x80000)) -ne 0 ] || fail "the agent is not an I/O flusher (flags $flags)"
say "agent: memory locked, I/O flusher"

say "ext4 with a file tree and fio verify through $dev"
mkfs.ext4 -q -F "$dev"
mount "$dev" "$MNT"
make_tree "$MNT/tree"
fio_verify "$MNT/fio.dat" 8M
umount "$MNT"

say "sync: everything written is durable on the server"
rtbackupctl sync --timeout 300 "$dev"
rtbackupctl status "$dev"
[ "$(lag 0)" = 0 ] || fail "lag is $(lag 0) records after sync"
rtbackupctl status --json "$dev" | jq -e '.devices[0].ring.agent_connected' >/dev/null ||
    fail "the agent is not reported connected"
restored_equals vol0 "$d0"

say "the restored image is a clean filesystem with the same files"
rtbackup-server restore --store "$STORE" --volume vol0 --output /tmp/vol0.img
fsck.ext4 -fn /tmp/vol0.img >/tmp/fsck.out 2>&1 || { cat /tmp/fsck.out; fail "fsck of the restored image"; }
mount -o loop,ro /tmp/vol0.img "$MNT"
check_tree "$MNT/tree"
umount "$MNT"
rm -f /tmp/vol0.img

say "raw random writes with verify straight on $dev, discards and write-zeroes"
fio_verify "$dev" 4M
blkdiscard -o $((64 << 20)) -l $((8 << 20)) "$dev"
blkdiscard -z -o $((80 << 20)) -l $((4 << 20)) "$dev"
rtbackupctl sync --timeout 300 "$dev"
restored_equals vol0 "$d0"
rtbackup-server status --store "$STORE" --json
say "replication end to end: OK"
