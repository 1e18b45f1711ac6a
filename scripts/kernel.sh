#!/bin/sh
# Build (or reuse) a kernel of the VM tests, from Debian's linux-source
# package of its series, with Rust and what the tests need.
#
#   scripts/kernel.sh dir [FLAVOUR]    print the build directory (the KDIR)
#                                      for this kernel version + config,
#                                      without building
#   scripts/kernel.sh build [FLAVOUR]  build it unless a complete build is
#                                      cached
#
# Flavours (Documentation/kernels.rst):
#   test   the newest supported series (7.3, trixie-backports'
#          linux-source-7.3) with the debugging options every splat check
#          needs (lockdep, KASAN, kmemleak, fault injection): the full VM suite
#   bench  test with tests/vm/kernel-bench.config merged on top: KASAN,
#          lockdep and kmemleak off, since they slow every layer many times
#          over and throughput ratios taken on them say nothing about a
#          production kernel (make bench)
#   lts    6.12 LTS (bookworm's linux-source-6.12) without the debuggers
#          (tests/vm/kernel-bench.config: they would double its build time,
#          and the full suite with them runs on test) and without what only
#          the other cases need (tests/vm/kernel-smoke.config, last): the
#          build and the replication smoke test on the oldest series
#
# The cache lives outside the repository, in $RTBACKUP_CACHE (default
# ~/.cache/rtbackup), keyed by the source package version and a hash of the
# config inputs and toolchain, so a changed fragment, compiler or source
# package rebuilds.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${RTBACKUP_CACHE:-$HOME/.cache/rtbackup}
action=${1:-}
flavour=${2:-test}
die() { echo "kernel: $*" >&2; exit 1; }

# The flavour's series, compiler and config fragments, in order, as the
# positional parameters.
case $flavour in
test | bench) series=7.3 llvm=-19 ;;
lts) series=6.12 llvm=1 ;;
*) die "unknown flavour '$flavour' (test, bench or lts)" ;;
esac
case $flavour in
test) set -- "$here/tests/vm/kernel.config" "$here/tests/vm/kernel-$series.config" ;;
bench) set -- "$here/tests/vm/kernel.config" "$here/tests/vm/kernel-$series.config" \
    "$here/tests/vm/kernel-bench.config" ;;
lts) set -- "$here/tests/vm/kernel.config" "$here/tests/vm/kernel-$series.config" \
    "$here/tests/vm/kernel-bench.config" "$here/tests/vm/kernel-smoke.config" ;;
esac
RUSTC=${RUSTC:-/usr/bin/rustc}
BINDGEN=${BINDGEN:-${CARGO_HOME:-$HOME/.cargo}/bin/bindgen}
# A KASAN kernel with Rust must be built with LLVM ("RUST depends on !KASAN
# || CC_IS_CLANG"), and so must its modules (the Makefile reads the
# compiler from the tree's .config). 7.x needs LLVM 17 or later: bookworm's
# clang-19 (LLVM=-19), whose libclang bindgen must load as well.
# bindgen loads the libclang of the same LLVM (with several installed, it
# would take the newest, which refuses flags meant for an older clang).
clang=clang${llvm#1}

command -v "$clang" >/dev/null || die "$clang missing: run 'make deps'"
LIBCLANG_PATH=/usr/lib/llvm-$("$clang" --version | sed -n '1s/.*clang version \([0-9]*\).*/\1/p')/lib
export LIBCLANG_PATH
vngver=$(virtme-configkernel --help >/dev/null 2>&1 && pip show virtme-ng 2>/dev/null |
    sed -n 's/^Version: //p')
[ -n "$vngver" ] || die "virtme-ng missing: run 'make deps'"
if [ "$series" = 6.12 ]; then
    tarball=/usr/src/linux-source-6.12.tar.xz
    [ -r "$tarball" ] || die "$tarball missing: run 'make deps'"
    pkgver=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null) ||
        die "linux-source-6.12 not installed: run 'make deps'"
else
    # From sid or trixie-backports, through the private apt configuration.
    tarball=$("$here/scripts/debian.sh" source "$series") || die "no linux-source-$series"
    pkgver=$(basename "$(dirname "$(dirname "$(dirname "$tarball")")")" | cut -d_ -f2)
fi
# Bump when the way the kernel is configured or built changes.
recipe=3
key=$( (echo "recipe $recipe"; echo "$pkgver"; echo "$vngver"; "$RUSTC" --version
    "$clang" --version | head -1; cat "$@") |
    sha256sum | cut -c1-12)
src=$cache/src/linux-source-$pkgver
suffix=""
[ "$flavour" = test ] || suffix=-$flavour
out=$cache/kernel/$pkgver-$key$suffix

case "$action" in
dir) echo "$out"; exit 0 ;;
build) ;;
*) die "usage: $0 dir|build [test|bench|lts]" ;;
esac

# One build of a directory at a time: a second waits, then finds it built.
mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
flock 9
if [ -f "$out/.rtbackup-complete" ]; then
    echo "kernel: cached build $out"
    exit 0
fi

if [ ! -f "$src/.rtbackup-extracted" ]; then
    echo "kernel: extracting $tarball"
    rm -rf "$src" "$src.tmp"
    mkdir -p "$src.tmp"
    tar -C "$src.tmp" --strip-components=1 -xf "$tarball"
    touch "$src.tmp/.rtbackup-extracted"
    mv "$src.tmp" "$src"
fi

mkdir -p "$out"
# Kbuild and Kconfig must see Debian's rustc-web (it has rust-src), not rustup's.
export PATH="/usr/bin:$PATH"
mkvars="LLVM=$llvm RUSTC=$RUSTC BINDGEN=$BINDGEN"
# shellcheck disable=SC2086
mk() { make -C "$src" O="$out" $mkvars "$@"; }

# The fragments as one, the last setting of each option winning (what
# merge_config.sh does with them, and what the check below expects).
merged=$out/rtbackup.config
awk '
    /^CONFIG_[A-Z0-9_]*=/ { name = $0; sub(/=.*/, "", name) }
    /^# CONFIG_[A-Z0-9_]* is not set$/ { name = $2 }
    name != "" { if (!(name in line)) order[++n] = name; line[name] = $0; name = "" }
    END { for (i = 1; i <= n; i++) print line[order[i]] }
' "$@" >"$merged.new"
# Kept only once a configuration from it succeeded: a failed one is redone.
if [ ! -f "$out/.config" ] || ! cmp -s "$merged.new" "$merged"; then
    echo "kernel: configuring $out"
    # virtme-ng's defconfig (what the guest needs: virtio, 9p, virtiofs...),
    # then our fragments merged last so they win, then resolve dependencies.
    # shellcheck disable=SC2086
    { (cd "$src" && virtme-configkernel --defconfig O="$out" $mkvars) &&
        (cd "$out" && "$src/scripts/kconfig/merge_config.sh" -m -O "$out" \
            "$out/.config" "$merged.new") &&
        mk olddefconfig; } >"$out/configure.log" 2>&1 ||
        { cat "$out/configure.log"; die "configuration failed"; }
fi
mv "$merged.new" "$merged"

# Every option the fragments ask for must be in the final config.
missing=""
for opt in $(sed -n 's/^\(CONFIG_[A-Z0-9_]*=[ym]\)$/\1/p' "$merged"); do
    name=${opt%=*}
    grep -q "^$name=[ym]\$" "$out/.config" || missing="$missing $name"
done
for name in $(sed -n 's/^# \(CONFIG_[A-Z0-9_]*\) is not set$/\1/p' "$merged"); do
    grep -q "^$name=[ym]\$" "$out/.config" && missing="$missing !$name"
done
[ -z "$missing" ] || die "config did not take:$missing (see $out/configure.log)"

echo "kernel: building $flavour ($series) in $out (about 20 minutes on 2 cores)"
mk -j"$(nproc)" bzImage modules >"$out/build.log" 2>&1 ||
    { tail -40 "$out/build.log"; die "build failed, log in $out/build.log"; }
mk -j"$(nproc)" modules_prepare >>"$out/build.log" 2>&1 ||
    { tail -40 "$out/build.log"; die "modules_prepare failed"; }
touch "$out/.rtbackup-complete"
echo "kernel: built $out"
