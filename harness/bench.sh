#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# make bench: GMEM's migrations and faults against the upstream HMM test
# driver and the memcpy limit, all measured in one boot of the test kernel,
# and the anonymous page-fault benchmark against the same tree built with
# CONFIG_GMEM=n (a second boot).  Prints one table (GMEM figure, baseline,
# ratio, target) and writes it as build/bench/bench.{txt,json,png}; the
# guests' raw output is in build/vm/bench/.
#
# Environment:
#   GMEM_BENCH_NOBUILD=1   build no kernel: use the kernels and kselftests
#                          that are there (hmm-tests is built all the same)
#   GMEM_BENCH_BINDIR      where npu_bench, fault_bench and tracking_bench
#                          are (default: the flavour's kselftest/gmem)
#   GMEM_BENCH_NOGMEM      "build" (default): bring build/obj-nogmem up to
#                          date (an incremental build if it exists);
#                          "reuse": boot the kernel there as it is
#   GMEM_NPU_MIB           each NPU's DRAM (default 512: the 256 MiB
#                          prefetches must fit)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/config.sh"

log() { printf 'bench: %s\n' "$*" >&2; }

start=$(date +%s)
nogmem_obj=$GMEM_BUILD/obj-nogmem
if [ "${GMEM_BENCH_NOBUILD:-0}" != 1 ]; then
	"$here/build.sh"
	# The baseline must be the same tree and configuration, CONFIG_GMEM
	# aside: build.sh reconfigures and rebuilds what changed.
	if [ "${GMEM_BENCH_NOGMEM:-build}" != reuse ] ||
	   [ ! -f "$nogmem_obj/arch/x86/boot/bzImage" ]; then
		log "building the CONFIG_GMEM=n kernel (the page-fault baseline)"
		GMEM_FLAVOUR=nogmem "$here/build.sh"
	fi
fi
nogmem_kernel=$nogmem_obj/arch/x86/boot/bzImage
[ -f "$nogmem_kernel" ] ||
	{ log "no CONFIG_GMEM=n kernel in ${nogmem_obj#"$GMEM_TOP"/}"; exit 1; }
log "CONFIG_GMEM=n kernel built $(date -r "$nogmem_kernel" '+%F %T'), GMEM kernel $(date -r \
	"$GMEM_OBJ/arch/x86/boot/bzImage" '+%F %T')"
[ "$nogmem_obj/.config" -nt "$nogmem_kernel" ] &&
	log "warning: ${nogmem_obj#"$GMEM_TOP"/}/.config is newer than its kernel: the page-fault baseline may be stale"

bindir=${GMEM_BENCH_BINDIR:-$GMEM_OBJ/kselftest/gmem}
for b in npu_bench fault_bench tracking_bench; do
	[ -x "$bindir/$b" ] || { log "no $bindir/$b; run make build"; exit 1; }
done
bench=$GMEM_BUILD/bench
test_hmm_ko=$GMEM_OBJ/lib/test_hmm.ko
hmm_tests=$bench/bin/hmm-tests
if [ ! -f "$test_hmm_ko" ]; then
	# The report then says that the HMM figures are missing.
	log "no ${test_hmm_ko#"$GMEM_TOP"/} (CONFIG_TEST_HMM=m): no HMM baseline"
	hmm_tests=
fi

# hmm-tests, from the assembled tree, against this kernel's headers.  Built
# here rather than with the mm selftests' Makefile, which writes its
# configuration probe into the source tree; these are the files and flags
# it would use.
mm=$GMEM_SRC/tools/testing/selftests/mm
mkdir -p "$bench/bin"
log "building hmm-tests"
gcc -Wall -O2 -Wunreachable-code -U_FORTIFY_SOURCE -D_GNU_SOURCE= -I "$GMEM_SRC" \
	-isystem "$GMEM_OBJ/usr/include" -isystem "$GMEM_SRC/tools/include/uapi" \
	-I "$GMEM_SRC/tools/testing/selftests" -I "$mm" \
	-o "$bench/bin/hmm-tests" \
	"$mm/hmm-tests.c" "$mm/vm_util.c" "$mm/hugepage_settings.c" \
	-lrt -lpthread -lm

out=$GMEM_BUILD/vm/bench
rm -rf "$out"
mkdir -p "$out/nogmem"
# No KUnit suite at boot: it would only add noise.  The CONFIG_GMEM=n boot
# first, so that its page-fault figures and the GMEM kernel's, which come
# first in its boot, are measured close together.
export GMEM_NPU_MIB=${GMEM_NPU_MIB:-512}
log "booting the CONFIG_GMEM=n kernel for the page-fault baseline"
t0=$(date +%s)
GMEM_FLAVOUR=nogmem timeout 900 "$here/vm-run" --append kunit.enable=0 -- \
	"$here/guest/bench.sh" "$out/nogmem" "$bindir" nogmem \
	>"$out/nogmem/console.log" 2>&1 || log "the VM exited with status $?"
echo $(($(date +%s) - t0)) >"$out/nogmem/seconds"
log "booting the $GMEM_FLAVOUR kernel (NPUs of $GMEM_NPU_MIB MiB) for the benchmarks"
t0=$(date +%s)
timeout 1800 "$here/vm-run" --append kunit.enable=0 -- \
	"$here/guest/bench.sh" "$out" "$bindir" gmem "$hmm_tests" "$test_hmm_ko" \
	"$GMEM_OBJ/lib/test_gmem.ko" \
	>"$out/console.log" 2>&1 || log "the VM exited with status $?"
echo $(($(date +%s) - t0)) >"$out/seconds"

rc=0
"$here/bench-report.py" "$out" "$bench" || rc=$?
log "$(($(date +%s) - start)) s in all; table, JSON and chart in ${bench#"$GMEM_TOP"/}/, raw output in ${out#"$GMEM_TOP"/}/"
exit $rc
