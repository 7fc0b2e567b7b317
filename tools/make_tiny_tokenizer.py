#!/usr/bin/env python3
"""Writes tests/fixtures/tiny-tokenizer.json: a 512-entry tokenizer shaped exactly like Gemma's
(SentencePiece-style BPE with byte fallback, spaces as U+2581, <bos>=2, <eos>=1,
<start_of_turn>=106, <end_of_turn>=107 registered as specials), small enough for the tiny
fixture models (vocab 512) so the JS API can be tested end to end on them.
Standard library only; the output is committed. Run: python3 tools/make_tiny_tokenizer.py"""
import json
import pathlib

VOCAB = 512
SP = "\u2581"
specials = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 106: "<start_of_turn>", 107: "<end_of_turn>"}
chars = [SP, "\n"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
chars += [str(d) for d in range(10)] + list(".,!?'\"-:;()")
bytes_ = [f"<0x{b:02X}>" for b in range(256)]

# Multi-character pieces and the merges that build them, left to right, from a few words.
words = ["the", "and", "of", "to", "is", "in", "it", "that", "was", "for", "on", "are", "with", "as",
         "Hello", "world", "model", "user", "sky", "blue", "what", "why", "France", "capital", "Paris",
         "red", "tiny", "test"]
pieces, merges = [], []
for w in words:
    cur = SP + w
    acc = cur[0]
    for ch in cur[1:]:
        new = acc + ch
        if new not in pieces:
            pieces.append(new)
            merges.append(f"{acc} {ch}")
        acc = new

vocab = {}
for i, s in specials.items():
    vocab[s] = i
free = [i for i in range(VOCAB) if i not in specials]
for tok in bytes_ + chars:
    vocab[tok] = free.pop(0)
n_pieces = min(len(pieces), len(free))
for tok in pieces[:n_pieces]:
    vocab[tok] = free.pop(0)
merges = merges[:n_pieces]
for i in free:  # fill the rest so every id decodes
    vocab[f"<unused{i}>"] = i
assert len(vocab) == VOCAB and sorted(vocab.values()) == list(range(VOCAB))

tok = {
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "added_tokens": [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, s in sorted(specials.items())
    ],
    "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": SP},
    "pre_tokenizer": None,
    "post_processor": None,
    "decoder": {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": SP}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]},
    "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
              "vocab": dict(sorted(vocab.items(), key=lambda kv: kv[1])), "merges": merges},
}
out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny-tokenizer.json"
out.write_text(json.dumps(tok, ensure_ascii=False, indent=1) + "\n")
print(f"wrote {out} ({len(vocab)} tokens, {len(merges)} merges)")
