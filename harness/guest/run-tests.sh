#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Runs inside the test kernel (started by harness/check.sh through vm-run):
# the GMEM kselftests, then the kernel log.  Results go to $1 (a directory
# under build/vm/, writable from the guest); harness/report.py reads them.
#
#   run-tests.sh OUT TESTDIR [GLOB...]
#
# The GLOBs pick the test programs of TESTDIR to run (default: every
# *_test).
set -u
out=$1
tests=$2
shift 2
globs=("${@:-*_test}")
glob="${globs[*]}"
mkdir -p "$out"
# stress_test runs separately (below) unless a glob names it.
# Unquoted: each glob expands to the programs it names.
for t in ${globs[@]/#/$tests/}; do
	[ -x "$t" ] && [ -f "$t" ] || continue
	name=$(basename "$t")
	[ "$name" = stress_test ] && [ "$glob" = "*_test" ] && continue
	# kselftest_harness has a per-test timeout; this bounds the program
	# (a debug kernel takes about ten times as long).
	timeout 1800 "$t" >"$out/$name.tap" 2>&1
	echo $? >"$out/$name.rc"
done
# stress_test in make check: the full mix of its threads (63) and the mix
# that lost data last (CPU and NPU writers, hmadvise and fork: 39), 10 s
# each.  make stress runs longer and more.
if [ "$glob" = "*_test" ] && [ -x "$tests/stress_test" ]; then
	for mask in 63 39; do
		GMEM_STRESS_THREADS=$mask GMEM_STRESS_SECONDS=${GMEM_STRESS_SECONDS:-10} \
			timeout 600 "$tests/stress_test" >"$out/stress_test-$mask.tap" 2>&1
		echo $? >"$out/stress_test-$mask.rc"
	done
fi
# The upstream hmm-tests, unmodified, on test_gmem (lib/test_hmm's mirror
# device on the GMEM driver API), loaded for this run only; report.py holds
# its results against harness/hmm-known.txt.  Each mirror gets 288 MiB, so
# that benchmark_thp_migration's 256 MiB buffer fits on the device.
# On the debug kernel (kmemleak, KASAN, lockdep) benchmark_thp_migration, a
# 256 MiB benchmark that make bench runs on the default kernel, outlasts the
# harness's timeout under TCG: it is left out there.
if [ "$glob" = "*_test" ] && [ -x "$tests/test_gmem.sh" ]; then
	hmm_args=()
	[ -e /sys/kernel/debug/kmemleak ] && hmm_args=(-- -T benchmark_thp_migration)
	TEST_GMEM_PARAMS=devmem_mib=288 timeout 1200 "$tests/test_gmem.sh" \
		"$(dirname "$(dirname "$tests")")/lib/test_gmem.ko" "${hmm_args[@]}" \
		>"$out/hmm_gmem.tap" 2>&1
	echo $? >"$out/hmm_gmem.rc"
fi
if [ -w /sys/kernel/debug/kmemleak ]; then
	echo scan >/sys/kernel/debug/kmemleak
	sleep 6
	echo scan >/sys/kernel/debug/kmemleak
	cat /sys/kernel/debug/kmemleak >"$out/kmemleak"
fi
dmesg >"$out/dmesg"
echo done >"$out/finished"
