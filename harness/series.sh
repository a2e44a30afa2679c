#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# make series: the GMEM series as a reviewer reads it, mailable, in
# build/series/ (git format-patch --cover-letter against v$KVER).
#
# build/linux (assembled first) has all the new files in one commit, then
# one commit per patch.  This rebuilds the same content as a series split
# by concept, as harness/series/spec says: patches keep their message and
# author, new files come in commits whose messages are
# harness/series/*.msg.  The commits are built with git plumbing in a bare
# repository of their own, build/series-work/git (objects shared with
# build/linux through alternates): build/linux's branch is never touched.
# The series' last tree must be build/linux's HEAD tree, byte for byte.
#
# Every patch is then checked with checkpatch.pl --strict; findings not
# justified in harness/lint-allow.txt fail the command (they are listed in
# build/series-checkpatch.txt).  The cover letter's body is
# harness/series/cover-letter.txt with its @...@ fields filled in (the
# figures come from build/bench/bench.json when make bench made one).
#
# Environment:
#   GMEM_SERIES_PREFIX   subject prefix (default "RFC PATCH")
#   GMEM_SERIES_VERSION  reroll count (-v N), none by default
#   GMEM_SERIES_NOASSEMBLE=1  use build/linux as it is
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/config.sh"

log() { printf 'series: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

if [ "${GMEM_SERIES_NOASSEMBLE:-0}" = 1 ]; then
	:
elif git -C "$GMEM_SRC" status --porcelain --untracked-files=no 2>/dev/null | grep -q .; then
	# assemble.sh would reset them away: someone is working in there.
	log "warning: build/linux has uncommitted changes; not re-assembling," \
		"the series is made of its commits as they are"
else
	"$here/assemble.sh"
fi

spec_dir=$here/series
work=$GMEM_BUILD/series-work
out=$GMEM_BUILD/series
repo=$work/git
L() { git -C "$GMEM_SRC" "$@"; }
G() { git --git-dir="$repo" "$@"; }
GI() { GIT_INDEX_FILE=$work/index git --git-dir="$repo" "$@"; }

mkdir -p "$work"
rm -rf "$repo" "$work/index"
git init -q --bare "$repo"
echo "$GMEM_SRC/.git/objects" >"$repo/objects/info/alternates"

base=$(L rev-parse "v$KVER^{commit}")
overlay=$(L rev-list --reverse "v$KVER..HEAD" | sed -n 1p)
[ -n "$overlay" ] && [ "$(L log -1 --format=%s "$overlay")" = \
	"gmem: add the GMEM files (overlay of the checkout)" ] ||
	die "build/linux has no overlay commit on v$KVER; run make assemble"
if L diff-tree -r --no-commit-id --diff-filter=a "$base" "$overlay" | grep -q .; then
	die "the overlay commit changes existing files; those must be patches"
fi
final_tree=$(L rev-parse "HEAD^{tree}")

# The patches: commits after the overlay, with their subjects.
mapfile -t patch_commits < <(L rev-list --reverse "$overlay..HEAD")
declare -A subject_of=() used=()
for c in "${patch_commits[@]}"; do
	subject_of[$c]=$(L log -1 --format=%s "$c")
done

# The new files: "mode sha path" lines of the overlay commit.
mapfile -t new_files < <(L diff-tree -r --no-commit-id --diff-filter=A "$base" "$overlay" |
	awk -F'\t' '{ split($1, m, " "); print m[2] " " m[4] " " $2 }')

# Read the spec: steps[i] = "patch <commit>" | "files <msg> <globs...>" | "rest".
steps=()
while IFS= read -r line; do
	line=${line%%#*}
	read -r kind rest <<<"$line" || true
	case "$kind" in
	"") continue ;;
	patch)
		found=
		for c in "${patch_commits[@]}"; do
			[ -z "${used[$c]:-}" ] || continue
			case "${subject_of[$c]}" in "$rest"*) found=$c; break ;; esac
		done
		if [ -z "$found" ]; then
			log "warning: spec names a patch that is not in build/linux: \"$rest\""
			continue
		fi
		used[$found]=1
		steps+=("patch $found")
		;;
	files)
		read -r msg _ <<<"$rest"
		[ -f "$spec_dir/$msg" ] || die "spec: no message file harness/series/$msg"
		steps+=("files $rest")
		;;
	rest) steps+=(rest) ;;
	*) die "spec: cannot read \"$line\"" ;;
	esac
done <"$spec_dir/spec"

# Patches the spec does not name go where it says "rest" (or last).
rest_commits=()
for c in "${patch_commits[@]}"; do
	[ -n "${used[$c]:-}" ] && continue
	log "warning: patch \"${subject_of[$c]}\" is not in harness/series/spec; placed at \"rest\""
	rest_commits+=("$c")
done
expanded=()
placed_rest=0
for s in "${steps[@]}"; do
	if [ "$s" = rest ]; then
		for c in "${rest_commits[@]}"; do expanded+=("patch $c"); done
		placed_rest=1
	else
		expanded+=("$s")
	fi
done
if [ "$placed_rest" = 0 ]; then
	for c in "${rest_commits[@]}"; do expanded+=("patch $c"); done
fi

# Assign every new file to the first "files" step whose globs match it.
declare -A step_files=()
for nf in "${new_files[@]}"; do
	path=${nf#* * }
	hit=
	for i in "${!expanded[@]}"; do
		s=${expanded[$i]}
		[ "${s%% *}" = files ] || continue
		read -r _ _ globs <<<"$s"
		set -f	# the globs match paths of the overlay, not of $PWD
		# shellcheck disable=SC2086
		set -- $globs
		set +f
		for g in "$@"; do
			# shellcheck disable=SC2254
			case "$path" in $g) hit=$i; break ;; esac
		done
		[ -z "$hit" ] || break
	done
	[ -n "$hit" ] || die "new file $path matches no \"files\" line of harness/series/spec"
	step_files[$hit]+="$nf"$'\n'
done

new_author_name=$(git -C "$GMEM_TOP" log -1 --format=%an)
new_author_email=$(git -C "$GMEM_TOP" log -1 --format=%ae)
export GIT_COMMITTER_NAME=$new_author_name GIT_COMMITTER_EMAIL=$new_author_email
export GIT_COMMITTER_DATE="2026-01-01T00:00:00Z"

GI read-tree "$base"
head=$base
kinds=()
for i in "${!expanded[@]}"; do
	s=${expanded[$i]}
	case "${s%% *}" in
	patch)
		c=${s#patch }
		L diff --binary --full-index "$c^" "$c" |
			GI apply --cached --whitespace=nowarn - ||
			die "\"${subject_of[$c]}\" does not apply in the order of harness/series/spec"
		tree=$(GI write-tree)
		head=$(L log -1 --format=%B "$c" |
			GIT_AUTHOR_NAME=$(L log -1 --format=%an "$c") \
			GIT_AUTHOR_EMAIL=$(L log -1 --format=%ae "$c") \
			GIT_AUTHOR_DATE=$(L log -1 --format=%aD "$c") \
			G commit-tree "$tree" -p "$head")
		kinds+=(patch)
		;;
	files)
		read -r _ msg _ <<<"$s"
		if [ -z "${step_files[$i]:-}" ]; then
			log "warning: \"files $msg\" matches no new file; no commit"
			continue
		fi
		printf '%s' "${step_files[$i]}" |
			awk '{ printf "%s %s\t%s\n", $1, $2, $3 }' | GI update-index --add --index-info
		tree=$(GI write-tree)
		sob="Signed-off-by: $new_author_name <$new_author_email>"
		head=$( {
			cat "$spec_dir/$msg"
			grep -qxF "$sob" "$spec_dir/$msg" || printf '\n%s\n' "$sob"
		} | GIT_AUTHOR_NAME=$new_author_name GIT_AUTHOR_EMAIL=$new_author_email \
			GIT_AUTHOR_DATE=$GIT_COMMITTER_DATE G commit-tree "$tree" -p "$head")
		kinds+=(files)
		;;
	esac
done

if [ "$(G rev-parse "$head^{tree}")" != "$final_tree" ]; then
	G diff --stat "$head" "$final_tree" >&2 || true
	die "the series' last tree differs from build/linux's HEAD tree (above)"
fi
G update-ref refs/heads/series "$head"
G tag -f "v$KVER" "$base" >/dev/null
log "$(G rev-list --count "$base..$head") commits; last tree = build/linux HEAD tree ($final_tree)"

# The mails.
prefix=${GMEM_SERIES_PREFIX:-RFC PATCH}
fp_args=(--cover-letter --thread=shallow --no-signature --subject-prefix="$prefix"
	--to=linux-mm@kvack.org --cc=rust-for-linux@vger.kernel.org)
[ -z "${GMEM_SERIES_VERSION:-}" ] || fp_args+=(-v "$GMEM_SERIES_VERSION")
rm -rf "$out"
G format-patch -q "${fp_args[@]}" -o "$out" "$base..$head"
cover=$(ls "$out"/*0000-cover-letter.patch)

# Facts for the cover letter, computed from the series itself.
facts=$work/facts
mkdir -p "$facts"
{
	n=0
	for c in $(G rev-list --reverse "$base..$head"); do
		n=$((n + 1))
		# Patches that change existing files outside GMEM's own paths.
		files=$(G diff-tree -r --no-commit-id --diff-filter=M --name-only "$c" |
			grep -v -e '^MAINTAINERS$' -e '^Documentation/' -e '^rust/' -e '^samples/' ||
			true)
		[ -n "$files" ] || continue
		stat=$(G diff --numstat "$c^" "$c" -- $files |
			awk '{ a += $1; d += $2 } END { printf "+%d -%d", a, d }')
		printf '  %2d %s\n       %s: %s\n' "$n" "$(G log -1 --format=%s "$c")" "$stat" \
			"$(echo "$files" | tr '\n' ' ' | sed 's/ $//')"
	done
} >"$facts/hooks"
G diff --numstat "$base" "$head" -- mm/gmem |
	awk '$3 ~ /\.rs$/ { rs += $1 } $3 ~ /\.c$/ { c += $1 }
	     END { printf "%d lines of Rust and %d of C", rs, c }' >"$facts/core_size"
G diff --numstat "$base" "$head" -- $(G diff-tree -r --no-commit-id --diff-filter=M \
	--name-only "$base" "$head" | grep -v -e '^MAINTAINERS$' -e '^Documentation/' \
	-e '^rust/' -e '^samples/') |
	awk '{ a += $1; d += $2; f++ } END { printf "%d files, +%d -%d lines", f, a, d }' \
	>"$facts/hook_total"
python3 "$here/series-cover.py" "$GMEM_BUILD/bench/bench.json" >"$facts/figures"
# lib/test_gmem.c against lib/test_hmm.c, and how many hmm-tests cases pass
# on it in the last make check.
python3 "$here/driver-size.py" "$GMEM_SRC" | sed 's/^/   /' >"$facts/driver_size"
python3 "$here/report.py" --hmm-summary "$GMEM_BUILD/vm/check-default" \
	>"$facts/hmm_tests_pass"
python3 - "$cover" "$spec_dir/cover-letter.txt" "$facts" <<'PY'
import os, sys
cover, template, facts = sys.argv[1:]
text = "".join(l for l in open(template) if not l.startswith("#"))
for name in os.listdir(facts):
    text = text.replace("@%s@" % name.upper(), open(os.path.join(facts, name)).read().rstrip("\n"))
import re
left = re.findall(r"@[A-Z_]+@", text)
if left:
    sys.exit("series: cover-letter.txt fields with no value: %s" % " ".join(left))
lines = text.splitlines()
subject, body = lines[0], "\n".join(lines[1:]).strip("\n")
mail = open(cover).read()
assert "*** SUBJECT HERE ***" in mail and "*** BLURB HERE ***" in mail
mail = mail.replace("*** SUBJECT HERE ***", subject).replace("*** BLURB HERE ***", body)
open(cover, "w").write(mail)
PY

# checkpatch --strict on every patch, in the assembled tree (it wants one).
report=$GMEM_BUILD/series-checkpatch.txt
: >"$report"
bad=0 justified=0
for p in "$out"/*.patch; do
	[ "$p" != "$cover" ] || continue
	while IFS= read -r line; do
		[ -n "$line" ] || continue
		if lint_allowed "$line"; then
			echo "justified: ${p##*/}: $line" >>"$report"
			justified=$((justified + 1))
		else
			echo "FINDING: ${p##*/}: $line" | tee -a "$report" >&2
			bad=$((bad + 1))
		fi
	done < <(cd "$GMEM_SRC" && perl scripts/checkpatch.pl --strict --terse --showfile \
		--no-summary "$p" 2>/dev/null | grep -E 'ERROR|WARNING|CHECK' || true)
done
log "$(ls "$out"/*.patch | wc -l) mails in ${out#"$GMEM_TOP"/}/ (cover letter included)"
log "checkpatch --strict: $bad finding(s), $justified justified by harness/lint-allow.txt" \
	"(${report#"$GMEM_TOP"/})"
[ "$bad" = 0 ]
