#!/usr/bin/env bash
# Installs what tether's real-peer tests need: redis-server (Debian package) and the Node
# fixtures' dependencies (tests/node, from package-lock.json). Idempotent; prints nothing when
# there is nothing to do.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log="$(mktemp "${TMPDIR:-/tmp}/tether-setup.XXXXXX")"
trap 'rm -f "$log"' EXIT

if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup.sh: installing redis-server" >&2
  export DEBIAN_FRONTEND=noninteractive
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo -E"; else
      echo "setup.sh: redis-server is missing and we are not root (no sudo either)" >&2
      exit 1
    fi
  fi
  if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends redis-server; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup.sh: apt-get could not install redis-server" >&2
    exit 1
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "setup.sh: redis-server still not on PATH after apt-get install" >&2
    exit 1
  fi
  # The package may start a system-wide instance on port 6379; the tests never use it (each test
  # starts its own redis-server on a unix socket), so leave it alone.
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup.sh: node and npm are required for tests/node" >&2
  exit 1
fi

node_dir="$here/node"
if [ ! -d "$node_dir/node_modules" ] || [ "$node_dir/package-lock.json" -nt "$node_dir/node_modules" ] \
   || [ ! -f "$node_dir/node_modules/.package-lock.json" ]; then
  echo "setup.sh: npm ci in tests/node" >&2
  if ! (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >"$log" 2>&1); then
    cat "$log" >&2
    echo "setup.sh: npm ci failed in $node_dir" >&2
    exit 1
  fi
  # npm ci recreates node_modules, but make its mtime newer than the lock file in any case.
  touch "$node_dir/node_modules"
fi
