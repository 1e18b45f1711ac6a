#!/bin/sh
# --spool (issue 5): the server is away for a long outage while a
# filesystem workload writes 12 times the ring's size. The agent moves the
# records from the filling ring into its spool on another disk, so the
# writers keep going (without it, with --on-full block, they would wait
# for the server) and nothing falls back to a resync; the ring reports
# them as spooled, not as on the server. The agent is killed (-9) while
# they are only in the spool; restarted, it sends them first once the
# server is back: every record arrives once and in order, and the backup
# is byte-identical to the device.
. "$(dirname "$0")/../lib.sh"
SPOOL_MNT=/tmp/spool-mnt
spool_cleanup() {
    cleanup_replication
    umount $SPOOL_MNT 2>/dev/null || true
}
trap spool_cleanup EXIT

ATTACH_ARGS="--ring-size 2M --on-full block" replicate_device
ringjq() { rtbackupctl status --json "$dev" | jq -r ".devices[0].ring | $1"; }
spool_files() { find $SPOOL_MNT/spool -name '*.spool' | wc -l; }

say "the spool on another disk; the agent restarted with it"
d2=$(disk 2)
mkfs.ext4 -q -F "$d2"
mkdir -p $SPOOL_MNT
mount "$d2" $SPOOL_MNT
stop "$AGENT_PID_0"
start_agent 0 vol0 --spool $SPOOL_MNT/spool --spool-max 512M

mkfs.ext4 -q -F "$dev"
mkdir -p $MNT
mount "$dev" $MNT
make_tree $MNT/before
sync
rtbackupctl sync --timeout 300 "$dev"

say "the server is killed; 24 MiB of writes with fsync through a 2 MiB ring"
kill9 "$SERVER_PID"
# What the server acknowledged before it died, once the agent has read
# the last of it (ext4's background writes after mkfs may still have been
# acknowledged after the sync above).
i=0
until [ "$(ringjq .agent_connected)" = false ]; do
    i=$((i + 1)); [ $i -lt 300 ] || fail "the agent still reports a connection to the killed server"
    sleep 0.1
done
before=$(ringjq .last_acked_seq)
timeout 900 fio --name=spool --directory=$MNT --size=12M --numjobs=2 --rw=write --bs=64k \
    --fsync=16 --ioengine=psync --output=/tmp/fio-spool.out ||
    { cat /tmp/fio-spool.out; rtbackupctl status "$dev"; tail -20 /tmp/agent0.log;
      fail "fio failed or blocked (status $?)"; }
make_tree $MNT/after
sync
rtbackupctl status "$dev"
[ "$(ringjq .mode)" = recording ] || fail "mode $(ringjq .mode) during the outage"
[ "$(ringjq .overflows)" = 0 ] || fail "the ring overflowed"
[ "$(ringjq .last_acked_seq)" = "$before" ] ||
    fail "the ring says the server holds seq $(ringjq .last_acked_seq), it acknowledged $before before it died"
spooled=$(ringjq .spooled_records)
spool_bytes=$(du -sb $SPOOL_MNT/spool | cut -f1)
# 24 MiB of 64 KiB writes: about 384 records; all but what the ring holds.
[ "$spooled" -gt 200 ] || fail "only $spooled records spooled"
[ "$spool_bytes" -gt $((16 << 20)) ] || fail "only $spool_bytes bytes in the spool"
[ "$(spool_files)" -ge 1 ] || fail "no spool file"
grep -q "moved to the spool" /tmp/agent0.log || fail "the agent logged no spooling"
say "$spooled records in the spool ($spool_bytes bytes)"

say "the agent is killed with records only in its spool, and restarted"
kill9 "$AGENT_PID_0"
start_agent 0 vol0 --spool $SPOOL_MNT/spool --spool-max 512M
start_server
umount $MNT
rtbackupctl sync --timeout 900 "$dev"
grep -q "sending the spooled records first" /tmp/agent0.log || fail "the spool was not sent"
[ "$(spool_files)" = 0 ] || fail "spool files left after the sync"
[ "$(ringjq .spooled_records)" = 0 ] || fail "records still counted as spooled"

say "every record once, in order, no resync after the outage; identical"
rtbackup-server log --store "$STORE" --volume vol0 --json >/tmp/spool-log.json
jq -e --argjson b "$before" '[.[] | select(.seq > $b)] |
    (map(select(.op == "RESYNC")) | length == 0) and
    ([.[].seq] == [range(.[0].seq; .[0].seq + length)]) and (.[0].seq == $b + 1)' /tmp/spool-log.json >/dev/null ||
    fail "the journal after seq $before is not the records in order"
restored_equals vol0 "$dev"
mount "$dev" $MNT
check_tree $MNT/after
umount $MNT
say "spool: OK"
