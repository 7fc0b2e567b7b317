#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian 12 machine (run as root), skipping
# whatever is already there: Mesa lavapipe (Vulkan on the CPU), Chromium and its driver, the
# wasm32 target, and wasm-bindgen-cli at exactly the version in Cargo.lock (its
# wasm-bindgen-test-runner runs the browser tests; wasm-pack is not needed).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || need_pkgs+=(mesa-vulkan-drivers libvulkan1)
command -v chromium >/dev/null || need_pkgs+=(chromium)
command -v chromedriver >/dev/null || need_pkgs+=(chromium-driver)
command -v node >/dev/null || need_pkgs+=(nodejs npm)
command -v python3 >/dev/null || need_pkgs+=(python3)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_pkgs[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "setup: Rust is missing; install it with rustup (https://rustup.rs) first" >&2
  exit 1
fi
rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$bindgen_version" ]; then
  echo "setup: installing wasm-bindgen-cli $bindgen_version"
  # Without its default TLS stack (rustls and its C crypto): the test runner only talks to
  # chromedriver over plain HTTP on localhost. Compiles in about a third of the time.
  cargo install wasm-bindgen-cli --version "=$bindgen_version" --no-default-features --force
fi
