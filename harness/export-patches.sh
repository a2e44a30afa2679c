#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Write the commits made in build/linux on top of the overlay commit back to
# patches/ (one .patch per commit) and rewrite patches/series.
#
# How to change an existing kernel file:
#   make assemble                       # build/linux = v7.2.13 + overlay + series
#   cd build/linux && edit && git commit -s   # or git rebase -i to amend one
#   harness/export-patches.sh           # back into patches/, then commit here
#
# The last commit, GMEM's MAINTAINERS entry, goes back to MAINTAINERS.patch
# instead; new commits go below it (git rebase -i).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/config.sh"

g() { git -C "$GMEM_SRC" "$@"; }
base=$(g rev-list --reverse "v$KVER..HEAD" | sed -n 1p)
if [ -z "$base" ] || [ "$(g log -1 --format=%s "$base")" != \
	"gmem: add the GMEM files (overlay of the checkout)" ]; then
	base=v$KVER
fi
if g status --porcelain | grep -q .; then
	echo "export-patches: build/linux has uncommitted changes; commit them first" >&2
	exit 1
fi
# Debian's top-level .gitignore ignores everything (/*), so a new file is
# silently left out by `git add -A`: refuse to export without it.
ignored=$(g status --porcelain --ignored | sed -n 's/^!! //p')
if [ -n "$ignored" ]; then
	echo "export-patches: files not in any commit (ignored by the tree's .gitignore):" >&2
	echo "$ignored" | sed 's/^/    /' >&2
	echo "export-patches: git add -f them (and commit --amend), or delete them" >&2
	exit 1
fi
# The MAINTAINERS commit (assemble.sh applies MAINTAINERS.patch last) is
# found by its subject.
end=HEAD
maint=
if [ -f "$GMEM_TOP/MAINTAINERS.patch" ]; then
	msubj=$(git mailinfo /dev/null /dev/null <"$GMEM_TOP/MAINTAINERS.patch" |
		sed -n 's/^Subject: //p')
	for c in $(g rev-list "$base..HEAD"); do
		[ "$(g log -1 --format=%s "$c")" = "$msubj" ] || continue
		if [ "$c" != "$(g rev-parse HEAD)" ]; then
			echo "export-patches: \"$msubj\" must stay the last commit;" \
				"move your commits below it (git rebase -i)" >&2
			exit 1
		fi
		maint=$c
		end=HEAD^
	done
fi
# A blank context line is a single space in format-patch's output; git apply
# takes an empty line for it too (GNU diff --suppress-blank-empty).  Strip
# the space inside hunks, so that no line of a patch ends in whitespace
# (checkpatch, run on a tracked .patch, checks it as a source file).
strip_blank_context() {
	awk '/^@@ /{h=1} /^diff --git /{h=0} { if (h && $0 == " ") print ""; else print }' \
		"$1" >"$1.tmp" && mv "$1.tmp" "$1"
}
rm -f "$GMEM_TOP"/patches/*.patch
mkdir -p "$GMEM_TOP/patches"
g format-patch -q --zero-commit --no-signature --no-numbered \
	-o "$GMEM_TOP/patches" "$base..$end"
for p in "$GMEM_TOP"/patches/*.patch; do
	strip_blank_context "$p"
done
if [ -n "$maint" ]; then
	g format-patch -q --zero-commit --no-signature --no-numbered --stdout \
		-1 "$maint" >"$GMEM_TOP/MAINTAINERS.patch"
	strip_blank_context "$GMEM_TOP/MAINTAINERS.patch"
fi
{
	echo "# GMEM: changes to existing kernel files, applied in order on"
	echo "# Linux $KVER after the new files.  See harness/export-patches.sh."
	(cd "$GMEM_TOP/patches" && ls -1 ./*.patch | sed 's|^\./||')
} >"$GMEM_TOP/patches/series"
echo "export-patches: $(g rev-list --count "$base..$end") patch(es) in patches/${maint:+, and MAINTAINERS.patch}" >&2
