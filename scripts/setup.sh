#!/usr/bin/env bash
# Installs whatever the build and tests need and is missing; pinned, idempotent, quiet when
# everything is present. A prerequisite it cannot install stops it with one line saying what to do.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"

# Versions that must match the lock files.
WORKER_BUILD_VERSION=0.8.7   # must share the `worker` crate's minor version
WASM_BINDGEN_VERSION="$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)"

die() { echo "setup: $*" >&2; exit 1; }
say() { echo "setup: $*"; }

command -v cargo >/dev/null || die "Rust is not installed; install it with rustup (https://rustup.rs), then re-run"
command -v rustup >/dev/null || die "rustup is not installed; the wasm32 target needs rustup (https://rustup.rs)"
command -v node >/dev/null && command -v npm >/dev/null || die "Node.js 20.3+ with npm is not installed; install it, then re-run"
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=3)?0:1)' \
  || die "Node.js $(node --version) is too old; wrangler 4.86 needs Node.js 20.3 or newer"

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing $* (apt-get)"
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    die "$1 is missing; install it with your package manager (Debian/Ubuntu: sudo apt-get install $*)"
  fi
}

# SQLite's C is compiled to wasm32 by the cc crate, which needs clang (gcc has no wasm backend).
command -v clang >/dev/null || apt_install clang
# The smoke test and the README's examples use curl and jq.
command -v curl >/dev/null || apt_install curl
command -v jq >/dev/null || apt_install jq

rustup target list --installed | grep -qx wasm32-unknown-unknown || {
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
}

if ! worker-build --version 2>/dev/null | grep -q "$WORKER_BUILD_VERSION"; then
  say "installing worker-build $WORKER_BUILD_VERSION (a few minutes, once)"
  cargo install --quiet worker-build --version "$WORKER_BUILD_VERSION"
fi

if ! wasm-bindgen --version 2>/dev/null | grep -q "$WASM_BINDGEN_VERSION"; then
  say "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION to match Cargo.lock (about 4 minutes, once)"
  # No --locked: one of its locked dependencies is not on the registry.
  cargo install --quiet wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi

# The Python libSQL clients the e2e suite drives, exactly as tests/e2e/requirements.txt pins them.
VENV=target/venv
if [ ! -f "$VENV/.installed" ] || [ tests/e2e/requirements.txt -nt "$VENV/.installed" ]; then
  command -v python3 >/dev/null || apt_install python3 python3-venv
  python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$VENV"; }
  say "installing the Python clients from tests/e2e/requirements.txt"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
  touch "$VENV/.installed"
fi

# The Python package's tests (make python-test): a project-local .venv with exactly the pinned
# test dependencies, and the package itself (editable).
command -v python3 >/dev/null || apt_install python3 python3-venv
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python $(python3 -V 2>&1) is too old; the Python package needs 3.11 or newer"
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
if [ ! -f .venv/.installed ] || [ python/requirements-test.txt -nt .venv/.installed ] \
  || [ python/pyproject.toml -nt .venv/.installed ]; then
  say "creating .venv from python/requirements-test.txt"
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -r python/requirements-test.txt
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e python
  touch .venv/.installed
fi

# wrangler (runs workerd), binaryen (wasm-opt) and esbuild, exactly as package-lock.json pins them.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm packages from package-lock.json"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi
