#!/usr/bin/env bash
# Builds the wasm package, prepares the default model and serves the demo page on localhost.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build-pkg.sh
bash scripts/prepare-demo-model.sh
port=${PORT:-8080}
echo
echo "gemma-webgpu demo: http://127.0.0.1:${port}/www/"
echo "(open it in a browser with WebGPU; Ctrl-C stops the server)"
exec node tests/e2e/server.mjs "$port"
