#!/bin/sh
# Network faults between agent and server (issue 5): the server in its own
# network namespace behind a veth pair; a filesystem workload with fsync
# runs while the link gets netem delay and loss, goes down for 20 s, and
# the server is killed and restarted. Afterwards the backup is
# byte-identical to the device, and every sampled point restored from the
# journal is a consistent filesystem (fsck clean after journal replay).
. "$(dirname "$0")/../lib.sh"
netns_cleanup() {
    cleanup_replication
    ip netns del rtbsrv 2>/dev/null || true
}
trap netns_cleanup EXIT

say "the server in netns rtbsrv at 10.99.0.2, the agent on 10.99.0.1"
ip netns del rtbsrv 2>/dev/null || true
ip netns add rtbsrv
ip link add rtbv0 type veth peer name rtbv1
ip link set rtbv1 netns rtbsrv
ip addr add 10.99.0.1/24 dev rtbv0
ip link set rtbv0 up
ip netns exec rtbsrv ip addr add 10.99.0.2/24 dev rtbv1
ip netns exec rtbsrv ip link set rtbv1 up
ip netns exec rtbsrv ip link set lo up
SERVER_NETNS=rtbsrv
SERVER_HOST=10.99.0.2
replicate_device
mkfs.ext4 -q -F "$dev"
mkdir -p $MNT
mount "$dev" $MNT
ready=$(rtbackupctl mark --json "$dev" fs-ready | jq .seq)

# workload: files with fsync, in a loop until /tmp/nf.stop exists.
rm -f /tmp/nf.stop /tmp/nf.failed
(
    n=0
    while [ ! -f /tmp/nf.stop ]; do
        fio --name=nf --directory=$MNT --size=8M --rw=randwrite --bs=16k --fsync=8 \
            --ioengine=psync --output=/tmp/nf.out || { touch /tmp/nf.failed; break; }
        cp -a /usr/share/doc/fio $MNT/copy.$((n % 3)) 2>/dev/null || true
        rm -rf $MNT/copy.$(((n + 1) % 3))
        n=$((n + 1))
    done
) &
WL=$!
background $WL

say "netem: 50 ms delay, 5% loss"
tc qdisc add dev rtbv0 root netem delay 50ms loss 5%
sleep 30
say "link down for 20 s"
ip link set rtbv0 down
sleep 20
ip link set rtbv0 up
tc qdisc del dev rtbv0 root
sleep 15
say "kill -9 the server, restart it"
kill9 "$SERVER_PID"
sleep 5
start_server
sleep 15
touch /tmp/nf.stop
wait $WL
[ ! -f /tmp/nf.failed ] || { cat /tmp/nf.out; fail "the workload failed"; }
n=$(grep -c "connected; resuming" /tmp/agent0.log)
[ "$n" -ge 2 ] || fail "the agent connected only $n time(s)"
say "the agent connected $n times"

say "afterwards: the backup equals the device"
umount $MNT
rtbackupctl sync --timeout 600 "$dev"
restored_equals vol0 "$dev"

say "every sampled point after mkfs is a consistent filesystem"
rtbackup-server points --store "$STORE" --volume vol0 --json |
    jq -r --argjson r "$ready" '[.[] | select(.seq >= $r) | .seq] | . as $a |
        [range(0; 8) | $a[(. * (($a | length) - 1) / 7 | floor)]] | unique | .[]' >/tmp/nf.points
[ "$(wc -l </tmp/nf.points)" -ge 4 ] || fail "only $(wc -l </tmp/nf.points) points to check"
while read -r seq; do
    rtbackup-server restore --store "$STORE" --volume vol0 --at "seq:$seq" --output /tmp/nf.img >/dev/null ||
        fail "restore of seq $seq failed"
    # Replay the filesystem's journal (a crash-consistent point may need
    # it), then check without changing anything.
    e2fsck -y -E journal_only /tmp/nf.img >/tmp/nf.fsck 2>&1 || [ $? -le 1 ] ||
        { cat /tmp/nf.fsck; fail "journal replay of seq $seq"; }
    e2fsck -fn /tmp/nf.img >/tmp/nf.fsck 2>&1 || { cat /tmp/nf.fsck; fail "seq $seq is not a clean filesystem"; }
done </tmp/nf.points
rm -f /tmp/nf.img
say "$(wc -l </tmp/nf.points) points checked; network faults: OK"
