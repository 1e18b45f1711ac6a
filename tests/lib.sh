# Shared helpers for the VM test cases (sourced; POSIX sh).
# Each case runs as root in the test VM with RTB_DISKS set and rtbackupctl
# on PATH; it narrates its steps and exits non-zero at the first failure.

set -eu
# A case ended by its time limit (SIGTERM) or ^C still runs its EXIT trap.
trap 'exit 143' TERM
trap 'exit 130' INT

TEST=$(basename "$0" .sh)
# / is the host's, read-only; /tmp is the guest's own.
MNT=/tmp/rtbmnt
mkdir -p "$MNT"

# say MESSAGE: narrates a step, with the seconds since the case started (a
# builtin read of /proc/uptime: an exec costs about a second under
# emulation), so a log shows where a case spends its time.
read -r T0 _ </proc/uptime
# stamp: STAMP becomes "[CASE +SECONDSs]".
stamp() { read -r t _ </proc/uptime; STAMP="[$TEST +$((${t%.*} - ${T0%.*}))s]"; }
say() { stamp; echo "$STAMP $*"; echo "rtbtest: $TEST: $*" >/dev/kmsg 2>/dev/null || true; }
fail() { stamp; echo "$STAMP FAIL: $*" >&2; exit 1; }

# disk N: the Nth scratch disk.
disk() { echo "$RTB_DISKS" | tr ' ' '\n' | sed -n "$(($1 + 1))p"; }

# expect_fail PATTERN CMD...: CMD must exit non-zero and print PATTERN
# (grep -E) on stderr.
expect_fail() {
    pattern=$1; shift
    if "$@" >/tmp/expect.out 2>/tmp/expect.err; then
        fail "'$*' succeeded but should have failed ($(cat /tmp/expect.out))"
    fi
    grep -Eq "$pattern" /tmp/expect.err ||
        fail "'$*' failed without '$pattern' in its message: $(cat /tmp/expect.err)"
    say "refused as expected: $* -> $(head -1 /tmp/expect.err)"
}

# The device table, without the counters: what must not change on bad input.
table() { rtbackupctl status --json | jq -c '[.devices[] | {index, device, lower, state, open_count}]'; }

# same_bytes A B: byte-for-byte equality of two block devices (or files),
# after dropping caches so both are read from the devices themselves.
same_bytes() {
    sync
    blockdev --flushbufs "$1" 2>/dev/null || true
    blockdev --flushbufs "$2" 2>/dev/null || true
    echo 3 >/proc/sys/vm/drop_caches
    cmp "$1" "$2" || fail "$1 and $2 differ"
    say "$1 and $2 are identical ($(blockdev --getsize64 "$2" 2>/dev/null || stat -c %s "$2") bytes)"
}

# load / unload the module, checking the control device comes and goes.
load() { modprobe rtbackup; [ -c /dev/rtbackup-control ] || fail "no /dev/rtbackup-control after modprobe"; }
unload() { rmmod rtbackup; [ ! -e /dev/rtbackup-control ] || fail "/dev/rtbackup-control left after rmmod"; }

# make_tree DIR: a tree of files of varied sizes, and a checksum list of it.
# Every exec costs about a second under emulation, so one perl process
# writes the whole tree.
make_tree() {
    perl -e '
        my $root = shift;
        open(my $rnd, "<", "/dev/urandom") or die "urandom: $!";
        for my $i (0 .. 39) {
            my $dir = "$root/d" . ($i % 7);
            mkdir $root; mkdir $dir;
            read($rnd, my $buf, ($i * 7919) % 300000 + 1) or die "read: $!";
            open(my $f, ">", "$dir/f$i") or die "$dir/f$i: $!";
            print $f $buf or die "write: $!";
            close($f) or die "close: $!";
        }' "$1" || fail "could not write the tree in $1"
    cp -a /usr/share/doc/fio "$1/doc" 2>/dev/null || true
    (cd "$1" && find . -type f -print0 | sort -z | xargs -0 md5sum) >/tmp/$TEST.md5
}

# check_tree DIR: the tree matches the checksums of make_tree.
check_tree() { (cd "$1" && md5sum --quiet -c /tmp/$TEST.md5) || fail "files in $1 differ"; }

# fio_verify FILE SIZE: random writes with crc32c verification.
fio_verify() {
    fio --name=verify --filename="$1" --size="$2" --rw=randwrite --bs=4k \
        --ioengine=libaio --iodepth=16 --direct=1 --verify=crc32c \
        --verify_fatal=1 --do_verify=1 --verify_state_save=0 --output=/tmp/fio.out ||
        { cat /tmp/fio.out; fail "fio verify on $1 failed"; }
    grep -q "err= 0" /tmp/fio.out || { cat /tmp/fio.out; fail "fio reported errors"; }
    say "fio randwrite+verify of $2 on $1 passed"
}

# --- Replication: a server and agents on loopback -------------------------
STORE=/tmp/rtbstore
PORT=7420

# The server listens on $SERVER_HOST:$PORT, in network namespace
# $SERVER_NETNS when set (the agent connects there).
SERVER_HOST=127.0.0.1
SERVER_NETNS=""
# in_server_ns CMD...: CMD in the server's network namespace.
# Only the network namespace is entered (nsenter --net), not `ip netns exec`:
# that also makes a private mount namespace holding a copy of every mount of
# the moment, so a filesystem the test mounted before stays mounted there
# after its `umount` (and keeps writing back to the device).
in_server_ns() {
    if [ -n "$SERVER_NETNS" ]; then nsenter --net="/run/netns/$SERVER_NETNS" "$@"; else "$@"; fi
}

# How clients reach the server: CLIENT_ARGS for rtbackup-agent and
# rtbackupctl verify/rollback, set by start_server. A server in another
# network namespace (not loopback) gets TLS: the store's CA (init) and a
# client certificate in $CREDS (enroll); on loopback the suite runs
# plaintext (--insecure-loopback-only) unless RTB_TEST_TLS=1.
CREDS=/tmp/rtb-creds.json
CLIENT_ARGS=""
tls_setup() {
    if [ -n "$SERVER_NETNS" ] || [ "${RTB_TEST_TLS:-0}" = 1 ]; then
        [ -f "$STORE/pki/ca.crt" ] || rtbackup-server init --store "$STORE" >/dev/null ||
            fail "rtbackup-server init failed"
        [ -f "$CREDS" ] || rtbackup-server enroll --store "$STORE" test-client --output "$CREDS" ||
            fail "rtbackup-server enroll failed"
        SERVER_TLS_ARGS=""
        CLIENT_ARGS="--credentials $CREDS"
    else
        SERVER_TLS_ARGS="--insecure-loopback-only"
        CLIENT_ARGS="--insecure-loopback-only"
    fi
}

# start_server [ARGS...]: rtbackup-server on $SERVER_HOST:$PORT with its
# store in $STORE and ARGS (remembered: a restart without ARGS reuses them).
SERVER_ARGS=""
start_server() {
    [ $# -eq 0 ] || SERVER_ARGS="$*"
    mkdir -p "$STORE"
    tls_setup
    # A server left from before would answer in place of this one.
    ! in_server_ns ss -Hltn "sport = :$PORT" | grep -q LISTEN ||
        fail "port $PORT is still in use: $(in_server_ns ss -Hltnp "sport = :$PORT")"
    # Started directly (not through a shell function, whose subshell would
    # get $! and the signals): nsenter execs the server.
    # shellcheck disable=SC2086
    if [ -n "$SERVER_NETNS" ]; then
        nsenter --net="/run/netns/$SERVER_NETNS" rtbackup-server serve --store "$STORE" \
            --listen $SERVER_HOST:$PORT $SERVER_TLS_ARGS $SERVER_ARGS >>/tmp/server.log 2>&1 &
    else
        rtbackup-server serve --store "$STORE" --listen $SERVER_HOST:$PORT $SERVER_TLS_ARGS \
            $SERVER_ARGS >>/tmp/server.log 2>&1 &
    fi
    SERVER_PID=$!
    background $!
    i=0
    while ! in_server_ns ss -Hltn "sport = :$PORT" | grep -q LISTEN; do
        i=$((i + 1)); [ $i -lt 300 ] || { cat /tmp/server.log; fail "server did not start"; }
        kill -0 $SERVER_PID 2>/dev/null || { cat /tmp/server.log; fail "server exited"; }
        sleep 0.1
    done
    say "server up (pid $SERVER_PID)"
}

# start_agent N VOLUME [ARGS...]: an agent for /dev/rtbackupN (with ARGS);
# its pid in AGENT_PID_N. Returns once the device's initial sync is done
# (a new attach tracks writes until then; see `mode` below).
start_agent() {
    n=$1; vol=$2; shift 2
    # shellcheck disable=SC2086
    rtbackup-agent --device /dev/rtbackup$n --server $SERVER_HOST:$PORT --volume "$vol" $CLIENT_ARGS "$@" \
        >>/tmp/agent$n.log 2>&1 &
    eval "AGENT_PID_$n=$!"
    background $!
    say "agent for rtbackup$n -> volume $vol started (pid $!)"
    i=0
    while [ "$(mode $n)" = initial-sync ]; do
        i=$((i + 1)); [ $i -lt 400 ] || { cat /tmp/agent$n.log; fail "initial sync of rtbackup$n not done"; }
        kill -0 "$(eval echo \$AGENT_PID_$n)" 2>/dev/null || { cat /tmp/agent$n.log; fail "the agent exited"; }
        [ $((i % 30)) -ne 0 ] || say "initial sync of rtbackup$n: $(tail -1 /tmp/agent$n.log)"
        sleep 1
    done
}

# mode N: initial-sync, tracking, resyncing or recording (rtbackupctl status).
mode() { rtbackupctl status --json rtbackup$1 | jq -r '.devices[0].ring.mode'; }

# background PID: remember a background process for cleanup_replication
# (`jobs -p` sees nothing in a command substitution under dash).
BG_PIDS=""
background() { BG_PIDS="$BG_PIDS $1"; }

# kill9 PID: SIGKILL and reap.
kill9() { kill -9 "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# stop PID: SIGTERM, wait up to 30 s, then SIGKILL.
stop() {
    kill "$1" 2>/dev/null || return 0
    i=0
    while kill -0 "$1" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    kill9 "$1"
}

# zero DEV: make a scratch device all zeroes (the backup of a new device
# starts from zeroes; initial sync of existing data is a later feature).
zero() { blkdiscard -z "$1" 2>/dev/null || dd if=/dev/zero of="$1" bs=1M oflag=direct status=none 2>/dev/null || true; }

# restored_equals VOLUME DEV: restore VOLUME from the store and compare it
# byte for byte with DEV.
restored_equals() {
    rtbackup-server restore --store "$STORE" --volume "$1" --output /tmp/restore-$1.img ||
        fail "restore of $1 failed"
    same_bytes /tmp/restore-$1.img "$2"
    rm -f /tmp/restore-$1.img
}

# written N: records written to the ring of /dev/rtbackupN so far.
written() { rtbackupctl status --json rtbackup$1 | jq '.devices[0].ring.last_written_seq'; }

# wait_written N COUNT: wait (up to 300 s) until the ring of /dev/rtbackupN
# has recorded COUNT records: workloads start slowly under emulation. Fails
# at once if the process WRITER_PID (when set) has ended.
wait_written() {
    i=0
    while [ "$(written "$1")" -lt "$2" ]; do
        i=$((i + 1)); [ $i -lt 300 ] || fail "rtbackup$1 did not reach $2 records"
        [ -z "${WRITER_PID:-}" ] || kill -0 "$WRITER_PID" 2>/dev/null ||
            fail "the writer (pid $WRITER_PID) ended before rtbackup$1 reached $2 records"
        sleep 1
    done
}

# lag N: records of /dev/rtbackupN not yet acknowledged.
lag() { rtbackupctl status --json rtbackup$1 | jq '.devices[0].ring.lag_records'; }

# replicate_device [SERVER_ARGS...]: the module loaded, the first scratch
# disk zeroed ($d0) and attached ($dev, with $ATTACH_ARGS), a server (with
# SERVER_ARGS) and an agent streaming it as volume vol0.
ATTACH_ARGS=""
replicate_device() {
    load
    d0=$(disk 0)
    zero "$d0"
    start_server "$@"
    # shellcheck disable=SC2086
    dev=$(rtbackupctl attach $ATTACH_ARGS "$d0")
    start_agent 0 vol0
}

# cleanup_replication: stop agents and server, detach everything.
cleanup_replication() {
    for p in $BG_PIDS; do stop "$p"; done
    umount "$MNT" 2>/dev/null || true
    for i in 0 1 2 3; do rtbackupctl detach "$i" 2>/dev/null || true; done
    rm -rf "$STORE" /tmp/server.log /tmp/agent*.log "$CREDS"
}
