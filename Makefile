# SPDX-License-Identifier: GPL-2.0
#
# GMEM: build, boot and test the kernel.  See README.md.
#
#   make run      set up, build, boot the GMEM kernel and show it working
#   make check    set up, build, boot, run every GMEM test; last line
#                 "N passed, M failed"
#   make check-debug  the same tests on the debug flavour (KASAN, lockdep,
#                 DEBUG_VM, kmemleak, Rust debug assertions), built with LLVM
#   make stress   stress_test with all its threads, 3 runs of 20 s
#   make lint     checkpatch --strict, rustfmt, clippy, SAFETY comments
#   make bench    GMEM against HMM and memcpy in one boot, and page faults
#                 against a CONFIG_GMEM=n kernel; table, JSON and PNG in
#                 build/bench/
#   make build    set up and build only (incremental)
#   make assemble build/linux = Linux 7.2.13 + the GMEM files + patches/
#   make patches  write the commits made in build/linux back to patches/
#   make series   the mailable series (split by concept, cover letter,
#                 checkpatch) in build/series/
#   make series-check  apply and build every patch of build/series in turn
#                 (SERIES_CHECK_ARGS=--dry-run: apply only)
#   make cross-arm64  cross-build vmlinux and modules for arm64
#   make vm CMD=  run CMD in the booted test kernel (default: a shell)
#   make clean    remove build/ (the download cache stays)

H := harness

.PHONY: all deps assemble build run check check-debug stress lint bench patches vm clean \
	series series-check cross-arm64
all: build

deps:
	@$(H)/deps.sh

assemble: deps
	@$(H)/assemble.sh

build:
	@$(H)/build.sh

run:
	@$(H)/run.sh

check:
	@$(H)/check.sh

check-debug:
	@GMEM_FLAVOUR=debug $(H)/check.sh

stress:
	@$(H)/stress.sh

lint:
	@$(H)/lint.sh

bench:
	@$(H)/bench.sh

patches:
	@$(H)/export-patches.sh

series: deps
	@$(H)/series.sh

series-check:
	@$(H)/series-check.sh $(SERIES_CHECK_ARGS)

cross-arm64:
	@$(H)/cross-arm64.sh

vm:
	@$(H)/vm-run -- $(if $(CMD),$(CMD),bash)

clean:
	rm -rf build
