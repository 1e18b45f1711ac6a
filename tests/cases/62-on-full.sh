#!/bin/sh
# What a full ring does, and changing it on a live device (issue 16, item
# 10). A 1 MiB ring with the agent stopped, attached with --on-full block
# and no bound:
#  - a writer waits for room; killed (kill -9), it ends at once and the
#    ring tracks (its write goes through and is resynced: nothing is lost);
#  - `set --block-timeout 3s`: a writer waits 3 s, then the ring tracks
#    and the writer finishes;
#  - `set --block-timeout 0`, a writer waits; a mark waits too, and killed,
#    it ends and the ring goes on recording; `set --on-full track`: the
#    writer goes on at once.
# After each, the agent resyncs, and the backup equals the device byte for
# byte. Bad settings are refused with a message and change nothing.
. "$(dirname "$0")/../lib.sh"
trap cleanup_replication EXIT

ATTACH_ARGS="--ring-size 1M --on-full block --block-timeout 0" replicate_device
ringjq() { rtbackupctl status --json "$dev" | jq -r ".devices[0].ring | $1"; }
# kernel_said TEXT: the kernel logged TEXT since the last call.
LOGGED=$(dmesg | wc -l)
kernel_said() {
    dmesg | tail -n +"$((LOGGED + 1))" | grep -qF "$1" || fail "the kernel did not log '$1'"
    LOGGED=$(dmesg | wc -l)
}

# waiting COUNT PID WHAT: wait until COUNT tasks wait for room, PID (WHAT)
# among them: it must not end meanwhile.
waiting() {
    i=0
    until [ "$(ringjq .waiting_writers)" -ge "$1" ]; do
        i=$((i + 1)); [ $i -lt 120 ] || fail "$3 does not wait for room"
        kill -0 "$2" 2>/dev/null || fail "$3 ended although the ring is full"
        sleep 0.5
    done
}
# blocked_writer OFFSET_64K: a writer of 8 MiB of O_DIRECT writes at
# OFFSET_64K (its pid in WRITER), once it waits for room.
blocked_writer() {
    dd if=/dev/urandom of="$dev" bs=64k count=128 seek="$1" oflag=direct status=none &
    WRITER=$!
    background $WRITER
    waiting 1 $WRITER "the writer"
}
# ended_within SECONDS PID WHAT: PID (WHAT) ends within SECONDS.
ended_within() {
    i=0
    while kill -0 "$2" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt $(($1 * 10)) ] || fail "$3 still runs $1 s later"
        sleep 0.1
    done
}
# resync_and_compare: the agent resyncs, and the backup equals the device.
resync_and_compare() {
    [ "$(ringjq .mode)" = tracking ] || fail "the ring is $(ringjq .mode), not tracking"
    start_agent 0 vol0
    rtbackupctl sync --timeout 300 "$dev"
    [ "$(ringjq .mode)" = recording ] || fail "mode $(ringjq .mode) after the resync"
    restored_equals vol0 "$d0"
    stop "$AGENT_PID_0"
}

say "block, no bound: a writer waits until it is killed"
stop "$AGENT_PID_0"
rtbackupctl status "$dev" | grep -qF "block (as long as it takes)" ||
    fail "status does not show the policy: $(rtbackupctl status "$dev")"
blocked_writer 0
sleep 5
kill -0 $WRITER 2>/dev/null || fail "the writer ended although nobody drains the ring"
kill -9 $WRITER
ended_within 10 $WRITER "the killed writer"
kernel_said "rtbackup0: ring full and a waiting writer killed: tracking writes"
[ "$(ringjq .overflows)" = 1 ] || fail "$(ringjq .overflows) overflows counted, not 1"
resync_and_compare

say "block for 3 s: the writer waits, then the ring tracks and it finishes"
rtbackupctl set "$dev" --block-timeout 3s
[ "$(ringjq '[.on_full, .block_timeout_ms] | join(" ")')" = "block 3000" ] ||
    fail "set gave $(ringjq '[.on_full, .block_timeout_ms]')"
kernel_said "rtbackup0: when full: block, then track after 3000 ms"
waits=$(ringjq .full_waits)
blocked_writer 128
ended_within 120 $WRITER "the writer"
wait $WRITER || fail "the writer failed"
kernel_said "rtbackup0: ring full for the block timeout (3000 ms): tracking writes"
[ "$(ringjq .full_waits)" -gt "$waits" ] || fail "the writer never waited"
resync_and_compare

say "block, no bound again; then set track: the waiting writer goes on"
rtbackupctl set "$dev" --block-timeout 0
blocked_writer 256
sleep 5
kill -0 $WRITER 2>/dev/null || fail "the writer ended with no bound and nobody draining"
say "a mark waits for room too; killed, it fails and the ring goes on recording"
rtb-mark "$dev" killed-mark >/tmp/rtb-mark.out 2>&1 &
MARKER=$!
background $MARKER
waiting 2 $MARKER "the mark"
kill -9 $MARKER
ended_within 10 $MARKER "the killed mark"
[ "$(ringjq .mode)" = recording ] || fail "a killed mark left the ring $(ringjq .mode)"
kill -0 $WRITER 2>/dev/null || fail "the writer ended with the ring full"
rtbackupctl set "$dev" --on-full track --json | jq -e '.on_full == "track"' >/dev/null ||
    fail "set --json does not show track"
ended_within 60 $WRITER "the writer"
wait $WRITER || fail "the writer failed"
kernel_said "rtbackup0: when full: track"
resync_and_compare

say "bad settings are refused and change nothing"
before=$(ringjq '[.on_full, .block_timeout_ms] | join(" ")')
expect_fail 'nothing to change' rtbackupctl set "$dev"
expect_fail 'longer than 7days' rtbackupctl set "$dev" --on-full block --block-timeout 8d
expect_fail 'not a duration' rtbackupctl set "$dev" --block-timeout soon
expect_fail "invalid value 'sometimes'" rtbackupctl set "$dev" --on-full sometimes
expect_fail 'no such rtbackup device' rtbackupctl set rtbackup7 --on-full block
[ "$(ringjq '[.on_full, .block_timeout_ms] | join(" ")')" = "$before" ] ||
    fail "a refused set changed the policy to $(ringjq '[.on_full, .block_timeout_ms]')"
say "on-full: OK"
