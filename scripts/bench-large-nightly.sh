#!/usr/bin/env bash
# A large repository's first backup and next nights' backups with the real client, through each
# server: the figure the `e2e` benchmark's small data set cannot show (docs/BENCHMARKS.md, "The
# next night's backup of a large repository").
#
# The data set is one file of MB megabytes of random data chunked at a fixed 128 bytes: MB * 7 812
# objects (500 000 for 64). Each server gets a repository of its own: the first `create`, then
# NIGHTS more, each after 1 MB of new data. The client reaches the server over the rsh shim; each
# session's server CPU, peak memory and wall time come from `borgd-bench measure` (one JSON line
# per session, printed at the end: repo-create, the first create, then each night's).
#
#   scripts/bench-large-nightly.sh WORKDIR [MB [NIGHTS]]
#
# Needs `cargo build --release`, the borg venv (scripts/test-env.sh) and WORKDIR on a file system
# of its own (scripts/bench-fs.sh); deletes nothing but WORKDIR/src.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 WORKDIR [MB [NIGHTS]]" >&2; exit 2; }
work=$1 mb=${2:-64} nights=${3:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${BORGD_TEST_VENV:-/var/cache/borgd/borg-2.0.0b21}
bin=$here/target/release
[ -x "$bin/borgd" ] && [ -x "$bin/borgd-bench" ] || { echo "run cargo build --release first" >&2; exit 2; }
mkdir -p "$work/src"
head -c $((mb * 1000000)) /dev/urandom > "$work/src/big"
export BORG_RSH=$here/tests/support/rsh-shim BORG_PASSPHRASE=x BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
for s in borgd python; do
  case $s in borgd) server=$bin/borgd ;; python) server=$venv/bin/borg ;; esac
  printf '#!/bin/sh\nexec %s measure --out %s -- %s "$@"\n' "$bin/borgd-bench" "$work/m-$s.jsonl" "$server" > "$work/remote-$s"
  chmod +x "$work/remote-$s"
  export BORG_BASE_DIR=$work/base-$s BORG_REMOTE_PATH=$work/remote-$s
  url=ssh://localhost/$work/r-$s
  "$venv/bin/borg" -r "$url" repo-create -e none >/dev/null 2>&1
  sync
  "$venv/bin/borg" -r "$url" create --chunker-params fixed,128 first "$work/src"
  for n in $(seq 1 "$nights"); do
    head -c 1000000 /dev/urandom > "$work/src/new-$s-$n"
    sync
    "$venv/bin/borg" -r "$url" create --chunker-params fixed,128 "night$n" "$work/src"
  done
  rm -f "$work"/src/new-$s-*
done
for s in borgd python; do
  echo "== $s: server per session (repo-create, first create, nights)"
  cat "$work/m-$s.jsonl"
done
