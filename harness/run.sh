#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# make run: build and boot the GMEM kernel and show it working: the
# MAP_PEER_SHARED/hmadvise() demo, then the CPU and the two simulated NPUs
# taking turns on one buffer (harness/demo/).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/config.sh"

"$here/build.sh"
demo=$GMEM_OBJ/demo
mkdir -p "$demo"
cflags=(-Wall -O2 -isystem "$GMEM_OBJ/usr/include")
gcc "${cflags[@]}" -o "$demo/peer_shared_demo" "$here/demo/peer_shared_demo.c"
# The NPU's uapi header is private to the sample driver (not installed).
gcc "${cflags[@]}" -I "$GMEM_TOP/samples/rust/gmem_npu_sim" \
	-o "$demo/npu_demo" "$here/demo/npu_demo.c"
echo "run: booting the GMEM kernel ($(basename "$GMEM_OBJ"))" >&2
"$here/vm-run" -- bash -c "uname -r; dmesg | grep -i gmem; rc=0; \
	$demo/peer_shared_demo || rc=1; echo; $demo/npu_demo || rc=1; exit \$rc"
