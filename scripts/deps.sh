#!/bin/sh
# Install every prerequisite for building and testing rtbackup on a Debian 12
# (bookworm) machine.  Idempotent: anything already present is left alone.
set -eu

# clang-19: the 7.x test kernels want LLVM 17 or later (bookworm's clang is
# 14); debootstrap: the sid system of scripts/debian.sh, which has the
# toolchain of Debian's own kernels.
APT_PKGS="
    build-essential bc bison flex cpio kmod libelf-dev libssl-dev dwarves
    linux-source-6.12 rustc-web rust-web-src rust-web-clippy rustfmt-web libclang-dev clang lld llvm
    clang-19 lld-19 llvm-19 libclang-19-dev debootstrap
    qemu-system-x86 qemu-utils busybox-static
    fio xfsprogs e2fsprogs fdisk dmsetup drbd-utils util-linux iproute2 nbd-client jq
    dkms man-db curl linux-perf
"

# missing: the packages of APT_PKGS not installed.
missing() {
    for p in $APT_PKGS; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            printf ' %s' "$p"
    done
}
# An install can remove a package it conflicts with (a backported
# qemu-utils goes when bookworm's qemu-system-x86 comes): a second round
# brings back what went, in the versions that fit.
round=0
while need_apt=$(missing) && [ -n "$need_apt" ]; do
    round=$((round + 1))
    [ $round -le 2 ] || { echo "deps: still not installed:$need_apt" >&2; exit 1; }
    echo "deps: apt-get install$need_apt"
    export DEBIAN_FRONTEND=noninteractive
    [ $round -gt 1 ] || apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $need_apt
done

# bindgen >= 0.65.1 is required by 6.12; Debian bookworm ships 0.60.
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! "$CARGO_BIN/bindgen" --version 2>/dev/null | grep -q '^bindgen 0\.\(6[5-9]\|[7-9][0-9]\)'; then
    echo "deps: cargo install bindgen-cli"
    cargo install --locked bindgen-cli
fi

# cargo-fuzz for make fuzz and make fuzz-check (Documentation/testing.rst,
# "Fuzzing"); it runs on the stable toolchain with RUSTC_BOOTSTRAP=1. The
# version the fuzz targets were tried with.
if ! "$CARGO_BIN/cargo-fuzz" --version >/dev/null 2>&1; then
    echo "deps: cargo install cargo-fuzz"
    cargo install --locked cargo-fuzz --version 0.13.2
fi

# rustfmt/clippy for the userspace toolchain (used by make check's lint step).
if command -v rustup >/dev/null 2>&1; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

# virtme-ng boots the test kernel with the host's filesystem as root.
if ! command -v vng >/dev/null 2>&1; then
    echo "deps: pip install virtme-ng"
    python3 -m pip install -q "virtme-ng==1.42"
    command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi

echo "deps: all prerequisites present"
