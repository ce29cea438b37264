#!/usr/bin/env bash
# Builds the release Worker bundle (build/index.js + build/index_bg.wasm) with locally installed
# tools only: worker-build would otherwise download wasm-bindgen, wasm-opt and esbuild.
#
# worker-build's own wasm-opt pass always keeps the name section (~160 KB), so it is skipped
# and wasm-opt runs here instead: -Oz, without names or producers (see BENCHMARKS.md "Bundle").
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

WASM_BINDGEN_BIN="$(command -v wasm-bindgen)" || { echo "error: wasm-bindgen not found; run 'make setup'" >&2; exit 1; }
export WASM_BINDGEN_BIN
export WASM_OPT_BIN="$PWD/node_modules/.bin/wasm-opt"
export ESBUILD_BIN="$PWD/node_modules/.bin/esbuild"
[ -x "$WASM_OPT_BIN" ] && [ -x "$ESBUILD_BIN" ] || { echo "error: node_modules missing; run 'make setup'" >&2; exit 1; }

worker-build --release --no-opt
# NO_OPT=1 skips wasm-opt for a faster, larger development build.
if [ -z "${NO_OPT:-}" ]; then
  # The feature set workerd supports (as worker-build passes it), no names, no producers.
  "$WASM_OPT_BIN" ${WASM_OPT_LEVEL:--Oz} --strip-debug --strip-producers \
    --enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int \
    --enable-bulk-memory --enable-multivalue --enable-reference-types --enable-exception-handling \
    build/index_bg.wasm -o build/index_bg.wasm
fi
