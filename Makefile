# SPDX-License-Identifier: GPL-2.0
#
# rtbackup: real-time block-level backup for Linux.
#
#   make                  the module (rtbackup.ko) and the tools
#   make KDIR=/lib/modules/$(uname -r)/build
#                         the module against another kernel's tree or
#                         headers (Documentation/kernels.rst)
#   make deps             install every prerequisite (Debian 12)
#   make kernel           build the test kernel (7.3) into the cache (~/.cache/rtbackup)
#   make demo             replicate a disk in the VM, restore it, compare
#   make check            every test: lints, unit tests, fuzz-check, VM tests
#                         (the suite on the 7.3 test kernel, the smoke test
#                         on 6.12, Debian's stock 7.2 kernel with DKMS),
#                         overlapped as tests/check describes
#   make fuzz             each fuzz target for FUZZ_SECONDS (default 300)
#   make fuzz-check       each fuzz target for 10 s on its checked-in inputs
#   make bench            throughput against the raw device and the peers
#                         (on a second, non-debug kernel: built once, cached)
#   make profile WHAT=write-4k|write-1m|ingest|resync|nbd
#                         where the CPU goes in one bench measurement (perf)
#   make install          the module, tools, man pages, completions, units
#                         (after `make`; see "Installing" below)
#   make dkms-source      the module's sources for DKMS under /usr/src
#   make clean

# The kernel tree to build against. Default: the test kernel of `make kernel`
# (looked up only then: scripts/kernel.sh takes seconds).
ifeq ($(origin KDIR),undefined)
KDIR := $(shell scripts/kernel.sh dir 2>/dev/null)
TEST_KERNEL := 1
endif
# The rustc the kernel tree was configured with (Debian's rustc-web: rustup's
# has no rust-src). Kbuild refuses a different one; scripts/kdir.sh checks it.
KRUSTC ?= $(if $(wildcard /usr/bin/rustc),/usr/bin/rustc,rustc)
KCLIPPY ?= $(if $(wildcard /usr/bin/clippy-driver),/usr/bin/clippy-driver,clippy-driver)
KRUSTFMT ?= $(if $(wildcard /usr/bin/rustfmt),/usr/bin/rustfmt,rustfmt)
CARGO ?= cargo
TOOLS_TARGET := tools/target/release

# Kbuild in the tree that scripts/kdir.sh picks for KDIR (KDIR itself, or
# one whose Rust metadata it generated when KDIR's headers have none), with
# the kernel's own compilers (LLVM=-19, CC=x86_64-linux-gnu-gcc-16...),
# read from the tree when the recipe runs, after `make kernel`.
KMAKE = kdir=$$(KRUSTC=$(KRUSTC) scripts/kdir.sh prepare $(KDIR)) && \
	vars=$$(KRUSTC=$(KRUSTC) scripts/kdir.sh vars $$kdir) && \
	$(MAKE) -C $$kdir M=$(CURDIR) $$vars

.PHONY: all module module-clean tools docs deps kernel check lint lint-module lint-tools test \
	fuzz fuzz-check vm-test vm-lts vm-debian \
	bench bench-module profile demo clean install install-module install-tools dkms-source
all: module tools

ifdef TEST_KERNEL
module: kernel
endif
module:
	@test -n "$(KDIR)" || { echo "no kernel tree: run 'make kernel' or pass KDIR=" >&2; exit 1; }
	+$(KMAKE) modules

# The module's build products only (DKMS cleans with this).
module-clean:
	$(MAKE) -C $(KDIR) M=$(CURDIR) clean

tools:
	$(CARGO) build --release --locked --manifest-path tools/Cargo.toml
	$(TOOLS_TARGET)/rtbackup-docgen $(DOCS_DIR)

# Man pages and shell completions, generated from the command-line
# definitions by rtbackup-docgen (part of `make tools`).
DOCS_DIR := $(TOOLS_TARGET)/docs
docs: tools

# Installing (Documentation/admin-guide.rst). Nothing is built here, so that
# `sudo make install` after `make` needs no toolchain for root.
#   KVER             the kernel to install the module for (default: KDIR's)
#   INSTALL_MOD_PATH a staging root for the module (modules_install's)
#   DESTDIR, PREFIX  a staging root and the prefix of everything else
PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
MANDIR ?= $(PREFIX)/share/man
UNITDIR ?= $(PREFIX)/lib/systemd/system
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/site-functions
SYSCONFDIR ?= /etc
TOOLS := rtbackupctl rtbackup-agent rtbackup-server
KVER ?= $(shell cat $(KDIR)/include/config/kernel.release 2>/dev/null)
VERSION := $(shell sed -n 's/^PACKAGE_VERSION="\(.*\)"/\1/p' dkms.conf)
# The module's sources, as DKMS builds them.
MODULE_SOURCES := Makefile Kbuild dkms.conf scripts/kdir.sh $(wildcard rust/*.rs rust/sys/*.rs rust/compat/*.rs) \
	rust/glue.c rust/glue.h

install: install-module install-tools

# Into extra/ of the kernel's module directory, then depmod, as Kbuild's
# modules_install with INSTALL_MOD_DIR=extra would, without its toolchain
# probes (minutes on a slow machine). The module is not signed: on a kernel
# that requires signatures (Secure Boot), install it with DKMS, which signs
# with its machine owner key.
install-module:
	@test -f rtbackup.ko || { echo "install: rtbackup.ko not built: run 'make' first" >&2; exit 1; }
	@test -n "$(KVER)" || { echo "install: no kernel release from '$(KDIR)': pass KDIR= or KVER=" >&2; exit 1; }
	install -D -m 644 rtbackup.ko $(INSTALL_MOD_PATH)/lib/modules/$(KVER)/extra/rtbackup.ko
	depmod -a $(if $(INSTALL_MOD_PATH),-b $(INSTALL_MOD_PATH)) $(KVER)

install-tools:
	@for t in $(TOOLS) rtbackup-docgen; do test -x $(TOOLS_TARGET)/$$t || \
		{ echo "install: $(TOOLS_TARGET)/$$t not built: run 'make' first" >&2; exit 1; }; done
	@test -d $(DOCS_DIR)/man || { echo "install: no man pages in $(DOCS_DIR): run 'make' first" >&2; exit 1; }
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(SYSCONFDIR)/rtbackup
	install -m 755 $(addprefix $(TOOLS_TARGET)/,$(TOOLS)) $(DESTDIR)$(SBINDIR)/
	install -m 644 $(DOCS_DIR)/man/*.8 $(DESTDIR)$(MANDIR)/man8/
	for t in $(TOOLS); do \
		install -m 644 $(DOCS_DIR)/bash/$$t $(DESTDIR)$(BASHCOMPDIR)/$$t && \
		install -m 644 $(DOCS_DIR)/zsh/_$$t $(DESTDIR)$(ZSHCOMPDIR)/_$$t || exit 1; done
	for u in rtbackup-server.service rtbackup-agent@.service; do \
		sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
			dist/systemd/$$u.in >$(DESTDIR)$(UNITDIR)/$$u && \
		chmod 644 $(DESTDIR)$(UNITDIR)/$$u || exit 1; done
	# Settings are the administrator's: never overwritten.
	for c in server.toml agent.toml; do \
		test -e $(DESTDIR)$(SYSCONFDIR)/rtbackup/$$c || \
		install -m 644 dist/config/$$c $(DESTDIR)$(SYSCONFDIR)/rtbackup/$$c || exit 1; done

dkms-source:
	install -d $(DESTDIR)/usr/src/rtbackup-$(VERSION)
	tar -cf - $(MODULE_SOURCES) | tar -xf - -C $(DESTDIR)/usr/src/rtbackup-$(VERSION)

deps:
	scripts/deps.sh

kernel:
	scripts/kernel.sh build

lint: lint-module lint-tools
lint-module:
	$(KRUSTFMT) --check --edition 2021 --config-path $(KDIR)/source/.rustfmt.toml \
		rust/*.rs rust/sys/*.rs rust/compat/*.rs
	$(KMAKE) CLIPPY=1 CLIPPY_DRIVER=$(KCLIPPY) modules
lint-tools:
	$(CARGO) fmt --manifest-path tools/Cargo.toml --all -- --check
	$(CARGO) clippy --manifest-path tools/Cargo.toml --locked --all-targets -- -D warnings

test:
	$(CARGO) test --manifest-path tools/Cargo.toml --locked
	tests/host/units-verify
	tests/host/kdir-refusals

# Fuzzing (Documentation/testing.rst, "Fuzzing"): cargo-fuzz, built with
# AddressSanitizer and overflow checks. The toolchain is stable:
# RUSTC_BOOTSTRAP=1 lets it take cargo-fuzz's -Z flags. Each target starts
# from its seed corpus and regression inputs (tools/fuzz/corpus/TARGET,
# tools/fuzz/regressions/TARGET, never written to); what it finds goes to
# tools/fuzz/work/TARGET, crashes to tools/fuzz/artifacts/TARGET. -timeout
# catches hangs, -malloc_limit_mb allocations beyond the formats' own limits
# (a 64 MiB frame or record, a 32 MiB NBD read).
FUZZ_TARGETS := frame records segment nbd point agent
FUZZ_SECONDS ?= 300
FUZZ_CHECK_SECONDS ?= 10
FUZZ_DIR := tools/fuzz
FUZZ := RUSTC_BOOTSTRAP=1 $(CARGO) fuzz
FUZZ_ARGS := -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 -print_final_stats=1

# $(call fuzz_run,SECONDS,WORK_DIR,MORE_ARGS,BUILD_ARGS): every target for
# SECONDS, built with cargo-fuzz's BUILD_ARGS.
define fuzz_run
	$(FUZZ) build --fuzz-dir $(FUZZ_DIR) $(4)
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p $(2)/$$t $(FUZZ_DIR)/regressions/$$t && \
		echo "fuzz: $$t for $(1) s" && \
		$(FUZZ) run --fuzz-dir $(FUZZ_DIR) $(4) $$t $(2)/$$t \
			$(FUZZ_DIR)/corpus/$$t $(FUZZ_DIR)/regressions/$$t \
			-- -max_total_time=$(1) $(FUZZ_ARGS) $(3) || { \
		echo "fuzz: $$t failed: its input is in $(FUZZ_DIR)/artifacts/$$t;" \
			"fix it and keep it in $(FUZZ_DIR)/regressions/$$t" >&2; exit 1; }; \
	done
endef

fuzz:
	$(call fuzz_run,$(FUZZ_SECONDS),$(FUZZ_DIR)/work)

# In make check: from the checked-in inputs only (a fresh work directory),
# without a line per new input (a crash is still reported in full). Built
# unoptimised (--dev: debug assertions and overflow checks too), which on
# a fresh machine takes 2 minutes instead of 15: ten seconds a target replay
# the inputs and mutate them thousands of times either way.
fuzz-check:
	rm -rf $(FUZZ_DIR)/work/check
	$(call fuzz_run,$(FUZZ_CHECK_SECONDS),$(FUZZ_DIR)/work/check,-verbosity=0 -print_funcs=0,--dev)

vm-test:
	tests/vm/selftest
	tests/vm/run-suite

# 6.12 LTS, the oldest supported series (Documentation/kernels.rst): the
# module built from its DKMS sources against the lts kernel with clippy
# (warnings are errors), and the replication smoke test booted on it.
LTS_DIR := tests/vm/out/lts
LTS_SRC := $(LTS_DIR)/usr/src/rtbackup-$(VERSION)
vm-lts:
	scripts/kernel.sh build lts
	rm -rf $(LTS_DIR)
	$(MAKE) -s --no-print-directory dkms-source DESTDIR=$(CURDIR)/$(LTS_DIR)
	+$(MAKE) -C $(LTS_SRC) module KDIR=$$(scripts/kernel.sh dir lts) \
		CLIPPY=1 CLIPPY_DRIVER=$(KCLIPPY) KRUSTFLAGS=-Dwarnings KCFLAGS=-Werror
	KDIR=$$(scripts/kernel.sh dir lts) RTB_MODULE=$(CURDIR)/$(LTS_SRC)/rtbackup.ko \
		RTB_VM_DISKS=1 RTB_VM_DISK_MB=256 tests/vm/run tests/vm/cases-in-guest 50-replicate

# Debian's own, unmodified 7.2 kernel: dkms install in a sid system, clippy
# on its toolchain, and replication end to end on that kernel in the VM.
vm-debian:
	tests/dkms/debian-stock

# Throughput ratios against the raw device, measured in one VM run; see
# Documentation/performance.rst. Not part of check: numbers are not tests.
# On the bench kernel (scripts/kernel.sh build bench: the test kernel
# without KASAN, lockdep and kmemleak), with the module built for it from
# the DKMS source tree in $(BENCH_DIR).
# The guest has 8 GiB (RTB_VM_MEM): the store, images and copies live in
# its /tmp, held in its memory, which ran out with 3 GiB ("No space left
# on device") once the faster pipeline let the 8 s jobs write more.
BENCH_DIR := tests/vm/out/bench
BENCH_SRC := $(BENCH_DIR)/usr/src/rtbackup-$(VERSION)
BENCH_VM = KDIR=$$(scripts/kernel.sh dir bench) RTB_MODULE=$(CURDIR)/$(BENCH_SRC)/rtbackup.ko \
	RTB_VM_DISKS=0 RTB_VM_MEM=$${RTB_VM_MEM:-8G} tests/vm/run
bench-module: tools
	scripts/kernel.sh build bench
	rm -rf $(BENCH_DIR)
	$(MAKE) -s --no-print-directory dkms-source DESTDIR=$(CURDIR)/$(BENCH_DIR)
	+$(MAKE) -C $(BENCH_SRC) module KDIR=$$(scripts/kernel.sh dir bench)
bench: bench-module
	$(BENCH_VM) tests/bench/bench-in-guest

# Where the CPU goes in one of the bench's measurements (perf in the VM,
# same kernel and setup); see tests/bench/profile-in-guest.
WHAT ?= write-4k
profile: bench-module
	$(BENCH_VM) tests/bench/profile-in-guest $(WHAT)

# The quick start: server, agent, a filesystem, a restore, in the test VM.
demo: all
	RTB_VM_DISKS=1 tests/vm/run tests/demo/demo-in-guest

# The parts of check overlap (tests/check): the module and the tools are
# built first, and then BUILT=1 keeps the parts that run beside the VM
# suite from building them again while it reads them.
check: deps
	MAKE="$(MAKE)" tests/check

ifndef BUILT
lint-module: module
test vm-lts vm-debian: tools
vm-test: all
endif

clean:
	-$(KMAKE) clean
	$(CARGO) clean --manifest-path tools/Cargo.toml
	rm -rf $(FUZZ_DIR)/target $(FUZZ_DIR)/artifacts $(FUZZ_DIR)/work
