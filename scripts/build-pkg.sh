#!/usr/bin/env bash
# Builds the npm package into pkg/ (ES module for browsers, TypeScript declarations) and prints
# the .wasm size: cargo builds the wasm, wasm-bindgen (the CLI pinned in Cargo.lock, installed by
# scripts/setup.sh) writes the JS bindings, and package.json is written from Cargo.toml as
# wasm-pack would (`wasm-pack build --release --target web` gives the same package; we do without
# it so a fresh machine need not compile it). No wasm-opt: Debian's binaryen 108 breaks the
# externref table wasm-bindgen 0.2.130 emits ("WebAssembly.Table.set(): Argument 1 is invalid").
#
#   bash scripts/build-pkg.sh                the release build (fat LTO, one codegen unit): what
#                                            scripts/demo.sh serves and what is published
#   bash scripts/build-pkg.sh --test-profile the library as the browser tests build it (`test`
#                                            profile: opt-level 3, debug assertions and overflow
#                                            checks on, no LTO). scripts/test.sh packages this
#                                            one for the end-to-end tests: cargo finds it already
#                                            built by the browser tests, where a release build
#                                            would compile every dependency again (154 s of CI).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  "")
    cargo build --locked --release --target wasm32-unknown-unknown --lib
    built="${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/release/gemma_webgpu.wasm"
    ;;
  --test-profile)
    # Building a browser test builds the library with it (every crate type: the cdylib too),
    # with the dev-dependencies' features, which a plain `cargo build` would not unify the same
    # way (and so would rebuild the dependencies). Cargo leaves that cdylib in deps/ without
    # copying it up; its JSON message for the library names the file.
    built=$(cargo test --locked --target wasm32-unknown-unknown --test web_api --no-run --message-format=json-render-diagnostics |
      python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gemma_webgpu":
        print("\n".join(f for f in m["filenames"] if f.endswith(".wasm")))
')
    if [ -z "$built" ]; then
      echo "build-pkg.sh: cargo reported no gemma_webgpu.wasm for the browser tests' build" >&2
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 [--test-profile]" >&2
    exit 2
    ;;
esac
rm -rf pkg
wasm-bindgen --target web --out-dir pkg "$built"
cp README.md pkg/
# The worker engine (js/): the worker's script and the page's client, with its types.
cp js/worker.js js/worker.d.ts js/client.js js/client.d.ts pkg/
python3 - <<'PY'
import json, os, re
text = open("Cargo.toml", encoding="utf-8").read()
package = text.split("[package]", 1)[1].split("\n[", 1)[0]
field = lambda k: re.search(rf'^{k}\s*=\s*"([^"]*)"', package, re.M).group(1)
files = sorted(f for f in os.listdir("pkg") if f.startswith("gemma_webgpu"))
files += ["client.d.ts", "client.js", "worker.d.ts", "worker.js"]
if os.path.isdir("pkg/snippets"):
    files.append("snippets")
manifest = {
    "name": field("name"),
    "type": "module",
    "description": field("description"),
    "version": field("version"),
    "license": field("license"),
    "files": files,
    "main": "gemma_webgpu.js",
    "module": "gemma_webgpu.js",
    "types": "gemma_webgpu.d.ts",
    # What bundlers and TypeScript resolve (`main`, `module` and `types` are for older tools).
    # Only these may be imported; the snippets are the module's own relative imports. The .wasm
    # is exported for apps that hand init() its URL themselves, e.g. with Vite:
    # `import wasmUrl from 'gemma-webgpu/gemma_webgpu_bg.wasm?url'; await init({ module_or_path: wasmUrl })`.
    # A new entry point (another .js file) must be listed here, or bundlers refuse to import it.
    "exports": {
        ".": {"types": "./gemma_webgpu.d.ts", "default": "./gemma_webgpu.js"},
        "./gemma_webgpu_bg.wasm": "./gemma_webgpu_bg.wasm",
        "./package.json": "./package.json",
        # The engine in a module Web Worker: `createWorkerGemma` (the page's side) and the
        # worker's script, which the client starts from `new URL('./worker.js', import.meta.url)`.
        "./client": {"types": "./client.d.ts", "default": "./client.js"},
        "./worker": {"types": "./worker.d.ts", "default": "./worker.js"},
    },
    "sideEffects": ["./snippets/*", "./worker.js"],
}
with open("pkg/package.json", "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2)
    f.write("\n")
PY
wasm=pkg/gemma_webgpu_bg.wasm
echo "pkg: $wasm $(wc -c < "$wasm") bytes, $(gzip -9 -c "$wasm" | wc -c) gzipped; files: $(ls pkg | tr '\n' ' ')"
