#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Assemble the GMEM kernel tree in $GMEM_SRC (build/linux):
#   - the pristine Linux source is committed once and tagged v$KVER;
#   - every patch of patches/series becomes one commit on top of it
#     (author, subject and body taken from the patch, like `git am`);
#   - the new GMEM files (kernel paths in this checkout) are one more commit;
#   - MAINTAINERS.patch (GMEM's MAINTAINERS entry) is the last commit.
# `git -C build/linux log v$KVER..` lists the series and
# `git -C build/linux diff v$KVER` shows all of it.
#
# Commits are built in a temporary index, then the work tree is moved with
# `git reset --hard`, which rewrites only the files whose content changed:
# an unchanged header keeps its mtime and the next build stays incremental.
# Do not edit build/linux by hand; edit the checkout and re-assemble.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/config.sh"

log() { printf 'assemble: %s\n' "$*" >&2; }

# Roots in this checkout that hold files at their kernel paths.
OVERLAY_ROOTS=(Kconfig.gmem mm rust include lib samples tools Documentation)

export GIT_AUTHOR_NAME=${GIT_AUTHOR_NAME:-GMEM harness}
export GIT_AUTHOR_EMAIL=${GIT_AUTHOR_EMAIL:-gmem@localhost}
export GIT_COMMITTER_NAME=$GIT_AUTHOR_NAME GIT_COMMITTER_EMAIL=$GIT_AUTHOR_EMAIL
# Fixed dates make the assembled commits reproducible.
export GIT_COMMITTER_DATE="2026-01-01T00:00:00Z"

g() { git -C "$GMEM_SRC" "$@"; }

if ! g rev-parse -q --verify "refs/tags/v$KVER" >/dev/null 2>&1; then
	tarball=$("$here/fetch-source.sh")
	log "unpacking pristine Linux $KVER into $GMEM_SRC (once)"
	rm -rf "$GMEM_SRC"
	mkdir -p "$GMEM_SRC"
	tar -xJf "$tarball" -C "$GMEM_SRC" --strip-components=1
	g init -q -b gmem
	g config core.autocrlf false
	g config gc.auto 0
	# The tarball ships its own .gitignore files; commit everything.
	g add -f -A .
	GIT_AUTHOR_DATE=$GIT_COMMITTER_DATE \
		g commit -q -m "Linux $KVER (Debian linux-source-$KVER_MAJOR $DEB_VERSION)"
	g tag "v$KVER"
fi

idx=$(mktemp)
trap 'rm -f "$idx" "$idx.msg" "$idx.patch" "$idx.info"' EXIT
gi() { GIT_INDEX_FILE=$idx git -C "$GMEM_SRC" "$@"; }

head=$(g rev-parse "v$KVER^{commit}")
gi read-tree "$head"

# 1. The new files, in one commit.
cd "$GMEM_TOP"
files=$(git ls-files --cached --others --exclude-standard -- "${OVERLAY_ROOTS[@]}" |
	while read -r f; do [ -f "$f" ] && echo "$f"; done)
if [ -n "$files" ]; then
	while read -r f; do
		mode=100644
		[ -x "$f" ] && mode=100755
		sha=$(git -C "$GMEM_SRC" hash-object -w --no-filters -- "$GMEM_TOP/$f")
		printf '%s %s\t%s\n' "$mode" "$sha" "$f"
	done <<<"$files" | gi update-index --add --index-info
	tree=$(gi write-tree)
	head=$(GIT_AUTHOR_DATE=$GIT_COMMITTER_DATE g commit-tree "$tree" -p "$head" \
		-m "gmem: add the GMEM files (overlay of the checkout)")
fi

# 2. The series, then the MAINTAINERS entry (last, so that
# export-patches.sh can leave it out of patches/).
patch_files() {
	if [ -f "$GMEM_TOP/patches/series" ]; then
		while read -r p; do
			p=${p%%#*}
			p=$(echo "$p" | xargs)
			[ -n "$p" ] || continue
			echo "$GMEM_TOP/patches/$p"
		done <"$GMEM_TOP/patches/series"
	fi
	[ ! -f "$GMEM_TOP/MAINTAINERS.patch" ] || echo "$GMEM_TOP/MAINTAINERS.patch"
}
while read -r file; do
	p=${file#"$GMEM_TOP"/}
	if ! gi apply --cached --whitespace=nowarn "$file"; then
		log "patch $p does not apply"
		exit 1
	fi
	git mailinfo "$idx.msg" "$idx.patch" <"$file" >"$idx.info"
	subject=$(sed -n 's/^Subject: //p' "$idx.info")
	author=$(sed -n 's/^Author: //p' "$idx.info")
	email=$(sed -n 's/^Email: //p' "$idx.info")
	tree=$(gi write-tree)
	head=$( {
		echo "$subject"
		echo
		cat "$idx.msg"
	} | GIT_AUTHOR_NAME=${author:-$GIT_AUTHOR_NAME} \
		GIT_AUTHOR_EMAIL=${email:-$GIT_AUTHOR_EMAIL} \
		GIT_AUTHOR_DATE=$GIT_COMMITTER_DATE \
		g commit-tree "$tree" -p "$head")
done < <(patch_files)

if [ "$(g rev-parse HEAD 2>/dev/null)" != "$head" ]; then
	g reset -q --hard "$head"
	log "assembled $(g rev-list --count "v$KVER..HEAD") commit(s) on v$KVER"
fi
