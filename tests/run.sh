#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the real-peer tests need
# (redis-server, chromium, the Node packages of tests/node), then runs every test target of
# every crate in the workspace (the proxy, the node pool, the load generator, the kits).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tests/setup.sh
cargo test --workspace --all-targets "$@"
