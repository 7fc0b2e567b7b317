#!/usr/bin/env bash
# Every test: formatting and lints, CPU-only checks, the kernels and the whole model on the
# native adapter (Mesa lavapipe here), the same in headless Chromium's WebGPU (SwiftShader
# here), then the npm package and the demo page end to end. Nothing is skipped for lack of a
# GPU: without an adapter the GPU tests fail. Prints the wall time of each stage and the total.
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
times=$(mktemp)
started=$(date +%s)
stage_name=""
stage_start=0

# Close the running stage (if any) and open the next one.
stage() {
  local now
  now=$(date +%s)
  if [ -n "$stage_name" ]; then
    printf '%-44s %6ds\n' "$stage_name" $((now - stage_start)) >> "$times"
  fi
  stage_name=$1
  stage_start=$now
  [ -n "$stage_name" ] && printf '\n== %s\n' "$stage_name"
  return 0
}

result=""
summary() {
  local status=$?
  stage ""
  echo
  echo "== stage times (wall clock)"
  cat "$times"
  printf '%-44s %6ds\n' "total" $(($(date +%s) - started))
  rm -f "$log" "$times"
  # The count comes last, for whoever reads the closing line.
  [ -n "$result" ] && echo "$result"
  return $status
}
trap summary EXIT

stage "setup (installs what is missing)"
bash scripts/setup.sh
bash scripts/fetch-test-data.sh

# Mesa's Vulkan loader complains on every device open without this.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}
mkdir -p -m 700 "$XDG_RUNTIME_DIR"

stage "format (rustfmt)"
cargo fmt --check

# Clippy rides on the builds instead of checking everything a second time: clippy-driver
# compiles our own crate's targets (RUSTC_WORKSPACE_WRAPPER, which `cargo clippy` itself uses;
# dependencies are built by plain rustc and shared), with warnings as errors. So the native
# test build lints every native target (library, CLI, unit and integration tests, examples)
# and the browser test build lints the library and the browser tests for wasm32. The npm
# package below is built without it (clippy-driver turns MIR optimizations off).
export RUSTC_WORKSPACE_WRAPPER
RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

stage "native build, with clippy (test profile: optimized)"
cargo test --locked --all-targets --no-run

# The real Gemma 3 270M is converted once per run, with the CLI just built, into the demo's
# model directory; the native 270M tests and the browser tests both use it.
stage "demo model (the real Gemma 3 270M, converted once)"
GEMMA_BIN=target/debug/gemma bash scripts/prepare-demo-model.sh

stage "native tests (cargo test)"
cargo test --locked -- --nocapture 2>&1 | tee -a "$log"

stage "browser tests, with clippy (cargo test --target wasm32, headless Chromium)"
# wasm-bindgen-test-runner serves each test binary to Chromium through chromedriver (headless;
# webdriver.json adds Chromium's flags), as `wasm-pack test --headless --chrome` would.
export CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
# The runner gives the whole browser run of a test binary this many seconds (default 20).
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-1200}
cargo test --locked --target wasm32-unknown-unknown --test web --test web_model --test web_api -- --nocapture 2>&1 | tee -a "$log"

stage "npm package (release wasm, wasm-bindgen)"
env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS bash scripts/build-pkg.sh

stage "end-to-end: npm package, demo page, real 270M in Chromium"
(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
# Each prints "test result: ok. N passed; M failed" like the Rust runners; keep going on failure
# so the summary counts everything, and fail at the end if any exited non-zero.
e2e_status=0
node tests/e2e/consumer.test.mjs 2>&1 | tee -a "$log" || e2e_status=1
node tests/e2e/demo.test.mjs 2>&1 | tee -a "$log" || e2e_status=1
node tests/e2e/gemma3.test.mjs 2>&1 | tee -a "$log" || e2e_status=1

# Both runners print "test result: ok. N passed; M failed; ..." per test binary.
passed=$( (grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" || true) | awk '{s += $4} END {print s + 0}')
failed=$( (grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$log" || true) | awk '{s += $6} END {print s + 0}')
result="tests: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ] && [ "$e2e_status" -eq 0 ]
