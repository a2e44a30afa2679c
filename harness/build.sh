#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Configure and build the GMEM kernel (flavour $GMEM_FLAVOUR) and the GMEM
# kselftests, incrementally, in build/obj-$GMEM_FLAVOUR.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/config.sh"

log() { printf 'build: %s\n' "$*" >&2; }

"$here/deps.sh"
"$here/assemble.sh"

jobs=$(nproc)
frags=("$here/configs/gmem.config")
[ -f "$here/configs/$GMEM_FLAVOUR.config" ] && [ "$GMEM_FLAVOUR" != default ] &&
	frags+=("$here/configs/$GMEM_FLAVOUR.config")

mkdir -p "$GMEM_OBJ"
# Regenerate .config when a fragment (or the tree's Kconfig) changed.
stamp=$GMEM_OBJ/.gmem-config-stamp
want=$( {
	cat "${frags[@]}"
	git -C "$GMEM_SRC" ls-tree -r HEAD | grep -E 'Kconfig[^/]*$'
} | sha256sum | cut -d' ' -f1)
if [ ! -f "$GMEM_OBJ/.config" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
	log "configuring $GMEM_FLAVOUR (virtme-ng defconfig + ${frags[*]##*/})"
	(cd "$GMEM_SRC" && virtme-configkernel --defconfig O="$GMEM_OBJ" \
		"${GMEM_MAKE_ARGS[@]}") \
		>"$GMEM_OBJ/.gmem-config.log" 2>&1
	# Our fragments go last, so that they win over virtme-ng's choices.
	"$GMEM_SRC/scripts/kconfig/merge_config.sh" -m -O "$GMEM_OBJ" \
		"$GMEM_OBJ/.config" "${frags[@]}" >>"$GMEM_OBJ/.gmem-config.log" 2>&1
	make -s -C "$GMEM_SRC" O="$GMEM_OBJ" "${GMEM_MAKE_ARGS[@]}" olddefconfig
	# Every option of the fragments (a later fragment wins) must have
	# survived olddefconfig.
	declare -A want_opt=()
	for f in "${frags[@]}"; do
		while IFS= read -r line; do
			case "$line" in
			CONFIG_*=*) want_opt[${line%%=*}]=${line#*=} ;;
			"# CONFIG_"*" is not set")
				opt=${line#\# }; want_opt[${opt%% *}]=n ;;
			esac
		done <"$f"
	done
	bad=0
	for opt in "${!want_opt[@]}"; do
		v=${want_opt[$opt]}
		if [ "$v" = n ]; then
			grep -q "^$opt=" "$GMEM_OBJ/.config" &&
				{ log "config: $opt should be off"; bad=1; }
		elif ! grep -qxF "$opt=$v" "$GMEM_OBJ/.config"; then
			log "config: $opt=$v did not stick"; bad=1
		fi
	done
	[ "$bad" = 0 ] || exit 1
	echo "$want" >"$stamp"
fi

log "building the kernel ($jobs jobs)"
make -s -C "$GMEM_SRC" O="$GMEM_OBJ" "${GMEM_MAKE_ARGS[@]}" -j"$jobs" bzImage modules
make -s -C "$GMEM_SRC" O="$GMEM_OBJ" "${GMEM_MAKE_ARGS[@]}" headers_install >/dev/null

log "building the GMEM kselftests"
mkdir -p "$GMEM_OBJ/kselftest/gmem"
make -s -C "$GMEM_SRC/tools/testing/selftests/gmem" \
	OUTPUT="$GMEM_OBJ/kselftest/gmem" \
	KHDR_INCLUDES="-isystem $GMEM_OBJ/usr/include" >/dev/null
