#!/usr/bin/env bash
# Runs every test: unit tests, raw-protocol tests and interop tests with the real borg 2.0.0b21
# client. Installs what it needs first (apt packages, the cached borg venv, sshd): see test-env.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
borg_bin=$(scripts/test-env.sh)
export BORGD_TEST_BORG="$borg_bin/borg"
export BORGD_TEST_PYTHON="$borg_bin/python"
cargo test --locked "$@"
