# SPDX-License-Identifier: GPL-2.0
# Shared settings of the GMEM harness, sourced by every script in harness/.

# The pinned kernel source: Debian's linux-source package.
KVER_MAJOR=7.2
KVER=7.2.13
DEB_VERSION=7.2.13-1
DEB_SHA256=30a8c5fc63f9028a62e6d7b3f7f43bee67425dbce2a05fceba83f9b87c92083d

GMEM_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GMEM_CACHE=${GMEM_CACHE:-$HOME/.cache/gmem}
GMEM_BUILD=${GMEM_BUILD:-$GMEM_TOP/build}
# Assembled source tree (a git repository: tag v$KVER is the pristine
# baseline, every patch of the series is a commit on top of it).
GMEM_SRC=$GMEM_BUILD/linux
# Flavour of the build: "default" or "debug" (KASAN, lockdep, ...) or "nogmem".
GMEM_FLAVOUR=${GMEM_FLAVOUR:-default}
GMEM_OBJ=$GMEM_BUILD/obj-$GMEM_FLAVOUR
# Extra make arguments of the flavour: KASAN with Rust needs clang.
case "$GMEM_FLAVOUR" in
debug) GMEM_MAKE_ARGS=(LLVM=-19) ;;
*) GMEM_MAKE_ARGS=() ;;
esac

case ":$PATH:" in
*":$HOME/.cargo/bin:"*) ;;
*) PATH=$HOME/.cargo/bin:$PATH ;;
esac
case ":$PATH:" in
*":$HOME/.local/bin:"*) ;;
*) PATH=$HOME/.local/bin:$PATH ;;
esac
export PATH

# Whether a checkpatch finding is justified in harness/lint-allow.txt (make
# lint, make series).
lint_allowed() {
	local line=$1 pat
	while IFS=$'\t' read -r pat _; do
		case "$pat" in '#'* | '') continue ;; esac
		echo "$line" | grep -qE "$pat" && return 0
	done <"$GMEM_TOP/harness/lint-allow.txt"
	return 1
}
