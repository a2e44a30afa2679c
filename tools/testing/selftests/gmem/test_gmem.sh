#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The upstream HMM suite (hmm-tests, unmodified) on test_gmem, lib/test_hmm's
# mirror device on the GMEM driver API: load the module, run hmm-tests with
# hmm_preload.so (private anonymous mappings are MAP_PEER_SHARED, and
# /dev/hmm_dmirror<N> is /dev/gmem_mirror<N>), unload the module.  The
# output is hmm-tests' TAP.
#
#   test_gmem.sh [MODULE.ko] [-- HMM-TESTS-ARGUMENTS...]
#
# MODULE.ko is loaded with insmod when modprobe does not find test_gmem.
# TEST_GMEM_PARAMS holds module parameters (devmem_mib=N).

ksft_skip=4
dir=$(dirname "$(readlink -f "$0")")
ko=
if [ $# -gt 0 ] && [ "$1" != -- ]; then
	ko=$1
	shift
fi
[ "${1:-}" = -- ] && shift

if [ "$(id -u)" != 0 ]; then
	echo "$0: must be run as root"
	exit $ksft_skip
fi
# shellcheck disable=SC2086
if ! modprobe test_gmem $TEST_GMEM_PARAMS 2>/dev/null &&
   ! { [ -n "$ko" ] && insmod "$ko" $TEST_GMEM_PARAMS; }; then
	echo "$0: cannot load test_gmem (CONFIG_TEST_GMEM=m)"
	exit $ksft_skip
fi

LD_PRELOAD=$dir/hmm_preload.so "$dir/hmm-tests" "$@"
rc=$?
rmmod test_gmem || rc=1
exit $rc
