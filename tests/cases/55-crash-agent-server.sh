#!/bin/sh
# kill -9 of the agent and then of the server while fio writes: nothing is
# lost (the ring keeps every record until the server has it durably), the
# agent resumes from the last acknowledged record, each record is applied
# once, and the restored image is byte-identical to the device. While the
# agent is down, the ring refuses an acknowledgement whose seq claims
# records it still holds (rtb-ack-check).
. "$(dirname "$0")/../lib.sh"
trap cleanup_replication EXIT

replicate_device

say "fio random writes (with overwrites) in the background until stopped"
# Time-based for longer than the case may last: it is stopped after the
# crashes, however slow the machine.
fio --name=bg --filename="$dev" --size=96M --rw=randwrite --bs=4k --ioengine=libaio \
    --iodepth=8 --direct=1 --time_based --runtime=3000 --output=/tmp/bg.out &
FIO=$!
background $FIO
WRITER_PID=$FIO
wait_written 0 1000
running() { kill -0 "$FIO" 2>/dev/null || { cat /tmp/bg.out; fail "fio ended before the $1"; }; }

say "kill -9 the agent mid-stream (after $(written 0) records)"
running "agent was killed"
kill9 "$AGENT_PID_0"
wait_written 0 $(($(written 0) + 500))
before=$(lag 0)
[ "$before" -gt 0 ] || fail "no records waiting in the ring while the agent is down"
say "$before records wait in the ring"
durable=$(rtbackupctl status --json "$dev" | jq '.devices[0].ring.last_acked_seq')
rtb-ack-check "$dev" || fail "the ring took an acknowledgement that claims records it still holds"
[ "$(rtbackupctl status --json "$dev" | jq '.devices[0].ring.last_acked_seq')" = "$durable" ] ||
    fail "refused acknowledgements changed the durable seq ($durable)"
say "restart the agent"
start_agent 0 vol0
wait_written 0 $(($(written 0) + 500))

say "kill -9 the server mid-stream (after $(written 0) records)"
running "server was killed"
kill9 "$SERVER_PID"
wait_written 0 $(($(written 0) + 500))
running "server was restarted"
start_server
wait_written 0 $(($(written 0) + 500))
running "end"
# SIGINT: fio stops its jobs and reports; its writes so far all count.
kill -INT "$FIO"
wait "$FIO" || true
if grep -q "err=" /tmp/bg.out && ! grep -q "err= 0" /tmp/bg.out; then
    cat /tmp/bg.out; fail "fio reported errors"
fi

rtbackupctl sync --timeout 300 "$dev"
[ "$(lag 0)" = 0 ] || fail "lag is $(lag 0) after sync"
grep -Ei "resum|reconnect" /tmp/agent0.log | tail -3
restored_equals vol0 "$d0"
say "crash of agent and server: OK"
