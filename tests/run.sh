#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the real-peer tests need
# (redis-server, the Node packages of tests/node), then runs every test target.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tests/setup.sh
cargo test --all-targets "$@"
