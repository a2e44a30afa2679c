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
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/config.sh"

g() { git -C "$GMEM_SRC" "$@"; }
base=$(g rev-list --reverse "v$KVER..HEAD" | head -n 1)
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
rm -f "$GMEM_TOP"/patches/*.patch
mkdir -p "$GMEM_TOP/patches"
g format-patch -q --zero-commit --no-signature --no-numbered \
	-o "$GMEM_TOP/patches" "$base..HEAD"
# A blank context line is a single space in format-patch's output; git apply
# takes an empty line for it too (GNU diff --suppress-blank-empty).  Strip
# the space inside hunks, so that no line of a patch ends in whitespace
# (checkpatch, run on a tracked .patch, checks it as a source file).
for p in "$GMEM_TOP"/patches/*.patch; do
	awk '/^@@ /{h=1} /^diff --git /{h=0} { if (h && $0 == " ") print ""; else print }' \
		"$p" >"$p.tmp" && mv "$p.tmp" "$p"
done
{
	echo "# GMEM: changes to existing kernel files, applied in order on"
	echo "# Linux $KVER after the new files.  See harness/export-patches.sh."
	(cd "$GMEM_TOP/patches" && ls -1 ./*.patch | sed 's|^\./||')
} >"$GMEM_TOP/patches/series"
echo "export-patches: $(g rev-list --count "$base..HEAD") patch(es) in patches/" >&2
