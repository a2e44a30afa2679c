#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# make run: build and boot the GMEM kernel and show it working.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/config.sh"

"$here/build.sh"
demo=$GMEM_OBJ/demo/peer_shared_demo
mkdir -p "${demo%/*}"
gcc -Wall -O2 -isystem "$GMEM_OBJ/usr/include" -o "$demo" \
	"$here/demo/peer_shared_demo.c"
echo "run: booting the GMEM kernel ($(basename "$GMEM_OBJ"))" >&2
"$here/vm-run" -- bash -c "uname -r; dmesg | grep -i gmem; $demo"
