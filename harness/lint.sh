#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# make lint: the style gates of the series.
#   - scripts/checkpatch.pl --strict on every patch of patches/, on
#     MAINTAINERS.patch and on the new C files (kernel style), no error or
#     warning but those justified in harness/lint-allow.txt;
#   - every new GMEM file is covered by an F: line of MAINTAINERS.patch;
#   - rustfmt (the tree's .rustfmt.toml) on the GMEM Rust files;
#   - clippy on the GMEM crate and the NPU sample (make CLIPPY=1), no warning;
#   - a `// SAFETY:` comment right above every `unsafe` block;
#   - kernel-doc, make W=1, make rustdoc and make htmldocs (Documentation/mm).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/config.sh"

"$here/build.sh" >/dev/null
cd "$GMEM_TOP"
fail=0
report() { printf 'lint: %s\n' "$*"; fail=1; }


# Run inside the assembled tree: checkpatch wants its tree, and run from this
# checkout it takes a .patch for a source file.
checkpatch() {
	(cd "$GMEM_SRC" && perl scripts/checkpatch.pl --strict --terse --no-summary "$@") \
		2>/dev/null | grep -E 'ERROR|WARNING|CHECK' || true
}

n=0
for p in patches/*.patch MAINTAINERS.patch; do
	while IFS= read -r line; do
		[ -n "$line" ] || continue
		lint_allowed "$line" || report "$line"
	done < <(checkpatch "$GMEM_TOP/$p")
	n=$((n + 1))
done
c_files=$(git ls-files 'mm/gmem/*.c' 'include/linux/gmem.h' 'include/uapi/linux/gmem.h' \
	'include/trace/events/gmem.h' \
	'tools/testing/selftests/gmem/*.[ch]' 'samples/rust/*/*.[ch]' 'lib/test_gmem.c')
for f in $c_files; do
	while IFS= read -r line; do
		[ -n "$line" ] || continue
		lint_allowed "$line" || report "$line"
	done < <(checkpatch -f "$f")	# the assembled copy, same path
done
echo "lint: checkpatch --strict: $n patches, $(echo "$c_files" | wc -w) C files"

# GMEM's MAINTAINERS entry must list every new file (an F: file or folder).
f_pats=$(sed -n 's/^+F:[[:space:]]*//p' MAINTAINERS.patch)
uncovered=$(git ls-files Kconfig.gmem mm rust include lib samples tools Documentation |
	while read -r f; do
		ok=0
		for pat in $f_pats; do
			case "$f" in "$pat" | "${pat%/}"/*) ok=1; break ;; esac
		done
		[ "$ok" = 1 ] || echo "$f"
	done)
[ -z "$uncovered" ] || report "not in MAINTAINERS.patch: $(echo "$uncovered" | tr '\n' ' ')"
echo "lint: MAINTAINERS.patch: $(echo "$f_pats" | wc -w) F: patterns"

rs_files=$(git ls-files 'mm/gmem/*.rs' 'rust/kernel/gmem/*.rs' 'samples/rust/*/*.rs')
if ! rustfmt --config-path "$GMEM_SRC/.rustfmt.toml" --edition 2021 --check $rs_files >/dev/null; then
	report "rustfmt would change: $(rustfmt --config-path "$GMEM_SRC/.rustfmt.toml" \
		--edition 2021 --check -l $rs_files 2>/dev/null | tr '\n' ' ')"
fi
echo "lint: rustfmt: $(echo "$rs_files" | wc -w) files"

for f in $rs_files; do
	awk '
		/^[[:space:]]*$/ { next }
		/^[[:space:]]*\/\// { if (!c) s = 0; c = 1; if ($0 ~ /SAFETY/) s = 1; next }
		{ if ($0 ~ /unsafe[[:space:]]*\{/ && !s && $0 !~ /SAFETY/) print FILENAME ":" NR ": unsafe block without // SAFETY:"; c = 0; s = 0 }
	' "$f"
done | while IFS= read -r line; do echo "lint: $line"; done | tee /tmp/gmem-lint-safety.$$
[ -s /tmp/gmem-lint-safety.$$ ] && fail=1
rm -f /tmp/gmem-lint-safety.$$

# clippy: rebuild the GMEM crates with CLIPPY=1 (touching a root forces it).
for crate in mm/gmem/gmem.rs samples/rust/gmem_npu_sim/gmem_npu_sim.rs; do
	touch "$GMEM_SRC/$crate"
	clippy=$(make -s -C "$GMEM_SRC" O="$GMEM_OBJ" "${GMEM_MAKE_ARGS[@]}" CLIPPY=1 \
		"${crate%/*}/" 2>&1 | grep -E '^(warning|error)' -A4 || true)
	[ -z "$clippy" ] || report "clippy: $clippy"
	echo "lint: clippy: ${crate%/*}"
done

# kernel-doc: every comment of the GMEM headers and the exported C functions
# parses, and documents what it names (scripts/kernel-doc -Wall).
kdoc_files="include/linux/gmem.h include/uapi/linux/gmem.h mm/gmem/glue.c
	samples/rust/gmem_npu_sim/gmem_npu_sim_uapi.h lib/test_gmem.c"
kdoc=$(cd "$GMEM_SRC" && scripts/kernel-doc -none -Wall $kdoc_files 2>&1 || true)
[ -z "$kdoc" ] || report "kernel-doc: $kdoc"
# ... and every function glue.c exports has its kernel-doc in <linux/gmem.h>.
for sym in $(sed -n 's/^EXPORT_SYMBOL_GPL(\(.*\));/\1/p' mm/gmem/glue.c); do
	grep -q "^ \* $sym() - " include/linux/gmem.h || report "kernel-doc: no comment for $sym()"
done
echo "lint: kernel-doc: $(echo $kdoc_files | wc -w) files"

# make W=1: no warning in GMEM's C (the Rust crates build with -D warnings).
w1=$(make -s -C "$GMEM_SRC" O="$GMEM_OBJ" "${GMEM_MAKE_ARGS[@]}" W=1 mm/gmem/glue.o \
	lib/test_gmem.o 2>&1 |
	grep -E 'warning|error' || true)
[ -z "$w1" ] || report "W=1: $w1"
echo "lint: W=1: mm/gmem/glue.o lib/test_gmem.o"

# make rustdoc: the driver API's documentation (kernel::gmem) builds.
rd=$(make -s -C "$GMEM_SRC" O="$GMEM_OBJ" "${GMEM_MAKE_ARGS[@]}" rustdoc 2>&1 |
	grep -E '^(warning|error)' -A4 || true)
[ -z "$rd" ] || report "rustdoc: $rd"
[ -e "$GMEM_OBJ/Documentation/output/rust/rustdoc/kernel/gmem/index.html" ] ||
	report "rustdoc: no kernel::gmem page"
echo "lint: rustdoc: kernel::gmem"

# make htmldocs: Documentation/mm (where gmem.rst sits, with the kernel-doc
# of <linux/gmem.h> pulled in) builds without a warning from a GMEM file.
# Only the mm book: the whole tree takes an hour here and warns elsewhere.
docs=$GMEM_BUILD/obj-docs
htm=$(make -s -C "$GMEM_SRC" O="$docs" SPHINXDIRS=mm htmldocs 2>&1 |
	grep -E 'gmem' | grep -E -i 'warning|error' || true)
[ -z "$htm" ] || report "htmldocs: $htm"
[ -e "$docs/Documentation/output/mm/gmem.html" ] || report "htmldocs: no mm/gmem.html"
grep -q 'gm_dev_create' "$docs/Documentation/output/mm/gmem.html" 2>/dev/null ||
	report "htmldocs: the kernel-doc of <linux/gmem.h> is not in mm/gmem.html"
echo "lint: htmldocs: Documentation/mm"

if [ "$fail" = 0 ]; then
	echo "lint: clean"
else
	echo "lint: FAILED"
fi
exit $fail
