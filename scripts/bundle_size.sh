#!/usr/bin/env bash
# Prints the release bundle's gzip size (what a cold isolate downloads and compiles) and fails
# if it is over the budget: a size check, not a timing test. BUNDLE_BUDGET_BYTES overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
budget="${BUNDLE_BUDGET_BYTES:-$(cat scripts/bundle-budget)}"
wasm=$(gzip -9 -c build/index_bg.wasm | wc -c)
js=$(gzip -9 -c build/index.js | wc -c)
total=$((wasm + js))
echo "bundle: wasm $(stat -c %s build/index_bg.wasm) bytes ($wasm gzipped), js $(stat -c %s build/index.js) bytes ($js gzipped); total $total gzipped (budget $budget)"
if [ "$total" -gt "$budget" ]; then
  echo "bundle: $total bytes gzipped is over the budget of $budget; find what grew (BENCHMARKS.md 'Bundle') or raise scripts/bundle-budget with a reason" >&2
  exit 1
fi
