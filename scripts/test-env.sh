#!/usr/bin/env bash
# Installs everything the test suite needs and prints the borg venv's bin directory on stdout.
#
# Idempotent and cached: the borg 2.0.0b21 client venv is built once under $BORGD_VENV_CACHE
# (default /var/cache/borgd/borg-2.0.0b21) and reused while its `borg --version` answers; the
# FUSE binding `borg mount` uses (pyfuse3) is added to a cached venv that lacks it.
set -euo pipefail

BORG_VERSION=2.0.0b21
VENV=${BORGD_VENV_CACHE:-/var/cache/borgd/borg-$BORG_VERSION}
APT_PACKAGES=(libssl-dev libacl1-dev liblz4-dev libzstd-dev libxxhash-dev pkg-config openssh-server openssh-client python3-venv xfsprogs btrfs-progs e2fsprogs libfuse3-dev)
# `borg mount`'s binding: pyfuse3, not b21's first choice mfusepy, whose threads share the
# client's one server connection unlocked and fail reads from a remote repository
# (BlockingIOError), through Python's `borg serve` as through borgd
FUSE_PACKAGES=(pyfuse3==3.5.0 trio==0.35.0)

log() { echo "test-env: $*" >&2; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if ! "$VENV/bin/borg" --version 2>/dev/null | grep -qx "borg $BORG_VERSION"; then
    log "building borg $BORG_VERSION venv in $VENV (one-time, several minutes)"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip >&2
    BORG_OPENSSL_PREFIX=/usr BORG_LIBLZ4_PREFIX=/usr BORG_LIBACL_PREFIX=/usr \
        "$VENV/bin/pip" install -q "borgbackup==$BORG_VERSION" >&2
    "$VENV/bin/borg" --version >&2
fi
if ! "$VENV/bin/python" -c 'import pyfuse3' 2>/dev/null; then
    log "installing ${FUSE_PACKAGES[*]} into $VENV"
    "$VENV/bin/pip" install -q "${FUSE_PACKAGES[@]}" >&2
fi
echo "$VENV/bin"
