#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# make series-check: does every patch of build/series (make series) apply
# and build on its own?  The patches are applied one by one with `git am`
# in a scratch work tree (build/series-work/tree, checked out at v$KVER),
# and after each one the kernel is built incrementally in build/obj-series
# with the default flavour's configuration: virtme-ng's defconfig plus
# harness/configs/gmem.config, merged on the pristine tree (again when
# gmem.config changes) and re-applied before every step (so that
# CONFIG_GMEM=y takes effect from the patch that creates the option on,
# instead of being dropped by the steps before it).  Stops at the first patch that does not apply or
# build and says which; build logs in build/series-work/logs/, the time
# each step's build took in its times file.
#
# A full run is one cold build plus an incremental build per patch; the
# patches that change <linux/mm.h> or the configuration rebuild most of
# the tree (hours on 2 cores).
#
# Options:
#   --dry-run     only apply the patches (no configuration, no build)
#   --from N      build only from patch N on (earlier ones are applied)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/config.sh"

log() { printf 'series-check: %s\n' "$*" >&2; }

dry=0 from=1
while [ $# -gt 0 ]; do
	case "$1" in
	--dry-run) dry=1 ;;
	--from) from=$2; shift ;;
	*) log "unknown option $1"; exit 2 ;;
	esac
	shift
done

series=$GMEM_BUILD/series
work=$GMEM_BUILD/series-work
tree=$work/tree
obj=$GMEM_BUILD/obj-series
logs=$work/logs
mapfile -t patches < <(ls "$series"/[0-9]*.patch 2>/dev/null | grep -v '/0000-cover-letter')
[ ${#patches[@]} -gt 0 ] || { log "no patches in ${series#"$GMEM_TOP"/}; run make series"; exit 1; }

# The scratch work tree: a worktree of build/linux, detached at v$KVER
# (git rewrites only the files that differ, so builds stay incremental).
if [ ! -e "$tree/.git" ]; then
	log "creating the scratch work tree ${tree#"$GMEM_TOP"/} (once)"
	mkdir -p "$work"
	git -C "$GMEM_SRC" worktree add -q --detach "$tree" "v$KVER"
fi
T() { git -C "$tree" "$@"; }
T am --abort >/dev/null 2>&1 || true
T checkout -q -f --detach "v$KVER"
T clean -q -fdx
mkdir -p "$logs"
rm -f "$logs/times"

frags=("$here/configs/gmem.config")
base_config=$obj/.gmem-series-base-config
jobs=$(nproc)
configure() {	# the base configuration once, then olddefconfig per step
	if [ ! -f "$base_config" ] || [ "${frags[0]}" -nt "$base_config" ]; then
		log "configuring (virtme-ng defconfig + gmem.config) on v$KVER"
		mkdir -p "$obj"
		(cd "$tree" && virtme-configkernel --defconfig O="$obj") >"$logs/config.log" 2>&1
		"$tree/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" \
			"${frags[@]}" >>"$logs/config.log" 2>&1
		cp "$obj/.config" "$base_config"
	fi
	# Unchanged options keep their timestamps: the build stays incremental.
	cp "$base_config" "$obj/.config"
	make -s -C "$tree" O="$obj" olddefconfig >>"$logs/config.log" 2>&1
}

n=0
for p in "${patches[@]}"; do
	n=$((n + 1))
	subj=$(sed -n 's/^Subject: //p' "$p" | head -n 1)
	if ! T -c user.name=series-check -c user.email=series-check@localhost \
		am -q --keep-cr "$p" >"$logs/$n.am.log" 2>&1; then
		T am --abort >/dev/null 2>&1 || true
		log "FAIL: patch $n does not apply: $subj (${logs#"$GMEM_TOP"/}/$n.am.log)"
		exit 1
	fi
	if [ "$dry" = 1 ] || [ "$n" -lt "$from" ]; then
		log "applied $n/${#patches[@]}: $subj"
		continue
	fi
	configure
	log "building $n/${#patches[@]}: $subj"
	t0=$SECONDS
	if ! make -s -C "$tree" O="$obj" -j"$jobs" bzImage modules >"$logs/$n.build.log" 2>&1; then
		log "FAIL: the tree does not build after patch $n: $subj"
		tail -n 30 "$logs/$n.build.log" >&2
		exit 1
	fi
	printf '%3d %5d s  %s\n' "$n" $((SECONDS - t0)) "$subj" >>"$logs/times"
done
if [ "$dry" = 1 ]; then
	log "all ${#patches[@]} patches apply (dry run: nothing built)"
else
	# The last step must have the default flavour's options, as build.sh checks.
	for opt in CONFIG_RUST CONFIG_GMEM CONFIG_SAMPLE_RUST_GMEM_NPU_SIM; do
		grep -q "^$opt=y" "$obj/.config" || { log "FAIL: $opt is not =y at the end"; exit 1; }
	done
	log "all ${#patches[@]} patches apply and build (seconds per step:" \
		"${logs#"$GMEM_TOP"/}/times)"
fi
