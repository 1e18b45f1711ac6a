#!/bin/sh
# Distribution: `make install` in the guest puts rtbackup.ko under
# /lib/modules/$KVER/extra and runs depmod, so that `modprobe rtbackup`
# works, and the tools, man pages, completions, units and settings files
# under a prefix (the units verify on the host: tests/host/units-verify). The commands of the installed units, run as systemd would
# run them (the agent's instance from `systemd-escape --path`), replicate a
# device with TLS, configured only through the settings files; both
# metrics endpoints are scraped: the agent's lag is above 0 while the
# server is stopped and falls to 0 after `rtbackupctl sync`, and the
# restore equals the device. Then the module that DKMS built on the host
# against this kernel (tests/dkms/build, run by tests/vm/run-suite) loads
# from where `dkms install` puts it.
. "$(dirname "$0")/../lib.sh"

kver=$(uname -r)
d0=$(disk 0)
P=/tmp/rtb
B=$P/sbin
ETC=$P/etc/rtbackup
UNITS=$P/lib/systemd/system
SPIDS=""
# Whatever happened, the other cases load the module of this checkout, as
# tests/vm/guest set it up.
cleanup() {
    for p in $SPIDS; do stop "$p"; done
    "$B/rtbackupctl" detach "$d0" 2>/dev/null || true
    rmmod rtbackup 2>/dev/null || true
    rm -rf "$P" "$STORE" /tmp/install.log "/lib/modules/$kver/updates/dkms/rtbackup.ko"*
    cp "${RTB_MODULE:-$RTB_REPO/rtbackup.ko}" "/lib/modules/$kver/extra/"
    depmod -a "$kver"
}
trap cleanup EXIT

say "the module is not installed: modprobe fails"
rmmod rtbackup 2>/dev/null || true
rm -f "/lib/modules/$kver/extra/rtbackup.ko"
depmod -a "$kver"
modprobe -n rtbackup 2>/dev/null && fail "modprobe finds rtbackup before make install"

say "make install PREFIX=$P SYSCONFDIR=$P/etc"
make -C "$RTB_REPO" install KDIR="$RTB_KDIR" PREFIX=$P SYSCONFDIR=$P/etc >/tmp/install.log 2>&1 ||
    { cat /tmp/install.log; fail "make install failed"; }
[ -f "/lib/modules/$kver/extra/rtbackup.ko" ] || fail "no /lib/modules/$kver/extra/rtbackup.ko"
modprobe rtbackup || fail "modprobe rtbackup after make install"
[ "$(modinfo -n rtbackup)" = "/lib/modules/$kver/extra/rtbackup.ko" ] ||
    fail "modprobe found $(modinfo -n rtbackup)"
[ -c /dev/rtbackup-control ] || fail "no /dev/rtbackup-control"
for f in rtbackupctl rtbackup-agent rtbackup-server; do
    [ -x "$B/$f" ] || fail "$B/$f not installed"
    [ -f "$P/share/man/man8/$f.8" ] || fail "no man page $f.8"
    [ -f "$P/share/bash-completion/completions/$f" ] || fail "no bash completion for $f"
done
"$B/rtbackupctl" version --json | jq -e '.module' >/dev/null ||
    fail "rtbackupctl version: $("$B/rtbackupctl" version 2>&1)"
MANWIDTH=80 man -l "$P/share/man/man8/rtbackup-server-serve.8" 2>&1 | grep -q -- '--metrics' ||
    fail "man -l rtbackup-server-serve.8 does not render --metrics"
bash --norc -c ". $P/share/bash-completion/completions/rtbackupctl && complete -p rtbackupctl" \
    >/dev/null || fail "the bash completion of rtbackupctl does not load"

# (systemd-analyze verify of the units runs on the host, in make test:
# tests/host/units-verify; here it took 90 s.)
instance=$(systemd-escape --path "$d0")
path=$(systemd-escape --unescape --path "$instance")
say "units: rtbackup-server.service and rtbackup-agent@$instance.service ($path)"
# ExecStart= of a unit, its %f specifier replaced as systemd does.
exec_start() { sed -n 's/^ExecStart=//p' "$1" | sed "s|%f|$path|g"; }

say "server from its unit, configured in $ETC/server.toml (TLS, metrics)"
"$B/rtbackup-server" init --store "$STORE" >/dev/null || fail "init"
"$B/rtbackup-server" enroll --store "$STORE" --output "$ETC/credentials.json" guest >/dev/null 2>&1 ||
    fail "enroll"
cat >"$ETC/server.toml" <<EOT
store = "$STORE"
listen = "127.0.0.1:$PORT"
nbd-listen = "none"
metrics = "127.0.0.1:9742"
EOT
# shellcheck disable=SC2046
sh -c "exec $(exec_start "$UNITS/rtbackup-server.service")" >/tmp/server.log 2>&1 &
SPIDS="$SPIDS $!"
i=0
until grep -qs '^metrics on' /tmp/server.log; do
    i=$((i + 1)); [ $i -lt 300 ] || { cat /tmp/server.log; fail "the server did not start"; }
    sleep 0.1
done

say "agent from its unit, configured in $ETC/agent.toml"
zero "$d0"
dev=$("$B/rtbackupctl" attach "$d0") || fail "attach $d0"
cat >"$ETC/agent.toml" <<EOT
server = "127.0.0.1:$PORT"
credentials = "$ETC/credentials.json"
initial-sync = "none"

[device."$path"]
volume = "vol0"
metrics = "127.0.0.1:9743"
EOT
chmod 600 "$ETC/credentials.json"
sh -c "exec $(exec_start "$UNITS/rtbackup-agent@.service")" >/tmp/agent0.log 2>&1 &
SPIDS="$SPIDS $!"
AGENT=$!
scrape() { curl -sf "http://127.0.0.1:$1/metrics"; }
metric() { scrape "$1" | awk -v m="$2" '$1 == m { print $2 }'; }
i=0
until [ "$(metric 9743 rtbackup_agent_connected)" = 1 ]; do
    i=$((i + 1)); [ $i -lt 300 ] || { cat /tmp/agent0.log; fail "the agent did not connect"; }
    kill -0 $AGENT 2>/dev/null || { cat /tmp/agent0.log; fail "the agent exited"; }
    sleep 0.2
done

say "writes while the server is stopped: the agent's lag grows"
kill -STOP "$(echo $SPIDS | cut -d' ' -f1)"
dd if=/dev/urandom of="$dev" bs=64k count=64 oflag=direct status=none || fail "dd"
lag=$(metric 9743 rtbackup_agent_lag_records)
bytes=$(metric 9743 rtbackup_agent_lag_bytes)
fill=$(metric 9743 rtbackup_agent_ring_fill_ratio)
say "lag: $lag records, $bytes bytes, ring fill $fill"
[ "${lag:-0}" -gt 0 ] && [ "${bytes:-0}" -gt 0 ] || fail "no lag while the server is stopped"
kill -CONT "$(echo $SPIDS | cut -d' ' -f1)"
"$B/rtbackupctl" sync --timeout 300 "$dev" || fail "sync"
lag=$(metric 9743 rtbackup_agent_lag_records)
bytes=$(metric 9743 rtbackup_agent_lag_bytes)
secs=$(metric 9743 rtbackup_agent_lag_seconds)
say "after sync: $lag records, $bytes bytes, $secs s behind"
[ "$lag" = 0 ] && [ "$bytes" = 0 ] && awk -v s="$secs" 'BEGIN { exit !(s == 0) }' ||
    fail "lag after sync: $lag records, $bytes bytes, $secs s"
head=$(metric 9743 rtbackup_agent_head_seq)
durable=$(metric 9742 'rtbackup_server_durable_seq{volume="vol0"}')
[ "$durable" = "$head" ] || fail "the server's durable seq $durable, the agent's head $head"
[ "$(metric 9742 rtbackup_server_connections)" = 1 ] || fail "server connections: $(metric 9742 rtbackup_server_connections)"
sent=$(metric 9743 rtbackup_agent_sent_bytes_total)
[ "${sent:-0}" -ge $((4 << 20)) ] || fail "sent_bytes_total $sent after 4 MiB of writes"
"$B/rtbackup-server" restore --store "$STORE" --volume vol0 --output /tmp/restore-vol0.img \
    >/dev/null 2>/tmp/restore.err || { cat /tmp/restore.err; fail "restore"; }
grep -q 'restore vol0: .*(100%)' /tmp/restore.err || { cat /tmp/restore.err; fail "no progress line from restore"; }
same_bytes /tmp/restore-vol0.img "$d0"
rm -f /tmp/restore-vol0.img

say "units stopped as systemd stops them (SIGTERM); detach"
for p in $SPIDS; do stop "$p"; done
SPIDS=""
"$B/rtbackupctl" detach "$dev" || fail "detach"
rmmod rtbackup || fail "rmmod"

say "DKMS: the module dkms built on the host against $kver, where dkms install puts it, loads"
# tests/dkms/build ran `dkms add` and `dkms build` on the host against this
# kernel's tree. `dkms install` itself (a copy to updates/dkms and depmod)
# ran in this VM once and passed, but its shell script costs about five
# minutes under emulation: the case does what it does, with the same file.
version=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"/\1/p' "$RTB_REPO/dkms.conf")
ko=$RTB_REPO/tests/vm/out/dkms/tree/rtbackup/$version/$kver/$(uname -m)/module/rtbackup.ko
[ -f "$ko" ] || fail "no $ko: tests/vm/run-suite runs tests/dkms/build"
rm -f "/lib/modules/$kver/extra/rtbackup.ko"
mkdir -p "/lib/modules/$kver/updates/dkms"
cp "$ko" "/lib/modules/$kver/updates/dkms/"
depmod -a "$kver"
modprobe rtbackup || fail "modprobe of the DKMS module"
[ "$(modinfo -n rtbackup)" = "/lib/modules/$kver/updates/dkms/rtbackup.ko" ] ||
    fail "modprobe loaded $(modinfo -n rtbackup), not DKMS's"
say "loaded $(modinfo -n rtbackup)"
rmmod rtbackup
say "install: OK"
