#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Put the pinned Debian linux-source .deb into the download cache and print
# the path of the tarball inside it.  Order of preference:
#   1. the download cache ($GMEM_CACHE, default ~/.cache/gmem),
#   2. the team's shared copy (../shared/cache next to the checkout),
#   3. `apt-get download` from Debian sid (pinned, never installed from).
# The sha256 is checked whatever the source; a different version is never
# used silently.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/config.sh"

log() { printf 'fetch: %s\n' "$*" >&2; }

deb="linux-source-${KVER_MAJOR}_${DEB_VERSION}_all.deb"
mkdir -p "$GMEM_CACHE"
dest="$GMEM_CACHE/$deb"

verify() { echo "$DEB_SHA256  $1" | sha256sum --check --status; }

if [ ! -f "$dest" ] || ! verify "$dest"; then
	rm -f "$dest"
	for dir in "$here/../../shared/cache" "${GMEM_SHARED_CACHE:-}"; do
		[ -n "$dir" ] && [ -f "$dir/$deb" ] || continue
		if verify "$dir/$deb"; then
			log "using shared copy $dir/$deb"
			cp "$dir/$deb" "$dest.tmp" && mv "$dest.tmp" "$dest"
			break
		fi
		log "ignoring $dir/$deb: sha256 mismatch"
	done
fi

if [ ! -f "$dest" ]; then
	log "downloading linux-source-${KVER_MAJOR}=${DEB_VERSION} from Debian sid"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	if ! (cd "$tmp" && apt-get download -q \
		"linux-source-${KVER_MAJOR}=${DEB_VERSION}" >/dev/null 2>&1); then
		cat >&2 <<MSG
fetch: linux-source-${KVER_MAJOR} version ${DEB_VERSION} is not available.
fetch: Debian sid keeps only its newest build.  Either put the pinned .deb
fetch: ($deb, sha256 $DEB_SHA256)
fetch: into $GMEM_CACHE/, or move the pin: update DEB_VERSION and
fetch: DEB_SHA256 in harness/config.sh, rebuild, and re-run make check.
MSG
		exit 1
	fi
	if ! verify "$tmp/$deb"; then
		log "sha256 of the downloaded $deb does not match DEB_SHA256; refusing it"
		exit 1
	fi
	mv "$tmp/$deb" "$dest"
fi

# The tarball, unpacked from the .deb once.
tarball="$GMEM_CACHE/linux-source-${KVER_MAJOR}.tar.xz"
stamp="$tarball.from-$DEB_VERSION"
if [ ! -f "$tarball" ] || [ ! -f "$stamp" ]; then
	log "extracting the tarball from $deb"
	tmp=$(mktemp -d)
	dpkg-deb --fsys-tarfile "$dest" |
		tar -x -C "$tmp" "./usr/src/linux-source-${KVER_MAJOR}.tar.xz"
	mv "$tmp/usr/src/linux-source-${KVER_MAJOR}.tar.xz" "$tarball"
	rm -rf "$tmp"
	rm -f "$tarball".from-*
	touch "$stamp"
fi
echo "$tarball"
