#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# make stress: stress_test with every kind of thread (GMEM_STRESS_THREADS,
# default 63: CPU and NPU writers, hmadvise, the racer, the churner's
# munmap/mremap/mprotect next door, fork and SIGKILL), GMEM_STRESS_RUNS
# times (default 3) for GMEM_STRESS_SECONDS each (default 20), each run
# with a new seed (printed; GMEM_SEED repeats one).  Fails on a failed run
# or a splat.  make check runs two smaller mixes only (harness/guest/run-tests.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/config.sh"

"$here/build.sh"
out=$GMEM_BUILD/vm/stress-$GMEM_FLAVOUR
rm -rf "$out"
mkdir -p "$out"
runs=${GMEM_STRESS_RUNS:-3}
echo "stress: $runs run(s) of stress_test, threads ${GMEM_STRESS_THREADS:-63}" >&2
timeout 3600 "$here/vm-run" --append kunit.enable=0 -- env \
	GMEM_STRESS_THREADS="${GMEM_STRESS_THREADS:-63}" \
	GMEM_STRESS_SECONDS="${GMEM_STRESS_SECONDS:-20}" \
	${GMEM_SEED:+GMEM_SEED=$GMEM_SEED} \
	sh -c 'for i in $(seq '"$runs"'); do
		mkdir -p "$1/run$i"
		"$2/stress_test" >"$1/run$i.tap" 2>&1; echo $? >"$1/run$i.rc"
	done; dmesg >"$1/dmesg"; echo done >"$1/finished"' sh "$out" "$GMEM_OBJ/kselftest/gmem" \
	>"$out/console.log" 2>&1 || echo "stress: the VM exited with status $?" >&2
rc=0
for i in $(seq "$runs"); do
	r=$(cat "$out/run$i.rc" 2>/dev/null || echo missing)
	seed=$(grep -o 'seed 0x[0-9a-f]*' "$out/run$i.tap" 2>/dev/null | head -1)
	if [ "$r" = 0 ]; then
		echo "PASS stress run $i ($seed)"
	else
		echo "FAIL stress run $i ($seed): $(grep -h 'Expected 0 (0) == S.failure' -A1 \
			"$out/run$i.tap" 2>/dev/null | tail -1 | sed 's/^# [^:]*:[0-9]*:mixed://')"
		rc=1
	fi
done
splats=$(python3 -c 'import re, sys
sys.path.insert(0, sys.argv[1])
from report import SPLAT_RE
print(sum(1 for l in open(sys.argv[2], errors="replace") if SPLAT_RE.search(l)))' \
	"$here" "$out/dmesg" 2>/dev/null || echo 0)
if [ "$splats" != 0 ]; then
	echo "FAIL $splats splat line(s) in the kernel log ($out/dmesg)"
	rc=1
fi
[ -f "$out/finished" ] || { echo "FAIL the guest did not finish"; rc=1; }
exit $rc
