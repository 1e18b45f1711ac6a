#!/bin/sh
# Two devices replicating to one server at once, each to its own volume.
. "$(dirname "$0")/../lib.sh"
trap cleanup_replication EXIT

load
d0=$(disk 0); d1=$(disk 1)
zero "$d0"; zero "$d1"
start_server
a=$(rtbackupctl attach "$d0")
b=$(rtbackupctl attach "$d1")
start_agent 0 alpha
start_agent 1 beta

say "fio on both devices at once"
pids=""
for dev in "$a" "$b"; do
    fio --name=two --filename="$dev" --size=8M --rw=randwrite --bs=8k --ioengine=libaio \
        --iodepth=8 --direct=1 --verify=crc32c --do_verify=1 --verify_state_save=0 \
        --output=/tmp/two-${dev##*/}.out &
    pids="$pids $!"
    background $!
done
for p in $pids; do wait "$p" || { cat /tmp/two-*.out; fail "fio failed"; }; done
rtbackupctl sync --timeout 300 "$a"
rtbackupctl sync --timeout 300 "$b"
rtbackupctl status
restored_equals alpha "$d0"
restored_equals beta "$d1"
say "two devices, one server: OK"
