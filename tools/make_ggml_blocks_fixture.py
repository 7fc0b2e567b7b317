#!/usr/bin/env python3
"""ggml's dequantization of every block type we store, computed by the `gguf` package from PyPI
(llama.cpp's own Python library; its numpy dequantizers follow ggml's reference code), so the
tests can check ours bit for bit without it. Writes tests/fixtures/ggml-blocks/blocks.safetensors:

  {type}.bytes   int32 [rows, row_bytes]  the rows' block bytes, one byte per element
  {type}.values  f32   [rows, cols]       gguf.quants.dequantize of those bytes

for type in Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K. The types the real Gemma 3 270M
Q4_K_M file holds (Q5_0, Q8_0, Q4_K, Q6_K) take the first rows of one of its tensors; the others
take random blocks (seeded; every fp16 scale field set to a finite value of a trained model's
size, every other byte random). Run (needs only `pip install gguf`, no network):
    python tools/make_ggml_blocks_fixture.py /path/to/gemma-3-270m-q4_k_m.gguf
"""

import json
import os
import struct
import sys

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "ggml-blocks")
ROWS = 3

# From the real file: (type, tensor).
REAL = [(T.Q5_0, "blk.0.attn_q.weight"), (T.Q8_0, "blk.0.attn_v.weight"), (T.Q4_K, "blk.0.attn_output.weight"), (T.Q6_K, "blk.0.ffn_down.weight")]
# Random blocks: (type, values per row, byte offsets of fp16 fields in a block).
SYNTH = [(T.Q4_0, 512, [0]), (T.Q4_1, 512, [0, 2]), (T.Q5_1, 512, [0, 2]), (T.Q5_K, 512, [0, 2])]


def real_rows(reader, qtype, name):
    t = next(t for t in reader.tensors if t.name == name)
    assert t.tensor_type == qtype, f"{name} is {t.tensor_type.name}, not {qtype.name}"
    data = np.asarray(t.data, dtype=np.uint8)
    return data.reshape(data.shape[0], -1)[:ROWS].copy()


def synth_rows(qtype, cols, halves, rng):
    block, size = GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(ROWS, cols // block, size), dtype=np.uint8)
    for off in halves:
        scale = (rng.uniform(1e-3, 3e-2, size=(ROWS, cols // block)) * rng.choice([-1, 1], size=(ROWS, cols // block))).astype(np.float16)
        if qtype in (T.Q5_K,):
            scale = np.abs(scale)  # d and dmin of a k-quant are non-negative in practice
        data[:, :, off : off + 2] = scale.view(np.uint8).reshape(ROWS, cols // block, 2)
    return data.reshape(ROWS, -1)


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, (dtype, arr) in tensors.items():
        raw = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main():
    reader = GGUFReader(sys.argv[1])
    rng = np.random.default_rng(20261201)
    tensors = {}
    rows = [(q, real_rows(reader, q, name)) for q, name in REAL] + [(q, synth_rows(q, cols, halves, rng)) for q, cols, halves in SYNTH]
    for qtype, data in rows:
        values = dequantize(data, qtype).astype(np.float32)
        assert values.shape[0] == ROWS and np.isfinite(values).all(), qtype.name
        tensors[f"{qtype.name}.bytes"] = ("I32", data.astype(np.int32))
        tensors[f"{qtype.name}.values"] = ("F32", values)
        print(f"{qtype.name}: {ROWS} rows of {values.shape[1]} values ({data.shape[1]} bytes each)")
    os.makedirs(OUT, exist_ok=True)
    write_safetensors(os.path.join(OUT, "blocks.safetensors"), tensors)
    from importlib.metadata import version

    meta = {"gguf_package": version("gguf"), "rows": ROWS, "real": {q.name: n for q, n in REAL}, "synthetic": [q.name for q, _, _ in SYNTH]}
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
