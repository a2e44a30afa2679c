#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Install everything the GMEM build/boot/test pipeline needs, only when it is
# missing.  Idempotent and quiet when there is nothing to do.
#
# Debian packages come from bookworm (and bookworm-backports for a QEMU that
# virtme-ng is happy with).  Debian sid is added as a source with
# Pin-Priority 1 so that nothing is ever *installed* from it: it is only used
# by fetch-source.sh to `apt-get download` the pinned linux-source package.
set -euo pipefail

log() { printf 'deps: %s\n' "$*" >&2; }

need_root() {
	if [ "$(id -u)" != 0 ]; then
		log "must run as root to install: $*"
		exit 1
	fi
}

# --- apt sources -----------------------------------------------------------
APT_CHANGED=0
ensure_source() {
	local file=$1 content=$2
	if [ ! -f "$file" ] || [ "$(cat "$file")" != "$content" ]; then
		need_root "apt source $file"
		printf '%s\n' "$content" >"$file"
		APT_CHANGED=1
	fi
}

ensure_source /etc/apt/sources.list.d/gmem-bookworm-backports.sources "Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"

ensure_source /etc/apt/sources.list.d/gmem-sid.sources "Types: deb
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"

# sid is only ever a download source, never an install source.
ensure_source /etc/apt/preferences.d/gmem-sid "Package: *
Pin: release n=sid
Pin-Priority: 1"

# --- Debian packages -------------------------------------------------------
PKGS=(bc bison flex cpio kmod make gcc libc6-dev libelf-dev libssl-dev
      libclang-19-dev llvm-19 lld-19 clang-19 rsync xz-utils zstd python3-pip udev busybox-static
      git perl pahole python3-ply python3-git python3-sphinx python3-alabaster)
BPO_PKGS=(qemu-system-x86)

missing=()
for p in "${PKGS[@]}" "${BPO_PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ] || [ "$APT_CHANGED" = 1 ]; then
	need_root "packages ${missing[*]}"
	log "apt-get update"
	apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Install the backports packages with an explicit target release and
	# the others from bookworm: sid is pinned to 1 and is never chosen.
	apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
	apt-get install -y -qq --no-install-recommends -t bookworm-backports \
		"${BPO_PKGS[@]}" >/dev/null
fi

# --- Rust ------------------------------------------------------------------
if ! command -v rustup >/dev/null && [ -x "$HOME/.cargo/bin/rustup" ]; then
	export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
	log "rustup component add rust-src"
	rustup component add rust-src >/dev/null
fi
if ! command -v bindgen >/dev/null; then
	log "cargo install bindgen-cli (a few minutes, once)"
	cargo install --quiet --locked bindgen-cli --version 0.73.0
fi

# --- virtme-ng -------------------------------------------------------------
if ! command -v vng >/dev/null; then
	log "pip install virtme-ng"
	pip install --quiet --disable-pip-version-check virtme-ng
fi
exit 0
