#!/bin/sh
# Debian's newer kernels and the toolchain that built them, reached from a
# bookworm host without changing it (Documentation/kernels.rst).
#
#   scripts/debian.sh apt ARGS...       apt-get with a private configuration
#                                       of sid and trixie-backports: its own
#                                       sources, lists and archive cache, an
#                                       empty dpkg status, no dpkg (the
#                                       host's apt state, settings and
#                                       sources are never touched)
#   scripts/debian.sh download PKG...   the .debs of PKG (name or name=version)
#                                       into the cache, kept; prints each path
#   scripts/debian.sh source VERSION    linux-source-VERSION's tarball, taken
#                                       out of its .deb into the cache; prints
#                                       its path
#   scripts/debian.sh chroot            the sid chroot with Debian's kernel
#                                       toolchain (debootstrap, once); prints
#                                       its root
#   scripts/debian.sh run CMD...        CMD as root in the chroot, with the
#                                       repository and the cache mounted at
#                                       their own paths, in a mount namespace
#                                       of its own (nothing stays mounted)
#
# The cache is $RTBACKUP_CACHE (default ~/.cache/rtbackup). The chroot's
# key is the recipe below: a changed package list makes a new chroot.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${RTBACKUP_CACHE:-$HOME/.cache/rtbackup}
mirror=${RTBACKUP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
apt_dir=$cache/apt-debian
die() { echo "debian: $*" >&2; exit 1; }

# The sid toolchain: what Debian's kernel packages build with (gcc-16, rustc,
# bindgen, libclang), what DKMS needs, and what the stock-kernel test runs in
# the VM (fio, e2fsprogs, util-linux, kmod, iproute2).
CHROOT_PKGS="rustc rust-src rust-clippy rustfmt bindgen libclang-dev gcc gcc-16 make bc bison
flex libelf-dev libssl-dev cpio kmod python3 xz-utils dkms fio e2fsprogs util-linux iproute2
procps jq ca-certificates"
chroot_recipe=1
chroot_key=$( (echo "$chroot_recipe"; echo "$CHROOT_PKGS") | sha256sum | cut -c1-12)
chroot_root=$cache/chroot/sid-$chroot_key

# Nothing of the host's apt: its sources, settings, preferences and hooks
# are not read, its lists and archives not written, and there is no dpkg
# to install with (only update, policy and download are used).
apt_opts() {
    echo "-o Dir::Etc::SourceList=$apt_dir/sources.list -o Dir::Etc::SourceParts=/nonexistent" \
        "-o Dir::Etc::Parts=$apt_dir/empty -o Dir::Etc::Preferences=$apt_dir/empty/preferences" \
        "-o Dir::Etc::PreferencesParts=$apt_dir/empty -o Dir::Bin::dpkg=/bin/false" \
        "-o Dir::State::Lists=$apt_dir/lists -o Dir::Cache=$apt_dir/cache" \
        "-o Dir::State::status=$apt_dir/status -o Acquire::Check-Valid-Until=false" \
        "-o APT::Sandbox::User=root"
}

# The private configuration, its lists fetched once a day at most. One
# user of it at a time (make check runs several): the lock is taken once
# (a subshell has it already: opened again, it would wait on itself) and
# held until this script exits.
apt_lists() {
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/empty"
    if [ -z "${apt_locked:-}" ]; then
        exec 8>"$apt_dir.lock"
        flock 8
        apt_locked=1
    fi
    : >>"$apt_dir/status"
    printf 'deb %s sid main\ndeb %s trixie-backports main\n' "$mirror" "$mirror" \
        >"$apt_dir/sources.list"
    # sid's Release can be past its Valid-Until on the mirror
    # (Acquire::Check-Valid-Until=false in apt_opts).
    if [ -z "$(find "$apt_dir/lists" -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null)" ]; then
        # shellcheck disable=SC2046
        if ! apt-get $(apt_opts) -qq update >&2; then
            # Offline, yesterday's lists still name what is in the cache.
            [ -n "$(find "$apt_dir/lists" -maxdepth 1 -name '*Packages*' 2>/dev/null)" ] ||
                die "apt-get update of sid failed"
            echo "debian: apt-get update failed: using the lists of an earlier day" >&2
        fi
    fi
}

apt_private() {
    apt_lists
    # shellcheck disable=SC2046
    apt-get $(apt_opts) "$@"
}

# The .deb of each package (name, or name=version: else the candidate).
download() {
    apt_lists
    mkdir -p "$cache/debs"
    for p in "$@"; do
        name=${p%%=*}
        ver=${p#"$name"}
        ver=${ver#=}
        # shellcheck disable=SC2046
        [ -n "$ver" ] || ver=$(apt-cache $(apt_opts) policy "$name" | sed -n 's/^  Candidate: //p')
        [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "no package $name in sid or trixie-backports"
        # apt-get download names the file name_version_arch.deb, the epoch
        # written %3a.
        file=$cache/debs/${name}_$(echo "$ver" | sed 's/:/%3a/g')_
        deb=$(ls "$file"*.deb 2>/dev/null | head -1) || true
        if [ -z "$deb" ]; then
            (cd "$cache/debs" && apt_private -qq download "$name=$ver") >&2 ||
                die "download of $name=$ver failed"
            deb=$(ls "$file"*.deb | head -1)
        fi
        echo "$deb"
    done
}

# linux-source-VERSION's tarball: the newest package of that version.
source_tarball() {
    ver=$1
    deb=$(download "linux-source-$ver")
    out=$cache/src/$(basename "$deb" .deb)
    if [ ! -f "$out/.rtbackup-extracted" ]; then
        rm -rf "$out"
        mkdir -p "$out"
        dpkg-deb --fsys-tarfile "$deb" | tar -C "$out" -x --wildcards '*.tar.xz' ||
            die "no tarball in $deb"
        touch "$out/.rtbackup-extracted"
    fi
    tarball=$(find "$out" -name "linux-source-$ver.tar.xz" | head -1)
    [ -n "$tarball" ] || die "no linux-source-$ver.tar.xz in $deb"
    echo "$tarball"
}

make_chroot() {
    mkdir -p "$(dirname "$chroot_root")"
    # One debootstrap at a time; a second caller waits, then finds it made.
    exec 7>"$chroot_root.lock"
    flock 7
    if [ ! -f "$chroot_root/.rtbackup-complete" ]; then
        command -v debootstrap >/dev/null || die "debootstrap missing: run 'make deps'"
        echo "debian: debootstrap sid into $chroot_root (about 2 minutes)" >&2
        rm -rf "$chroot_root.tmp"
        mkdir -p "$(dirname "$chroot_root")"
        debootstrap --variant=minbase --include="$(echo $CHROOT_PKGS | tr ' ' ,)" \
            sid "$chroot_root.tmp" "$mirror" >"$chroot_root.log" 2>&1 ||
            { tail -20 "$chroot_root.log" >&2; die "debootstrap failed (log: $chroot_root.log)"; }
        echo 'Acquire::Check-Valid-Until "false";' >"$chroot_root.tmp/etc/apt/apt.conf.d/99rtbackup"
        echo "deb $mirror sid main" >"$chroot_root.tmp/etc/apt/sources.list"
        touch "$chroot_root.tmp/.rtbackup-complete"
        mv "$chroot_root.tmp" "$chroot_root"
    fi
    echo "$chroot_root"
}

# CMD in the chroot. unshare gives the mounts a namespace of their own, so
# they go when CMD ends, whatever happens to it.
run_in_chroot() {
    root=$(make_chroot)
    mkdir -p "$root$here" "$root$cache" "$root/proc" "$root/dev"
    # shellcheck disable=SC2016
    unshare --mount --propagation private sh -c '
        root=$1 here=$2 cache=$3; shift 3
        mount -t proc proc "$root/proc" &&
        mount --rbind /dev "$root/dev" &&
        mount --bind "$here" "$root$here" &&
        mount --bind "$cache" "$root$cache" &&
        exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
            LANG=C.UTF-8 "$@"' sh "$root" "$here" "$cache" "$@"
}

action=${1:-}
[ $# -gt 0 ] && shift
case $action in
apt) apt_private "$@" ;;
download) download "$@" ;;
source) [ $# -eq 1 ] || die "usage: $0 source VERSION"; source_tarball "$1" ;;
chroot) make_chroot ;;
run) run_in_chroot "$@" ;;
*) die "usage: $0 apt ARGS | download PKG... | source VERSION | chroot | run CMD..." ;;
esac
