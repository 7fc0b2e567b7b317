#!/usr/bin/env bash
# Builds the npm package into pkg/ (wasm-pack, release, ES module for browsers) and prints the
# .wasm size. wasm-opt stays off (Cargo.toml): Debian's binaryen 108 breaks the externref table
# wasm-bindgen 0.2.130 emits ("WebAssembly.Table.set(): Argument 1 is invalid").
set -euo pipefail
cd "$(dirname "$0")/.."
wasm-pack build --release --target web 2>&1 | tail -n 2
wasm=pkg/gemma_webgpu_bg.wasm
echo "pkg: $wasm $(wc -c < "$wasm") bytes, $(gzip -9 -c "$wasm" | wc -c) gzipped"
