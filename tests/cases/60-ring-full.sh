#!/bin/sh
# A 1 MiB ring with no agent: writers block once it is full (back-pressure),
# nothing is dropped; when the agent starts they are released, and the
# restored image is byte-identical.
. "$(dirname "$0")/../lib.sh"
trap cleanup_replication EXIT

load
d0=$(disk 0)
zero "$d0"
start_server
dev=$(rtbackupctl attach --ring-size 1M --on-full block --block-timeout 0 "$d0")
# The initial sync (a new attach tracks writes until it is done).
start_agent 0 vol0
stop "$AGENT_PID_0"

say "write 8 MiB through a 1 MiB ring with no agent running"
dd if=/dev/urandom of="$dev" bs=64k count=128 oflag=direct status=none &
DD=$!
background $DD
sleep 10
kill -0 "$DD" 2>/dev/null || fail "dd finished although the ring is full and nobody drains it"
rtbackupctl status "$dev"
rtbackupctl status --json "$dev" | jq -e '.devices[0].ring | .waiting_writers >= 1 and .full_waits >= 1 and .used_bytes > 786432' >/dev/null ||
    fail "the ring does not report a blocked writer"
say "the writer waits; the ring is nearly full"

start_agent 0 vol0
i=0
while kill -0 "$DD" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 600 ] || fail "dd still blocked 60 s after the agent started"
    sleep 0.1
done
wait "$DD" || fail "dd failed"
say "the writer was released"
rtbackupctl sync --timeout 120 "$dev"
restored_equals vol0 "$d0"
say "ring full: OK"
