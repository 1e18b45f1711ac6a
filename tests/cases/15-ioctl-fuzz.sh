#!/bin/sh
# Security: random ioctls leave no kernel report and no leaked device.
# rtb-ioctl-fuzz (seeded; it prints the seed) sends thousands of random
# requests to /dev/rtbackup-control and the ring files it opens, checks each
# answer and the device table, and at the end that everything it attached
# is detached and the table, the /dev/rtbackupN nodes and the module's
# reference count are as before: as root attaching two scratch disks with
# random options, with two seeds (RTB_FUZZ_SEEDS to try others); as nobody
# holding a control fd that root opened, and as root without
# CAP_SYS_ADMIN (every control ioctl fails with EPERM; nobody cannot open
# the control device), with a device attached that they must leave as it
# is (they cannot list it: LIST needs CAP_SYS_ADMIN too). Then rmmod must succeed. The suite's check-log
# fails the run on any kernel report. One process a run: every exec costs
# about a second under emulation.
. "$(dirname "$0")/../lib.sh"

d0=$(disk 0); d1=$(disk 1)

load
before=$(table)
[ "$before" = "[]" ] || fail "fresh module has devices: $before"

for seed in ${RTB_FUZZ_SEEDS:-1501 1502}; do
    say "as root, seed $seed: 3000 random requests, attaching $d0 and $d1"
    rtb-ioctl-fuzz --seed "$seed" --calls 3000 --max-attaches 8 --disk "$d0" --disk "$d1" ||
        fail "rtb-ioctl-fuzz as root found a problem (rerun with --seed $seed)"
done

say "$d1 attached by root: the unprivileged runs must leave it as it is"
rtbackupctl attach "$d1" >/dev/null
attached=$(table)

say "as nobody, with a control fd root opened: 2000 random requests"
# fd 3 is opened by this (root) shell and inherited through setpriv.
setpriv --reuid=65534 --regid=65534 --clear-groups \
    rtb-ioctl-fuzz --expect-unprivileged --control-fd 3 --seed 1503 --calls 2000 \
    3<>/dev/rtbackup-control ||
    fail "rtb-ioctl-fuzz as nobody found a problem (rerun with --seed 1503)"

say "as root without CAP_SYS_ADMIN: 2000 random requests"
setpriv --inh-caps=-sys_admin --bounding-set=-sys_admin \
    rtb-ioctl-fuzz --expect-unprivileged --seed 1504 --calls 2000 --disk "$d0" ||
    fail "rtb-ioctl-fuzz without CAP_SYS_ADMIN found a problem (rerun with --seed 1504)"

[ "$(table)" = "$attached" ] || fail "device table changed: $attached before, $(table) after"
rtbackupctl detach rtbackup0
[ "$(table)" = "$before" ] || fail "device table changed: $(table)"

say "nothing leaked: the module unloads and loads again"
unload
load
[ "$(table)" = "[]" ] || fail "devices after reloading the module: $(table)"
unload
say "pass"
