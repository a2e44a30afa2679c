#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# make check: build, boot the test kernel, run every GMEM KUnit suite (at
# boot) and every GMEM kselftest; then boot it a second time with NPUs that
# do not fault (gmem_npu_sim.faultable=0) and run npu_test and policy_test
# again.  Fails on any failed test and on any splat in either guest's kernel
# log.  The last line is "N passed, M failed".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/config.sh"

start=$(date +%s)
"$here/build.sh"

out=$GMEM_BUILD/vm/check-$GMEM_FLAVOUR
# The debug kernel (KASAN, lockdep, kmemleak) runs the tests about ten
# times slower under TCG: it gets longer before a guest counts as hung.
slow=1
[ "$GMEM_FLAVOUR" = debug ] && slow=3
rm -rf "$out"
mkdir -p "$out"
echo "check: booting the $GMEM_FLAVOUR kernel and running the tests" >&2
# Only GMEM's KUnit suites run at boot.  A hung guest is killed by timeout.
timeout $((1800 * slow)) "$here/vm-run" --append "kunit.filter_glob=gmem*" -- \
	"$here/guest/run-tests.sh" "$out" "$GMEM_OBJ/kselftest/gmem" \
	>"$out/console.log" 2>&1 || echo "check: the VM exited with status $?" >&2
# The second boot: the NPU driver prefaults each job instead of faulting.
# This boot's KUnit run is the doc examples (doctests) of kernel::gmem and
# kernel::xarray, both of which GMEM adds to (the glob, one per boot, matches
# rust_doctest_kernel_gmem_* and rust_doctest_kernel_xarray_* only); results in
# $out/nofault (report.py reads them).
echo "check: booting again with gmem_npu_sim.faultable=0 for npu_test and policy_test" >&2
mkdir -p "$out/nofault"
doctests='rust_doctests_kernel.rust_doctest_kernel_[gx][ma][er][mr]*'
timeout $((900 * slow)) "$here/vm-run" --append "kunit.filter_glob=$doctests" \
	--append "gmem_npu_sim.faultable=0" -- \
	"$here/guest/run-tests.sh" "$out/nofault" "$GMEM_OBJ/kselftest/gmem" npu_test policy_test \
	>"$out/nofault/console.log" 2>&1 || echo "check: the VM exited with status $?" >&2
rc=0
"$here/report.py" "$out" | tee "$out/report" | tail -n 200 || rc=$?
echo "check: $(($(date +%s) - start)) s in all; results in ${out#"$GMEM_TOP"/}" >&2
# The report's last line must be the last line of output.
tail -n 1 "$out/report"
exit $rc
