#!/usr/bin/env bash
# Decode speed on a real GPU: bring up a wgpu adapter on a bare Linux machine (an NVIDIA GPU,
# no display, no network), synthesize the Gemma 2 2B shape in int4 and run `gemma bench
# --profile` on it, printing tok/s and the fraction of the memory bandwidth reached.
#
#   bash scripts/gpu-bench.sh [--peak-gbs 4800] [--tokens 32] [--depth 2000]
#
# Needs a `gemma` binary built on a machine with the same libc (GEMMA=path, default
# target/release/gemma; it is built here if cargo can, offline). Every step says what it found,
# so that a run that brings up no adapter still tells why:
#   1. the Vulkan loader (libvulkan.so.1): from the system, else from Debian packages carried
#      in .gl/ (see the README's "real GPU" section), unpacked into /;
#   2. the driver's ICD JSON (the NVIDIA one under /usr/local/nvidia, /usr/share or /etc), the
#      library it names and whether the dynamic linker finds it (else its folder is added to
#      LD_LIBRARY_PATH);
#   3. `gemma bench` on Vulkan, with the loader's own diagnostics (VK_LOADER_DEBUG) if no
#      adapter comes up;
#   4. else wgpu's GL backend over EGL (WGPU_BACKEND=gl, the NVIDIA EGL vendor file), which
#      needs libEGL from the same packages.
# The peak bandwidth (GB/s): --peak-gbs, else 4800 for an H200 and 3350 for an H100 (by
# nvidia-smi's name). GEMMA_BENCH_MODEL=dir benches another model; GPU_BENCH_ALLOW_CPU=1 lets a
# CPU adapter through (to try the script on lavapipe).
set -uo pipefail
cd "$(dirname "$0")/.."

peak=""
tokens=32
depth=2000
while [ $# -gt 0 ]; do
  case "$1" in
    --peak-gbs) peak=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --depth) depth=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

say() { printf '\n== %s\n' "$*"; }
started=$(date +%s)
elapsed() { echo "$(( $(date +%s) - started )) s"; }

say "GPU"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv,noheader || true
else
  echo "no nvidia-smi on PATH"
fi

gemma=${GEMMA:-target/release/gemma}
if [ ! -x "$gemma" ]; then
  say "building $gemma (offline)"
  cargo build --release --locked --offline --bin gemma || { echo "no gemma binary and no offline build: build it elsewhere and set GEMMA"; exit 1; }
fi
echo "binary: $gemma ($(stat -c %s "$gemma") bytes)"

say "1. Vulkan loader"
if ldconfig -p | grep -q 'libvulkan.so.1'; then
  ldconfig -p | grep 'libvulkan.so.1'
elif ls .gl/*.deb > /dev/null 2>&1; then
  echo "no libvulkan.so.1 on the system: unpacking the carried packages in .gl/"
  for f in .gl/*.deb; do dpkg -x "$f" / && echo "  unpacked $(basename "$f")"; done
  ldconfig
  ldconfig -p | grep 'libvulkan.so.1' || echo "still no libvulkan.so.1"
else
  echo "no libvulkan.so.1 and no .gl/*.deb to unpack: Vulkan cannot come up (see the README)"
fi

say "2. Vulkan driver (ICD)"
icd=""
if [ -n "${VK_DRIVER_FILES:-${VK_ICD_FILENAMES:-}}" ]; then
  icd=${VK_DRIVER_FILES:-$VK_ICD_FILENAMES}
  echo "given: $icd"
else
  for d in /usr/local/nvidia/share/vulkan/icd.d /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d; do
    for f in "$d"/nvidia*.json; do
      [ -f "$f" ] && { icd=$f; break 2; }
    done
  done
  [ -n "$icd" ] && export VK_DRIVER_FILES=$icd
fi
if [ -n "$icd" ] && [ -f "${icd%%:*}" ]; then
  echo "ICD: $icd"
  cat "${icd%%:*}"
  lib=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ICD"]["library_path"])' "${icd%%:*}" 2>/dev/null || true)
  echo "it names the library: ${lib:-?}"
  if [ -n "$lib" ]; then
    if [ "${lib#/}" != "$lib" ]; then
      [ -f "$lib" ] && echo "  present" || echo "  MISSING: $lib"
    elif ldconfig -p | grep -q "$lib"; then
      echo "  the dynamic linker finds it: $(ldconfig -p | grep "$lib" | head -1)"
    else
      found=$(find /usr/local/nvidia /usr/lib /usr/lib64 /usr/local/lib -name "$lib" 2>/dev/null | head -1)
      if [ -n "$found" ]; then
        echo "  not in the linker's cache; found at $found: adding its folder to LD_LIBRARY_PATH"
        export LD_LIBRARY_PATH="$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      else
        echo "  not found anywhere under /usr/local/nvidia, /usr/lib, /usr/local/lib"
      fi
    fi
  fi
else
  echo "no NVIDIA ICD JSON found (looked in /usr/local/nvidia/share, /usr/share, /etc and /usr/local/share vulkan/icd.d)"
fi
if [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ] && [ -f /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json ]; then
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi

say "3. model: gemma synth --preset 2b --quant int4 ($(elapsed))"
model=${GEMMA_BENCH_MODEL:-/tmp/gemma-2b-int4}
if [ ! -f "$model/manifest.json" ]; then
  "$gemma" synth "$model" --preset 2b --quant int4 || { echo "synth failed"; exit 1; }
fi
echo "model: $model ($(du -sh "$model" | cut -f1))"

# One bench: prompt of 16 tokens, $tokens decoded, at depth 0 and at $depth, JSON and profile.
bench() {
  local backend=$1
  say "4. gemma bench on $backend ($(elapsed))"
  local json
  if ! json=$(WGPU_BACKEND=$backend "$gemma" bench "$model" --prompt-tokens 16 --gen-tokens "$tokens" --json 2> /tmp/gpu-bench.err); then
    cat /tmp/gpu-bench.err
    return 1
  fi
  echo "$json"
  if echo "$json" | grep -q 'Cpu)"' && [ -z "${GPU_BENCH_ALLOW_CPU:-}" ]; then
    echo "the adapter is a CPU emulator, not the GPU (GPU_BENCH_ALLOW_CPU=1 benches it anyway)"
    return 1
  fi
  WGPU_BACKEND=$backend "$gemma" bench "$model" --prompt-tokens 2 --gen-tokens "$tokens" --depth "$depth" --json | grep -E '"(depth|decode_tok_s)"'
  WGPU_BACKEND=$backend "$gemma" bench "$model" --prompt-tokens 16 --gen-tokens 8 --profile | sed -n '/GPU time, decode/,$p'
  # The fraction of the peak: bytes a token must read over the time a token took.
  python3 - "$json" "${peak}" <<'PY'
import json, subprocess, sys
v = json.loads(sys.argv[1])
peak = float(sys.argv[2]) if sys.argv[2] else 0.0
if not peak:
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout
        peak = 4800.0 if "H200" in q else 3350.0 if "H100" in q else 0.0
    except OSError:
        pass
tok_s = v["decode_tok_s"]
gb = v["bytes_read_per_token"] / 1e9
print(f"decode {tok_s:.1f} tok/s: {gb:.3f} GB read per token, {gb * tok_s:.0f} GB/s", end="")
print(f", {100 * gb * tok_s / peak:.1f}% of a {peak:.0f} GB/s peak" if peak else " (peak unknown: pass --peak-gbs)")
PY
}

if bench vulkan; then
  say "done on Vulkan ($(elapsed))"
  exit 0
fi
say "Vulkan brought up no GPU adapter: the loader's diagnostics"
VK_LOADER_DEBUG=error,warn,driver WGPU_BACKEND=vulkan "$gemma" bench "$model" --prompt-tokens 1 --gen-tokens 1 --json 2>&1 | head -60
if bench gl; then
  say "done on GL over EGL ($(elapsed))"
  exit 0
fi
say "no GPU adapter on Vulkan or GL ($(elapsed))"
exit 1
