#!/usr/bin/env bash
# Builds the npm package into pkg/ (wasm-pack, release, ES module for browsers), then shrinks
# the .wasm with binaryen's wasm-opt -Oz when it is installed (scripts/setup.sh installs it),
# and prints the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
wasm-pack build --release --target web 2>&1 | tail -n 2
wasm=pkg/gemma_webgpu_bg.wasm
before=$(wc -c < "$wasm")
if command -v wasm-opt >/dev/null; then
  # The features wasm-bindgen's output uses (wasm-opt 108 does not enable them by default).
  wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
    --enable-mutable-globals --enable-reference-types --enable-multivalue "$wasm" -o "$wasm.opt"
  mv "$wasm.opt" "$wasm"
fi
echo "pkg: $wasm $(wc -c < "$wasm") bytes (before wasm-opt: $before), $(gzip -9 -c "$wasm" | wc -c) gzipped"
