#!/usr/bin/env python3
"""Generate tests/fixtures/tiny-gemma3/: a tiny random-weight ``Gemma3ForCausalLM`` (text only,
eager attention, float32) and its reference outputs, for the Gemma 3 path of the engine.

What differs from Gemma 2 and is exercised here (verify against transformers'
modeling_gemma3.py): per-head RMSNorm (1 + w) on q and k after projection (random norm
weights, so they matter); no attention or final soft-cap (logits are left large on purpose);
layers 5 sliding : 1 global (7 layers, so one global layer sits between sliding ones);
RoPE base 10 000 on sliding layers and 1 000 000 on global ones; query_pre_attn_scalar 24
(!= head_dim 16); sliding window 8 < T.

Writes config.json + model.safetensors (save_pretrained) and reference.safetensors:
  input_ids int32 [T]; logits float32 [T, V] (one full forward, no cache);
  greedy_prompt int32 [P]; greedy_ids int32 [N] (argmax loop re-running the full forward).
meta.json records versions, the seed and a few diagnostics the script asserts.

With ``--rope-linear-factor F`` it writes tests/fixtures/tiny-gemma3-rope-linear/ instead: the same
model and weights, but the global layers' RoPE uses Hugging Face's "linear" scaling by F (as
Gemma 3 4B and larger do, with F = 8), and meta.json records how far factor 1 would move the
logits (the script asserts that the scaling matters).

Run from the repository root (torch + transformers, no network):
    /opt/refenv/bin/python tools/make_gemma3_fixture.py
    /opt/refenv/bin/python tools/make_gemma3_fixture.py --rope-linear-factor 8
"""

import argparse
import json
import os
import shutil

import torch
import transformers
from safetensors.torch import save_file
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, P, N = 40, 9, 16
SEED = 4242
parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--rope-linear-factor", type=float, default=None, help="linear RoPE scaling of the global layers")
ARGS = parser.parse_args()
OUT = os.path.join(ROOT, "tests", "fixtures", "tiny-gemma3" if ARGS.rope_linear_factor is None else "tiny-gemma3-rope-linear")


def rope_parameters(global_theta, local_theta, factor):
    full = {"rope_type": "default", "rope_theta": global_theta}
    if factor is not None:
        full = {"rope_type": "linear", "rope_theta": global_theta, "factor": factor}
    return {"sliding_attention": {"rope_type": "default", "rope_theta": local_theta}, "full_attention": full}


torch.manual_seed(SEED)
torch.set_num_threads(1)
config = Gemma3TextConfig(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=7,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    query_pre_attn_scalar=24,
    sliding_window=8,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    bos_token_id=2,
    eos_token_id=1,
    pad_token_id=0,
    tie_word_embeddings=True,
    attn_implementation="eager",
    **({} if ARGS.rope_linear_factor is None else {"rope_parameters": rope_parameters(1_000_000.0, 10_000.0, ARGS.rope_linear_factor)}),
)
config._attn_implementation = "eager"
assert config.layer_types == ["sliding_attention"] * 5 + ["full_attention"] + ["sliding_attention"], config.layer_types
assert config.final_logit_softcapping is None and config.attn_logit_softcapping is None
model = Gemma3ForCausalLM(config).float().eval()

g = torch.Generator().manual_seed(SEED)
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("embed_tokens.weight"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        elif "q_norm" in name or "k_norm" in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        elif name.endswith("post_attention_layernorm.weight") or name.endswith("post_feedforward_layernorm.weight"):
            p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.3)
        elif name == "model.norm.weight":
            p.copy_(-1.0 + torch.randn(p.shape, generator=g) * 2.5)
        elif name.endswith("norm.weight"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        else:  # projections: 1 / sqrt(fan_in), q/k a bit larger so attention is peaked
            scale = 3.0 if ("q_proj" in name or "k_proj" in name) else 1.0
            p.copy_(torch.randn(p.shape, generator=g) * scale / p.shape[1] ** 0.5)

ids = torch.cat([torch.tensor([2]), torch.randint(3, config.vocab_size, (T - 1,), generator=g)])
with torch.no_grad():
    logits = model(ids[None]).logits[0].float()
    greedy = ids[:P].clone()
    for _ in range(N):
        nxt = model(greedy[None]).logits[0, -1].argmax()
        greedy = torch.cat([greedy, nxt[None]])
    # Diagnostics: the logits are uncapped (some exceed Gemma 2's cap of 30), later tokens do
    # not change earlier logits, and the two RoPE bases matter.
    max_logit = float(logits.abs().max())
    later = ids.clone()
    later[20:] = torch.randint(3, config.vocab_size, (T - 20,), generator=g)
    causal = float((model(later[None]).logits[0, :20] - logits[:20]).abs().max())
    assert causal < 1e-4, causal

    def logit_change(rope):
        """How far the logits move when the same weights run with other RoPE parameters."""
        other_config = Gemma3TextConfig(**{**config.to_dict(), "rope_parameters": rope})
        other_config._attn_implementation = "eager"
        other = Gemma3ForCausalLM(other_config).float().eval()
        other.load_state_dict(model.state_dict())
        return float((other(ids[None]).logits[0] - logits).abs().max())

    extra = {}
    if ARGS.rope_linear_factor is None:
        rope_effect = logit_change(rope_parameters(10_000.0, 1_000_000.0, None))
        assert rope_effect > 0.5, rope_effect
        extra["swapped_rope_bases_max_logit_change"] = rope_effect
    else:
        factor_effect = logit_change(rope_parameters(1_000_000.0, 10_000.0, None))
        assert factor_effect > 0.5, factor_effect
        extra["rope_linear_factor"] = ARGS.rope_linear_factor
        extra["factor_1_max_logit_change"] = factor_effect

shutil.rmtree(OUT, ignore_errors=True)
model.save_pretrained(OUT, safe_serialization=True)
gen = os.path.join(OUT, "generation_config.json")
if os.path.exists(gen):
    os.remove(gen)
save_file(
    {
        "input_ids": ids.to(torch.int32).contiguous(),
        "logits": logits.contiguous(),
        "greedy_prompt": greedy[:P].to(torch.int32).contiguous(),
        "greedy_ids": greedy[P:].to(torch.int32).contiguous(),
    },
    os.path.join(OUT, "reference.safetensors"),
)
meta = dict(
    torch=torch.__version__,
    transformers=transformers.__version__,
    seed=SEED,
    layer_types=config.layer_types,
    max_abs_logit=max_logit,
    causality_max_diff=causal,
    **extra,
)
with open(os.path.join(OUT, "meta.json"), "w") as f:
    json.dump(meta, f, indent=2)
print(json.dumps(meta, indent=2))
