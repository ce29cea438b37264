#!/usr/bin/env bash
# Builds the release Worker bundle (build/index.js + build/index_bg.wasm) with locally installed
# tools only: worker-build would otherwise download wasm-bindgen, wasm-opt and esbuild.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

WASM_BINDGEN_BIN="$(command -v wasm-bindgen)" || { echo "error: wasm-bindgen not found; run 'make setup'" >&2; exit 1; }
export WASM_BINDGEN_BIN
export WASM_OPT_BIN="$PWD/node_modules/.bin/wasm-opt"
export ESBUILD_BIN="$PWD/node_modules/.bin/esbuild"
[ -x "$WASM_OPT_BIN" ] && [ -x "$ESBUILD_BIN" ] || { echo "error: node_modules missing; run 'make setup'" >&2; exit 1; }

# NO_OPT=1 skips wasm-opt for a faster, larger development build.
exec worker-build --release ${NO_OPT:+--no-opt}
