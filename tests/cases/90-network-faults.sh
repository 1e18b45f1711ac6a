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

# diagnose_difference IMG: what differs between IMG and $dev, and what the
# journal holds for those blocks.
diagnose_difference() {
    cmp -l "$1" "$dev" | awk '{ b = int(($1 - 1) / 4096); if (b != last) { print b; last = b } }' |
        head -8 >/tmp/nf.blocks
    say "differing 4 KiB blocks: $(tr '\n' ' ' </tmp/nf.blocks) ($(cmp -l "$1" "$dev" | wc -l) bytes)"
    rtbackupctl status --json "$dev"
    rtbackup-server status --store "$STORE" || true
    rtbackup-server points --store "$STORE" --volume vol0 | tail -5
    rtbackup-server log --store "$STORE" --volume vol0 --json >/tmp/nf.log.json || true
    say "journal: $(jq length /tmp/nf.log.json) records; last 12:"
    jq -c '.[-12:][] | [.seq, .op, .sector, .sectors, .time]' /tmp/nf.log.json
    while read -r b; do
        say "block $b: the last 6 records covering it"
        jq -c --argjson s $((b * 8)) '[.[] | select(.sectors > 0 and .sector <= $s + 7 and .sector + .sectors > $s)] |
            .[-6:][] | [.seq, .op, .sector, .sectors, .time]' /tmp/nf.log.json
    done </tmp/nf.blocks
    say "agent log (last 40 lines)"; tail -40 /tmp/agent0.log
    say "server log (last 40 lines)"; tail -40 /tmp/server.log
}

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
# Nothing else may hold the filesystem (a mount namespace that copied the
# mount would keep writing back to the device after this umount).
[ "$(rtbackupctl status --json "$dev" | jq '.devices[0].open_count')" = 0 ] ||
    fail "$dev is still open after umount"
rtbackupctl sync --timeout 600 "$dev"
rtbackup-server restore --store "$STORE" --volume vol0 --output /tmp/nf-latest.img || fail "restore failed"
sync
echo 3 >/proc/sys/vm/drop_caches
if ! cmp /tmp/nf-latest.img "$dev"; then
    diagnose_difference /tmp/nf-latest.img
    fail "the restore differs from $dev"
fi
rm -f /tmp/nf-latest.img
say "the restore equals $dev"

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
