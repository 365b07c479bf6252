#!/usr/bin/env bash
# Installs what tether's real-peer tests need: redis-server and chromium (Debian packages; the
# browser tests drive /usr/bin/chromium with playwright-core, which never downloads a browser) and
# the Node fixtures' dependencies (tests/node, from package-lock.json). Idempotent; prints nothing
# when there is nothing to do.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log="$(mktemp "${TMPDIR:-/tmp}/tether-setup.XXXXXX")"
trap 'rm -f "$log"' EXIT

apt_updated=""
# apt_install PACKAGE CHECK-COMMAND...: installs a Debian package unless CHECK-COMMAND succeeds,
# and fails loudly (apt-get's output, then exit 1) if it cannot or if CHECK-COMMAND still fails.
apt_install() {
  local pkg="$1"
  shift
  if "$@" >/dev/null 2>&1; then return 0; fi
  echo "setup.sh: installing $pkg" >&2
  export DEBIAN_FRONTEND=noninteractive
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo -E"; else
      echo "setup.sh: $pkg is missing and we are not root (no sudo either)" >&2
      exit 1
    fi
  fi
  if [ -z "$apt_updated" ]; then
    if ! $sudo apt-get update -qq >"$log" 2>&1; then
      cat "$log" >&2
      echo "setup.sh: apt-get update failed" >&2
      exit 1
    fi
    apt_updated=1
  fi
  if ! $sudo apt-get install -y -qq --no-install-recommends "$pkg" >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup.sh: apt-get could not install $pkg" >&2
    exit 1
  fi
  if ! "$@" >/dev/null 2>&1; then
    echo "setup.sh: $pkg installed, but \`$*\` still fails" >&2
    exit 1
  fi
}

apt_install redis-server command -v redis-server
# The package may start a system-wide instance on port 6379; the tests never use it (each test
# starts its own redis-server on a unix socket), so leave it alone.

# Debian's chromium, for tests/node/browser.js (tests/browser.rs): /usr/bin/chromium, started
# headless by playwright-core. `--version` also proves the binary and its libraries load.
apt_install chromium /usr/bin/chromium --headless=new --no-sandbox --version

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
