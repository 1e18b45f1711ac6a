#!/bin/sh
# The kernel tree to build the module against, and how (Documentation/kernels.rst).
#
#   scripts/kdir.sh prepare KDIR   check KDIR and print the tree to build
#                                  against: KDIR itself if it carries the
#                                  kernel's Rust metadata (a built tree,
#                                  Ubuntu's linux-lib-rust, Arch's headers),
#                                  else a tree whose metadata this script
#                                  generates from the kernel's linux-source
#                                  package with the kernel's own compilers
#                                  (Debian's headers ship none), checked
#                                  against the kernel's Module.symvers
#   scripts/kdir.sh vars KDIR      the make variables that select the
#                                  kernel's own compilers (CC or LLVM,
#                                  RUSTC) and its release
#   scripts/kdir.sh check-symbols TREE KDIR
#                                  the check of a generated TREE against
#                                  KDIR's Module.symvers, alone
#
# Every refusal is one sentence on standard error that names what to
# install, and exit status 1. Shipped in the DKMS package: dkms runs
# `make module KDIR=/lib/modules/RELEASE/build`, which runs this.
#
# Generated trees are kept in $RTBACKUP_KMETA (default
# /var/cache/rtbackup/kernel-rust), keyed by the release and a hash of the
# inputs; `rm -r` it to reclaim the space (about 1.5 GiB a kernel).
set -eu

die() { echo "rtbackup: $*" >&2; exit 1; }

# The value of a string or number option of KDIR's .config, unquoted.
config() { sed -n "s/^$1=\"\{0,1\}\([^\"]*\)\"\{0,1\}\$/\1/p" "$kdir/.config"; }

# KDIR exists and is a Rust kernel's tree. Sets release.
check_tree() {
    [ -d "$kdir" ] || die "no kernel headers at $kdir: install the headers of the kernel" \
        "(Debian, Ubuntu: linux-headers-$(basename "$(dirname "$kdir")"); Arch: linux-headers)"
    [ -f "$kdir/.config" ] && [ -f "$kdir/Makefile" ] ||
        die "$kdir is not a kernel build or headers tree (no .config or Makefile)"
    release=$(cat "$kdir/include/config/kernel.release" 2>/dev/null) ||
        die "$kdir has no include/config/kernel.release: run 'make modules_prepare' in it"
    grep -qs '^CONFIG_RUST=y' "$kdir/.config" ||
        die "kernel $release is built without Rust (CONFIG_RUST is not set), and rtbackup's" \
            "module is written in Rust: use a kernel with CONFIG_RUST=y (Documentation/kernels.rst)"
}

# The C compiler make variables of the tree: LLVM=1 or LLVM=-N for clang
# (the suffix when the plain clang is another major), else CC=the gcc the
# kernel names in CONFIG_CC_VERSION_TEXT (Debian: x86_64-linux-gnu-gcc-16).
# They override any CC that make was given (dkms gives CC=clang for a
# clang-built kernel, whatever its version).
cc_vars() {
    if grep -qs '^CONFIG_CC_IS_CLANG=y' "$kdir/.config"; then
        major=$(($(config CONFIG_CLANG_VERSION) / 10000))
        have=$(clang --version 2>/dev/null | sed -n '1s/.*clang version \([0-9]*\).*/\1/p')
        # CC and LD as well: dkms passes its own CC=clang LD=ld.lld.
        if [ "$have" = "$major" ]; then
            echo LLVM=1 CC=clang LD=ld.lld
        elif command -v "clang-$major" >/dev/null; then
            echo "LLVM=-$major CC=clang-$major LD=ld.lld-$major"
        else
            die "kernel $release was built with clang $major: install clang-$major and lld-$major"
        fi
    else
        cc=$(config CONFIG_CC_VERSION_TEXT | cut -d' ' -f1)
        command -v "$cc" >/dev/null ||
            die "kernel $release was built with '$(config CONFIG_CC_VERSION_TEXT)':" \
                "install $cc (Debian: the gcc-N package that names it)"
        echo "CC=$cc"
    fi
}

# The rustc that built the kernel: KRUSTC, else rustc on PATH, if its
# --version is the kernel's CONFIG_RUSTC_VERSION_TEXT exactly (Kbuild refuses
# any other, and its metadata would not match the kernel's symbols).
find_rustc() {
    want=$(config CONFIG_RUSTC_VERSION_TEXT)
    for r in ${KRUSTC:-} /usr/bin/rustc rustc; do
        command -v "$r" >/dev/null || continue
        [ "$("$r" --version 2>/dev/null)" = "$want" ] && { command -v "$r"; return; }
    done
    have=$( (${KRUSTC:-rustc} --version) 2>/dev/null || echo none)
    die "kernel $release was built with '$want', and ${KRUSTC:-rustc} is '$have':" \
        "install that rustc (Debian: the rustc and rust-src of the kernel's own suite) or set KRUSTC"
}

vars() {
    check_tree
    ccv=$(cc_vars)
    rustc=$(find_rustc)
    echo "$ccv RUSTC=$rustc KERNELRELEASE=$release"
}

# Every global Rust symbol that the generated crates define is one that the
# kernel exports: then the crate names and hashes are the kernel's own.
check_symbols() {
    tree=${1%/} symvers=$2
    work=$(mktemp -d)
    nm --defined-only -g "$tree"/rust/*.o 2>/dev/null |
        awk '$2 ~ /^[TDRB]$/ && $3 ~ /^_R/ { print $3 }' | sort -u >"$work/syms"
    total=$(wc -l <"$work/syms")
    [ "$total" -gt 0 ] || { rm -rf "$work"; die "the Rust metadata generated for kernel $release defines no symbols"; }
    awk '{ print $2 }' "$symvers" | sort -u | comm -23 "$work/syms" - >"$work/missing"
    missing=$(wc -l <"$work/missing")
    if [ "$missing" -gt 0 ]; then
        crate() { grep -o "Cs[0-9A-Za-z]*_$1" "$2" | sort | uniq -c | sort -rn | awk 'NR==1 {print $2}'; }
        built=$(crate 6kernel "$work/syms") theirs=$(crate 6kernel "$symvers")
        first=$(head -1 "$work/missing")
        rm -rf "$work"
        die "the Rust metadata built with '$(config CONFIG_RUSTC_VERSION_TEXT)' does not match" \
            "kernel $release: $missing of its $total symbols are not in the kernel's Module.symvers" \
            "(crate kernel built as $built, the kernel has $theirs; first: $first): build with" \
            "exactly the kernel's '$(config CONFIG_RUSTC_VERSION_TEXT)' and" \
            "'$(config CONFIG_BINDGEN_VERSION_TEXT)'"
    fi
    rm -rf "$work"
}

# The options of a .config that depend on the exact build of each tool
# (package revisions of gcc, binutils, pahole), not on what the kernel is.
config_core() { grep -Ev '^CONFIG_(CC_VERSION_TEXT|AS_VERSION|LD_VERSION|PAHOLE_VERSION|GCC_VERSION)=' "$1"; }

# A tree with the kernel's Rust metadata, generated from linux-source.
generate() {
    series=$(echo "$release" | cut -d. -f1-2)
    numeric=$(echo "$release" | sed 's/^\([0-9]*\.[0-9]*\.[0-9]*\).*/\1/')
    tarball=/usr/src/linux-source-$series.tar.xz
    rustc=$(find_rustc)
    [ -r "$tarball" ] ||
        die "the headers of kernel $release carry no Rust metadata, and generating it needs the" \
            "kernel's source: install linux-source-$series, version $numeric (or Ubuntu's" \
            "linux-lib-rust-$release)"
    [ -r "$kdir/Module.symvers" ] || die "$kdir has no Module.symvers: reinstall the headers of $release"
    bindgen=${BINDGEN:-bindgen}
    command -v "$bindgen" >/dev/null ||
        die "generating the Rust metadata of kernel $release needs bindgen" \
            "('$(config CONFIG_BINDGEN_VERSION_TEXT)'): install it"
    ccv=$(cc_vars)
    base=${RTBACKUP_KMETA:-/var/cache/rtbackup/kernel-rust}
    key=$( (echo recipe 2; ls -l --time-style=+%s "$tarball"; cat "$kdir/.config"
        cat "$kdir/Module.symvers"; "$rustc" --version; "$bindgen" --version; echo "$ccv") |
        sha256sum | cut -c1-12)
    final=$base/$release-$key
    if [ -f "$final/.rtbackup-complete" ]; then
        echo "$final"
        return
    fi
    mkdir -p "$base" 2>/dev/null && [ -w "$base" ] ||
        die "generating the Rust metadata of kernel $release needs a writable $base:" \
            "run as root (as dkms does) or set RTBACKUP_KMETA"
    echo "rtbackup: generating the Rust metadata of kernel $release from $tarball" \
        "in $final (minutes, once)" >&2
    # Built aside and moved into place: a concurrent build of the same key
    # never sees a half-made tree.
    out=$final.tmp.$$
    rm -rf "$out"
    mkdir -p "$out"
    trap 'rm -rf "$out"' EXIT
    tar -C "$out" --strip-components=1 -xf "$tarball" || die "cannot unpack $tarball into $out"
    src=$(sed -n 's/^VERSION = //p; s/^PATCHLEVEL = //p; s/^SUBLEVEL = //p' "$out/Makefile" |
        paste -sd.)
    [ "$src" = "$numeric" ] ||
        die "$tarball is Linux $src but the kernel is $numeric: install the linux-source-$series" \
            "of the kernel's version"
    cp "$kdir/.config" "$out/.config"
    # Not the caller's make variables (MAKEFLAGS: dkms's CC, CLIPPY=1,
    # KRUSTFLAGS...): the tree is the kernel's, made with its own compilers.
    # shellcheck disable=SC2086
    mk() {
        env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
            make -C "$out" -s $ccv RUSTC="$rustc" BINDGEN="$bindgen" KERNELRELEASE="$release" "$@"
    }
    mk olddefconfig >"$out/rtbackup-prepare.log" 2>&1 ||
        { tail -20 "$out/rtbackup-prepare.log" >&2; die "olddefconfig of $release's config failed"; }
    config_core "$out/.config" >"$out/rtbackup-config.core"
    if ! config_core "$kdir/.config" | cmp -s - "$out/rtbackup-config.core"; then
        diff=$(config_core "$kdir/.config" | diff - "$out/rtbackup-config.core" | grep '^[<>]' |
            head -4 | tr '\n' ' ')
        die "the toolchain here configures kernel $release differently from the kernel's own" \
            "build (${diff% }): its rustc, bindgen or $ccv differ from the kernel's"
    fi
    mk -j"$(nproc)" modules_prepare >>"$out/rtbackup-prepare.log" 2>&1 ||
        { tail -20 "$out/rtbackup-prepare.log" >&2
            die "generating the Rust metadata of $release failed (log: $out/rtbackup-prepare.log)"; }
    cp "$kdir/Module.symvers" "$out/Module.symvers"
    check_symbols "$out" "$kdir/Module.symvers"
    touch "$out/.rtbackup-complete"
    rm -rf "$final"
    mv "$out" "$final" || die "cannot move $out to $final"
    trap - EXIT
    echo "rtbackup: Rust metadata of kernel $release generated; all $total symbols match" >&2
    echo "$final"
}

prepare() {
    check_tree
    if [ -f "$kdir/rust/libkernel.rmeta" ]; then
        find_rustc >/dev/null
        echo "$kdir"
    else
        generate
    fi
}

usage="usage: $0 prepare|vars KDIR | check-symbols TREE KDIR"
action=${1:-}
case $action in
prepare | vars) [ $# -eq 2 ] || die "$usage"; kdir=$2 ;;
check-symbols) [ $# -eq 3 ] || die "$usage"; kdir=$3 ;;
*) die "$usage" ;;
esac
case $action in
prepare) prepare ;;
vars) vars ;;
check-symbols)
    check_tree
    check_symbols "$2" "$kdir/Module.symvers"
    echo "rtbackup: all $total Rust symbols of $2 are exported by kernel $release" >&2
    ;;
esac
