#!/usr/bin/env bash
# Every test: CPU-only checks, the kernels on the native adapter (Mesa lavapipe here), and the
# same kernels in headless Chromium's WebGPU (SwiftShader here). Nothing is skipped for lack of
# a GPU: without an adapter the GPU tests fail.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fetch-test-data.sh

# Mesa's Vulkan loader complains on every device open without this.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}
mkdir -p -m 700 "$XDG_RUNTIME_DIR"

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== native tests (cargo test)"
cargo test --locked --tests -- --nocapture 2>&1 | tee -a "$log"

echo "== browser tests (wasm-pack test --headless --chrome)"
export CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}
# The runner gives the whole browser run of a test binary this many seconds (default 20).
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-1200}
wasm-pack test --headless --chrome -- --locked --test web --test web_model --test web_api -- --nocapture 2>&1 | tee -a "$log"

echo "== end-to-end: the npm package, the demo page and the real Gemma 3 270M in headless Chromium (playwright-core)"
bash scripts/build-pkg.sh
bash scripts/prepare-demo-model.sh
(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
# Each prints "test result: ok. N passed; M failed" like the Rust runners; keep going on failure
# so the summary counts everything, and fail at the end if either exited non-zero.
e2e_status=0
node tests/e2e/consumer.test.mjs 2>&1 | tee -a "$log" || e2e_status=1
node tests/e2e/demo.test.mjs 2>&1 | tee -a "$log" || e2e_status=1
node tests/e2e/gemma3.test.mjs 2>&1 | tee -a "$log" || e2e_status=1

# Both runners print "test result: ok. N passed; M failed; ..." per test binary.
passed=$( (grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" || true) | awk '{s += $4} END {print s + 0}')
failed=$( (grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$log" || true) | awk '{s += $6} END {print s + 0}')
echo
echo "tests: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ] && [ "$e2e_status" -eq 0 ]
