#!/bin/sh
# Initial sync, verify, repair, re-attach (issue 5): a 256 MiB device full
# of data is attached and copied while fio writes to it; the restore equals
# the device. One chunk of the server's copy is corrupted: `rtbackupctl
# verify` finds exactly that chunk, `--repair` resyncs it, and a verify
# then finds nothing. Detached and attached again, the agent's verify
# sends no chunk.
. "$(dirname "$0")/../lib.sh"
trap cleanup_replication EXIT

load
d2=$(disk 2)
printf 'label: dos\n,256M\n' | sfdisk -q "$d2"
partprobe "$d2" 2>/dev/null || blockdev --rereadpt "$d2"
part=${d2}1
[ "$(blockdev --getsize64 "$part")" = $((256 << 20)) ] || fail "$part is not 256 MiB"

say "a 256 MiB device, its first half random data, attached and copied under a write load"
# Half of it data, as a filesystem in use would hold: the initial verify
# reads and checksums all 256 MiB and sends the chunks that hold data.
dd if=/dev/urandom of="$part" bs=1M count=128 oflag=direct status=none
start_server
dev=$(rtbackupctl attach "$part")
[ "$(mode 0)" = initial-sync ] || fail "a new attach is $(mode 0), not initial-sync"
fio --name=load --filename="$dev" --offset=64M --size=16M --rw=randwrite --bs=4k \
    --ioengine=libaio --iodepth=8 --direct=1 --verify=crc32c --verify_fatal=1 \
    --do_verify=1 --verify_state_save=0 --output=/tmp/fio-load.out &
FIO=$!
background $FIO
start_agent 0 vol0
wait $FIO || { cat /tmp/fio-load.out; fail "fio during the initial sync failed"; }
grep -q "chunks that differ from the backup" /tmp/agent0.log || fail "no initial verify in the agent's log"
rtbackupctl sync --timeout 900 "$dev"
restored_equals vol0 "$dev"
# shellcheck disable=SC2086
vs() { rtbackupctl verify "$dev" --server 127.0.0.1:$PORT --volume vol0 $CLIENT_ARGS "$@"; }
# (A verify of the good backup would read 256 MiB for what the next one
# shows as well: of the 4096 chunks it reports exactly the corrupted one.)

say "one chunk of the server's copy corrupted"
stop "$SERVER_PID"
chunk=1000
printf 'corrupted' | dd of="$STORE/volumes/vol0/image" bs=1 seek=$((chunk * 65536 + 4096)) \
    conv=notrunc status=none
start_server
if vs --json >/tmp/verify1.json 2>/tmp/verify1.err; then fail "verify did not report the corruption"; fi
grep -q -- "--repair" /tmp/verify1.err || fail "verify's error does not say how to repair: $(cat /tmp/verify1.err)"
[ "$(jq -c '[.differences[].chunk]' /tmp/verify1.json)" = "[$chunk]" ] ||
    fail "verify found $(jq -c '[.differences[].chunk]' /tmp/verify1.json), not [$chunk]"
say "verify found exactly chunk $chunk"
vs --repair --json >/tmp/verify2.json || fail "verify --repair failed"
jq -e '.repaired == true' /tmp/verify2.json >/dev/null || fail "not repaired: $(cat /tmp/verify2.json)"
restored_equals vol0 "$dev"
say "repaired: the backup equals the device again"

say "detach and attach again: the verify sends nothing"
rtbackupctl sync --timeout 300 "$dev"
stop "$AGENT_PID_0"
rtbackupctl detach "$dev"
: >/tmp/agent0.log
dev=$(rtbackupctl attach "$part")
start_agent 0 vol0
grep -q "chunks=0 .*chunks that differ\|chunks that differ.*chunks=0" /tmp/agent0.log ||
    { grep "differ" /tmp/agent0.log; fail "the re-attach's verify found differences"; }
# Nothing was sent and nothing written since the backup was compared above.
rtbackupctl sync --timeout 300 "$dev"

say "initial sync, verify, repair: OK"
