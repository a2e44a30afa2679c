#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# make cross-arm64: cross-build the GMEM kernel for arm64 in
# build/obj-arm64: arm64 allnoconfig plus harness/configs/arm64.config
# (RUST, GMEM, the simulated NPU as a module), vmlinux and modules.
#
# Toolchain (GMEM_ARM64_TOOLCHAIN):
#   gcc   (default) Debian bookworm's gcc-aarch64-linux-gnu, installed if
#         missing (CROSS_COMPILE=aarch64-linux-gnu-)
#   llvm  clang/lld 19, already installed by deps.sh (LLVM=-19)
# Rust needs no extra rustup target: arm64 uses rustc's built-in
# aarch64-unknown-none-softfloat target (arch/arm64/Makefile), and the
# kernel builds `core` itself from rust-src.
#
# Options:
#   --config-only   configure and check the options, build nothing
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/config.sh"

log() { printf 'cross-arm64: %s\n' "$*" >&2; }

config_only=0
[ "${1:-}" != --config-only ] || config_only=1

"$here/deps.sh"
toolchain=${GMEM_ARM64_TOOLCHAIN:-gcc}
case "$toolchain" in
gcc)
	pkgs=(gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu)
	missing=()
	for p in "${pkgs[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		[ "$(id -u)" = 0 ] || { log "must run as root to install ${missing[*]}"; exit 1; }
		log "installing ${missing[*]} (bookworm)"
		# sid is pinned to 1 (deps.sh): these come from bookworm.
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			-t bookworm "${missing[@]}" >/dev/null
	fi
	make_args=(ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-)
	;;
llvm) make_args=(ARCH=arm64 LLVM=-19) ;;
*) log "GMEM_ARM64_TOOLCHAIN must be gcc or llvm"; exit 2 ;;
esac

# build/linux as assembled; re-assembled only if nobody works in it.
if git -C "$GMEM_SRC" status --porcelain --untracked-files=no 2>/dev/null | grep -q .; then
	log "warning: build/linux has uncommitted changes; building it as it is"
else
	"$here/assemble.sh"
fi

obj=$GMEM_BUILD/obj-arm64
frag=$here/configs/arm64.config
mkdir -p "$obj"
stamp=$obj/.gmem-config-stamp
want=$( {
	echo "${make_args[*]}"
	cat "$frag"
	git -C "$GMEM_SRC" ls-tree -r HEAD | grep -E 'Kconfig[^/]*$'
} | sha256sum | cut -d' ' -f1)
if [ ! -f "$obj/.config" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
	# allnoconfig, not defconfig: the point is that GMEM and the sample
	# compile for arm64 (the generic syscall table, arm64's VMA flags), and
	# defconfig's thousands of drivers take over an hour on two cores.
	log "configuring: allnoconfig + ${frag##*/} (${make_args[*]})"
	make -s -C "$GMEM_SRC" O="$obj" "${make_args[@]}" allnoconfig >"$obj/.gmem-config.log" 2>&1
	"$GMEM_SRC/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$frag" \
		>>"$obj/.gmem-config.log" 2>&1
	make -s -C "$GMEM_SRC" O="$obj" "${make_args[@]}" olddefconfig >>"$obj/.gmem-config.log" 2>&1
	bad=0
	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=*)
			grep -qxF "$line" "$obj/.config" || { log "config: $line did not stick"; bad=1; } ;;
		"# CONFIG_"*" is not set")
			opt=${line#\# }; opt=${opt%% *}
			! grep -q "^$opt=" "$obj/.config" || { log "config: $opt should be off"; bad=1; } ;;
		esac
	done <"$frag"
	if [ "$bad" = 1 ]; then
		# Why RUST did not stick, if it did not.
		make -s -C "$GMEM_SRC" O="$obj" "${make_args[@]}" rustavailable >&2 || true
		exit 1
	fi
	echo "$want" >"$stamp"
fi
log "config: $(grep -E '^CONFIG_(RUST|GMEM|SAMPLE_RUST_GMEM_NPU_SIM)=' "$obj/.config" | tr '\n' ' ')"
[ "$config_only" = 0 ] || exit 0

log "building vmlinux and modules ($(nproc) jobs)"
make -s -C "$GMEM_SRC" O="$obj" "${make_args[@]}" -j"$(nproc)" vmlinux modules
log "built ${obj#"$GMEM_TOP"/}/vmlinux and the modules"
