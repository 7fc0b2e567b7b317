#!/usr/bin/env bash
# Every test: formatting and lints, CPU-only checks, the kernels and the whole model on the
# native adapter (Mesa lavapipe here), the same in headless Chromium's WebGPU (SwiftShader
# here), then the npm package and the demo page end to end. Nothing is skipped for lack of a
# GPU: without an adapter the GPU tests fail. Prints the wall time of each stage and the total.
#
# A failing suite does not stop the run: every stage runs (cargo with --no-fail-fast), the
# summary counts every runner's "test result" line, a runner that ended without one (a crash,
# a build error) counts as failed, and the exit status is non-zero if anything failed. Only a
# failed setup ends the run early: nothing after it could work.
set -uo pipefail
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
# Suites that exited non-zero, as "what (exit N)".
failures=()
# Run one suite (a command) and record it if it exits non-zero; the run goes on either way.
suite() {
  local what=$1 rc
  shift
  "$@"
  rc=$?
  [ "$rc" -eq 0 ] || failures+=("$what (exit $rc)")
  return 0
}

# The test executables in cargo's JSON messages (stdin), as "name path" lines.
executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])
'
}

# Suites that run at the same time: `spawn what command...` starts one in the background with
# its output in a file of its own; `join` waits for all of them, then prints and logs each
# output in the order they were started and records those that exited non-zero.
jobs_dir=$(mktemp -d)
spawned=()
spawn() {
  local what=$1
  shift
  "$@" > "$jobs_dir/${#spawned[@]}.out" 2>&1 &
  spawned+=("$!:$what")
}
join() {
  local i entry rc
  for i in "${!spawned[@]}"; do
    entry=${spawned[$i]}
    wait "${entry%%:*}"
    rc=$?
    tee -a "$log" < "$jobs_dir/$i.out"
    [ "$rc" -eq 0 ] || failures+=("${entry#*:} (exit $rc)")
  done
  spawned=()
  rm -f "$jobs_dir"/*.out
  return 0
}

summary() {
  local status=$?
  stage ""
  echo
  echo "== stage times (wall clock)"
  cat "$times"
  printf '%-44s %6ds\n' "total" $(($(date +%s) - started))
  rm -rf "$log" "$times" "$jobs_dir"
  # The count comes last, for whoever reads the closing line.
  [ -n "$result" ] && echo "$result"
  return $status
}
trap summary EXIT

stage "setup (installs what is missing)"
bash scripts/setup.sh || exit 1
bash scripts/fetch-test-data.sh || exit 1

# Mesa's Vulkan loader complains on every device open without this.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}
mkdir -p -m 700 "$XDG_RUNTIME_DIR"

# The matrix-vector kernels sum across lanes with subgroup operations where the adapter has them
# and through workgroup memory where not (every browser, through wgpu). The kernel tests run
# both; this makes a native adapter without subgroups a failure, so that CI (lavapipe, which
# has them) cannot test the plain path twice unnoticed. Set it to 0 on an adapter without.
export GEMMA_EXPECT_SUBGROUPS=${GEMMA_EXPECT_SUBGROUPS:-1}

stage "format (rustfmt)"
suite "rustfmt" cargo fmt --check

# Clippy rides on the builds instead of checking everything a second time: clippy-driver
# compiles our own crate's targets (RUSTC_WORKSPACE_WRAPPER, which `cargo clippy` itself uses;
# dependencies are built by plain rustc and shared), with warnings as errors. So the native
# test build lints every native target (library, CLI, unit and integration tests, examples)
# and the browser test build lints the library and the browser tests for wasm32. (clippy-driver
# turns MIR optimizations off; LLVM's are unchanged.)
export RUSTC_WORKSPACE_WRAPPER
RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

stage "native build, with clippy (test profile: optimized)"
suite "native build" cargo test --locked --all-targets --no-run

# The real Gemma 3 270M is converted once per run, with the CLI just built, into the demo's
# model directory; the native 270M tests and the browser tests both use it.
stage "demo model (the real Gemma 3 270M, converted once)"
suite "demo model" env GEMMA_BIN=target/debug/gemma bash scripts/prepare-demo-model.sh

stage "native tests (cargo test)"
suite "native tests" bash -c 'set -o pipefail; cargo test --locked --no-fail-fast -- --nocapture 2>&1 | tee -a "$0"' "$log"

# The same kernels on the other CPU adapter, SwiftShader (Chromium's, as a native Vulkan
# driver): the matrix-vector family, both reductions. Its subgroups are 4 lanes wide where
# lavapipe's are 8, so the teams (4, 16 or 64 lanes) meet the subgroup code's two paths (within
# one subgroup, across several) at other sizes; in the browser wgpu offers no subgroups.
stage "native kernels on SwiftShader (matrix-vector family)"
swiftshader_kernels() {
  local bin
  bin=$(cargo test --locked --test kernels --no-run --message-format=json 2>/dev/null | executables | awk '$1 == "kernels" {print $2}')
  [ -n "$bin" ] || { echo "no kernels test binary"; return 1; }
  echo "     Running tests/kernels.rs on SwiftShader ($bin)"
  VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json "$bin" --nocapture matvec fused adapter_report 2>&1 | tee -a "$log"
}
suite "native kernels on SwiftShader" swiftshader_kernels

stage "browser test build, with clippy (wasm32)"
# cargo builds the three browser test binaries; then they run at the same time, each in its own
# headless Chromium (`cargo test` would run them one after the other): SwiftShader compiles a
# pipeline on one thread, and one binary at a time kept this 2-core machine 60% busy (measured:
# 341 s one after the other, 234 s together at 91%). wasm-bindgen-test-runner serves a test
# binary to Chromium through chromedriver (headless; webdriver.json adds Chromium's flags), as
# `wasm-pack test --headless --chrome` would.
export CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}
# The runner gives the whole browser run of a test binary this many seconds (default 20).
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-1200}
web_bins=$(mktemp)
build_browser_tests() {
  cargo test --locked --target wasm32-unknown-unknown --test web --test web_model --test web_api --no-run \
    --message-format=json-render-diagnostics | executables > "$web_bins"
}
suite "browser test build" build_browser_tests

stage "browser tests (headless Chromium, four runners at once)"
# The kernel tests' matmul case compiles 20 pipelines (about 90 s on SwiftShader, half of its
# binary's time): it gets a runner of its own, so that the runners end closer together.
run_browser_tests() {
  echo "     Running tests/$1.rs ($2)${3:+ [${*:3}]}"
  wasm-bindgen-test-runner "$2" --nocapture "${@:3}"
}
while read -r name wasm; do
  if [ "$name" = web ]; then
    spawn "browser tests (web, matmul)" run_browser_tests "$name" "$wasm" matmul --exact
    spawn "browser tests (web, the rest)" run_browser_tests "$name" "$wasm" --skip matmul
  else
    spawn "browser tests ($name)" run_browser_tests "$name" "$wasm"
  fi
done < "$web_bins"
rm -f "$web_bins"
join

# The end-to-end tests run the npm package made from the library the browser tests just built
# (test profile: opt-level 3 with debug assertions and overflow checks), so no dependency is
# compiled a third time; the release build (LTO) differs from it in build settings only.
stage "npm package (the browser tests' wasm, wasm-bindgen)"
suite "npm package" bash scripts/build-pkg.sh --test-profile

stage "end-to-end: npm package, demo page, real 270M in Chromium"
suite "e2e install" bash -c 'cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error'
# The scripts run at the same time, each with its own server and Chromium (one after the
# other they kept this 2-core machine about 80% busy). Each prints "test result: ok. N passed;
# M failed" like the Rust runners, after a line saying which runner it is, so a script that dies
# early is seen as a runner without a result.
for t in consumer demo gemma3 gguf tabs bundlers types worker structured; do
  spawn "e2e $t" bash -c 'echo "     Running tests/e2e/$1.test.mjs"; node "tests/e2e/$1.test.mjs"' _ "$t"
done
join

# Every runner (a cargo test binary, a doc-test run, an e2e script) prints one "test result"
# line when it gets to the end.
count() { (grep -E "$1" "$log" || true) | awk "{s += \$$2} END {print s + 0}"; }
passed=$(count '^test result: [a-zA-Z]+\. [0-9]+ passed' 4)
failed=$(count '^test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' 6)
runners=$(grep -cE '^ +(Running|Doc-tests) ' "$log" || true)
results=$(grep -cE '^test result: ' "$log" || true)
silent=$((runners - results))
result="tests: ${passed} passed, ${failed} failed, in ${runners} runners"
[ "$silent" -gt 0 ] && result+=" (${silent} ended without a result line: counted as failed)"
[ "${#failures[@]}" -gt 0 ] && result+="; failed suites: $(printf '%s, ' "${failures[@]}" | sed 's/, $//')"
[ "$failed" -eq 0 ] && [ "$silent" -le 0 ] && [ "${#failures[@]}" -eq 0 ]
