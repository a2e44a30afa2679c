#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Runs inside the test kernel (started by harness/bench.sh through vm-run):
# the benchmarks of make bench.  Raw output goes to $1 (a directory under
# build/vm/, writable from the guest); harness/bench-report.py reads it.
#
#   bench.sh OUT BINDIR gmem HMM_TESTS TEST_HMM_KO [TEST_GMEM_KO]
#   bench.sh OUT BINDIR nogmem
#
# BINDIR holds npu_bench, fault_bench and tracking_bench.  "gmem" runs
# everything on a GMEM kernel with the NPUs, and hmm-tests' migration
# benchmark on the upstream HMM test driver (test_hmm, loaded from
# TEST_HMM_KO if modprobe cannot find it); "nogmem" runs only the
# anonymous page-fault benchmark, on the CONFIG_GMEM=n kernel.  The same
# migration benchmark then runs on test_gmem, the same mirror device on
# GMEM (BINDIR/test_gmem.sh, TEST_GMEM_KO if modprobe cannot find it).
#
# Each benchmark's lines ("npu_bench ...", "fault_bench ...", ...) go to
# OUT/NAME.out, its errors to OUT/NAME.err, a failed command to OUT/errors.
set -u
out=$1
bin=$2
what=$3
hmm_tests=${4:-}
test_hmm_ko=${5:-}
test_gmem_ko=${6:-}

mkdir -p "$out"
rm -f "$out"/*.out "$out"/*.err "$out/errors" "$out/finished"
uname -rv >"$out/uname"

# Sizes in MiB, and the iterations (medians) for each: fewer for larger
# sizes, which TCG takes long to move.
SIZES="2 16 256"
iterations() {
	case $1 in
	2) echo 9 ;;
	16) echo 5 ;;
	*) echo 3 ;;
	esac
}

# run NAME CMD...: CMD's output to OUT/NAME.out, its errors to OUT/NAME.err.
run() {
	local name=$1 rc=0
	shift
	echo "bench: $name $*" >&2
	timeout 900 "$@" >>"$out/$name.out" 2>>"$out/$name.err" || rc=$?
	[ "$rc" = 0 ] || echo "$name: '$*' failed with status $rc" >>"$out/errors"
	[ -s "$out/$name.err" ] || rm -f "$out/$name.err"
}

# The anonymous page-fault benchmark, five runs (the report takes the
# median): TAG says when (before or after GMEM was first used in this boot,
# which switches its hooks on).
fault_bench() {
	local tag=$1 i
	for i in 1 2 3 4 5; do
		run "fault_bench-$tag" "$bin/fault_bench" --iterations 9
	done
}

if [ "$what" = nogmem ]; then
	fault_bench nogmem
	dmesg >"$out/dmesg"
	echo done >"$out/finished"
	exit 0
fi

for n in /sys/kernel/mm/gmem/node*; do
	[ -d "$n" ] && echo "$(cat "$n/name") node${n##*node} $(($(cat "$n/size") >> 20)) MiB"
done >"$out/npu"

# First, before any process has used GMEM (its static key is still off).
fault_bench unused

# 1. and 2. memcpy (the limit for any copy) and GMEM's prefetch to the NPU
# and back, one after the other for each size, so that both see the same
# machine (timings on a shared host drift).
for size in $SIZES; do
	for chunk in 4 2048; do
		run memcpy "$bin/npu_bench" memcpy "$size" "$chunk" "$(iterations "$size")"
		run prefetch "$bin/npu_bench" prefetch "$size" "$chunk" "$(iterations "$size")"
	done
done

# 3. HMM: the upstream test driver's migration benchmark.
if [ -n "$hmm_tests" ]; then
	echo "bench: hmm-tests" >&2
	if ! modprobe test_hmm 2>"$out/test_hmm.err"; then
		insmod "$test_hmm_ko" 2>>"$out/test_hmm.err" ||
			echo "test_hmm: neither modprobe nor insmod $test_hmm_ko worked" >>"$out/errors"
	fi
	[ -s "$out/test_hmm.err" ] || rm -f "$out/test_hmm.err"
	rc=0
	timeout 900 "$hmm_tests" -r hmm.hmm_device_private.benchmark_thp_migration \
		>"$out/hmm-tests.out" 2>&1 || rc=$?
	[ "$rc" = 0 ] || echo "hmm-tests: failed with status $rc" >>"$out/errors"
	rmmod test_hmm 2>/dev/null
	# The same benchmark of the same driver on GMEM.  Each mirror gets
	# 288 MiB: the 256 MiB buffer fits on the device, as on test_hmm's.
	if [ -x "$bin/test_gmem.sh" ]; then
		echo "bench: hmm-tests on test_gmem" >&2
		rc=0
		TEST_GMEM_PARAMS=devmem_mib=288 timeout 900 "$bin/test_gmem.sh" \
			${test_gmem_ko:+"$test_gmem_ko"} -- -r hmm.hmm_device_private.benchmark_thp_migration \
			>"$out/hmm-gmem.out" 2>&1 || rc=$?
		[ "$rc" = 0 ] || echo "hmm-tests on test_gmem: failed with status $rc" >>"$out/errors"
	else
		echo "test_gmem: no $bin/test_gmem.sh" >>"$out/errors"
	fi
fi

# 4. Device faults: zero-fill and migrate-in.
for size in $SIZES; do
	for kind in zero migrate; do
		run fault "$bin/npu_bench" fault "$kind" "$size" "$(iterations "$size")"
	done
done

# 5. CPU faults of pages resident on the NPU.
for size in $SIZES; do
	run cpufault "$bin/npu_bench" cpufault "$size" "$(iterations "$size")"
done

# 5b. A host range read by the NPU in place (MADV_ACCESSED_BY) against
# migrated to it and back.
run inplace "$bin/npu_bench" inplace 16 5

# 5c. CPU/NPU ping-pong on the same pages, thrashing control off and on.
run pingpong "$bin/npu_bench" pingpong 4 10

# 5d. Two NPUs read the same range in turn, read-mostly (copies) and not.
run readmostly "$bin/npu_bench" readmostly 16 4

# 6. Oversubscription: the NPU's limit lowered to 32 MiB.
for factor in 1 2 4; do
	run oversub "$bin/npu_bench" oversub "$factor" 32 3
done

# 7. The anonymous page-fault benchmark again, now that GMEM's hooks are
# on, and on peer-shared memory.
fault_bench used
run fault_bench-peer "$bin/fault_bench" --peer-shared --iterations 9

# 8. Tracking memory per page.
run tracking "$bin/tracking_bench" 256

dmesg >"$out/dmesg"
echo done >"$out/finished"
