#!/usr/bin/env python3
"""Generate the tiny Gemma 2 reference fixtures under tests/fixtures/.

What it makes
-------------
For each fixture this script builds a tiny random-weight
``transformers.Gemma2ForCausalLM`` (eager attention, float32), re-initialises its
weights so that both soft-caps really engage, and writes ``tests/fixtures/<name>/``.

* ``tiny-f32``: V 512, H 64, I 128, 4 layers, 4 q heads / 2 kv heads, head_dim 16,
  query_pre_attn_scalar 16, sliding window 8; weights stored float32.
* ``tiny-bf16-gqa3``: H 48, 6 q heads / 2 kv heads (GQA group 3), head_dim 16
  (so NH*D = 96 != H), query_pre_attn_scalar 24 (!= head_dim), sliding window 6;
  weights stored bfloat16. (H is 48, not 64, because transformers 5.x rejects
  hidden_size % num_attention_heads != 0.)

Both use soft-caps 50 / 30, eps 1e-6, rope_theta 10000, tied embeddings,
BOS 2 / EOS 1 / PAD 0. Each folder holds:


* ``config.json`` and ``model.safetensors``: exactly what
  ``model.save_pretrained(dir, safe_serialization=True)`` writes. ``tiny-f32``
  stores float32 weights; ``tiny-bf16-gqa3`` stores bfloat16 weights (a bf16
  copy of the model is saved).
* ``reference.safetensors``: float32 / int32 tensors computed by HF eager in
  float32. For the bf16 fixture, the float32 model uses the bf16-rounded weights,
  so the reference is "f32 forward of exactly the stored bf16 weights":
    - ``input_ids``         int32   [T]     T = 40, BOS = 2 then random ids in [3, V)
    - ``logits``            float32 [T, V]  soft-capped logits, one full forward, no cache
    - ``hidden.embed``      float32 [T, H]  scaled embeddings (input to layer 0)
    - ``hidden.layer{i}``   float32 [T, H]  residual stream after decoder layer i
    - ``hidden.final_norm`` float32 [T, H]  output of model.model.norm
    - ``greedy_prompt``     int32   [P]     first P = 9 tokens of input_ids
    - ``greedy_ids``        int32   [N]     N = 16 argmax continuation tokens, from a
                                            plain loop that re-runs the full forward
* ``meta.json``: versions, seed, per-layer attention types, the maxima of the
  pre-soft-cap attention and final logits on the 40-token sequence and whether
  each cap engaged, and a few other diagnostics.

Sanity checks (the script asserts all of them): eager attention is really used
(our wrapper around the eager attention function is called once per layer),
even layers are sliding and odd layers global, activations are finite, both
soft-caps engage, logits at position t depend only on tokens <= t (changing the
later tokens leaves them unchanged to 1e-5; a truncated prefix matches to
1e-5 * max|logit|, the float32 reduction-order noise), the masks seen by the
attention are exactly the spec's (sliding: i - W < j <= i), the sliding window
changes the result, an independent float64 re-implementation of the spec
(docs/model.md §3) matches to 5e-5 * max|tensor|, greedy top-1/top-2 gaps are
> 0.05, and reloading the saved folder with ``from_pretrained`` reproduces the
reference logits. save_pretrained's generation_config.json is deleted.

How to rerun
------------
From the repository root, with a Python environment that has torch,
transformers, safetensors and numpy (no network / model hub access needed)::

    /opt/refenv/bin/python tools/make_fixtures.py

The output is deterministic (fixed seeds, single thread). The fixtures are
committed; CI never runs this script, it only reads the files it produced.
"""

import copy
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Gemma2Config, Gemma2ForCausalLM
from transformers.models.gemma2 import modeling_gemma2

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_ROOT = os.path.join(REPO_ROOT, "tests", "fixtures")

T = 40  # test sequence length (longer than every sliding window)
P = 9  # greedy prompt length
N = 16  # greedy continuation length
BOS, EOS, PAD = 2, 1, 0
SPEC_REL_TOL = 5e-5  # HF f32 vs f64 spec forward: max abs err <= SPEC_REL_TOL * max(1, max|ref|)

BASE_CONFIG = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    query_pre_attn_scalar=16,
    sliding_window=8,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    max_position_embeddings=128,
    hidden_activation="gelu_pytorch_tanh",
    tie_word_embeddings=True,
    bos_token_id=BOS,
    eos_token_id=EOS,
    pad_token_id=PAD,
    attention_bias=False,
    attention_dropout=0.0,
)

FIXTURES = [
    dict(
        name="tiny-f32",
        seed=1234,
        save_dtype=torch.float32,
        init=dict(qk_std_times_sqrt_h=4.0, final_norm_one_plus_w_std=2.5),
        overrides={},
    ),
    dict(
        name="tiny-bf16-gqa3",
        seed=5678,
        save_dtype=torch.bfloat16,
        # smaller H and larger query_pre_attn_scalar shrink both logit ranges: scale up a bit
        init=dict(qk_std_times_sqrt_h=4.5, final_norm_one_plus_w_std=3.0),
        overrides=dict(
            # transformers 5.x refuses hidden_size % num_attention_heads != 0 (a check that is
            # meaningless with an explicit head_dim), so H = 48 instead of 64: 48 % 6 == 0,
            # and NH * D = 96 != H, like the real models (2B: 2048 vs 2304).
            hidden_size=48,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=24,
            num_hidden_layers=4,
            sliding_window=6,
        ),
    ),
]

# Weight initialisation (all normal, fixed generator):
# * embedding rows: std EMBED_STD; the scaled input then has rms ~ EMBED_STD * sqrt(H).
# * q_proj / k_proj: std qk_std_times_sqrt_h / sqrt(H) (per fixture), so q and k entries
#   have std ~qk_std_times_sqrt_h and the pre-cap scores exceed the attention cap of 50.
# * v / o / gate / up / down: std 1 / sqrt(fan_in).
# * input / pre-feedforward norms: w ~ N(0, NORM_STD), effective scale (1 + w).
# * post-attention / post-feedforward norms: w ~ POST_NORM_MEAN + N(0, NORM_STD), i.e.
#   (1 + w) ~ 2 +- 0.3, so the layer outputs are not swamped by the scaled embedding.
# * final norm: w = -1 + N(0, final_norm_one_plus_w_std) (per fixture), i.e. (1 + w) is
#   zero-mean with random signs. With tied embeddings this decorrelates the head from
#   the current token's own embedding (otherwise greedy decoding just repeats the last
#   token) and makes the pre-cap final logits exceed the final cap of 30.
EMBED_STD = 0.5
NORM_STD = 0.3
POST_NORM_MEAN = 1.0


# --------------------------------------------------------------------------
# Capture of pre-soft-cap attention logits (and proof that eager is used).
# --------------------------------------------------------------------------
_ORIG_EAGER = modeling_gemma2.eager_attention_forward
_ATTN_RECORD = []  # filled by the wrapper while _RECORDING is on
_RECORDING = [False]
_EAGER_CALLS = [0]


def _recording_eager(module, query, key, value, attention_mask, scaling=None, softcap=None, **kwargs):
    _EAGER_CALLS[0] += 1
    if _RECORDING[0]:
        with torch.no_grad():
            k = modeling_gemma2.repeat_kv(key, module.num_key_value_groups)
            s = scaling if scaling is not None else module.head_dim**-0.5
            z = torch.matmul(query.float(), k.float().transpose(2, 3)) * s  # [B, NH, Tq, Tk]
            if attention_mask is not None:
                if attention_mask.dtype == torch.bool:
                    visible = attention_mask
                else:
                    visible = attention_mask == 0
                visible = visible[..., : z.shape[-1]].expand_as(z)
            else:
                tq, tk = z.shape[-2:]
                visible = torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq).expand_as(z)
            zabs = z.abs()
            _ATTN_RECORD.append(
                dict(
                    layer=module.layer_idx,
                    max_visible=float(zabs[visible].max()),
                    max_all=float(zabs.max()),
                    n_visible_over_cap=int(((zabs > softcap) & visible).sum()) if softcap else 0,
                    visible=visible[0, 0].clone(),
                )
            )
    return _ORIG_EAGER(module, query, key, value, attention_mask, scaling=scaling, softcap=softcap, **kwargs)


modeling_gemma2.eager_attention_forward = _recording_eager


# --------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------
def build_model(cfg_kwargs, seed, init):
    torch.manual_seed(seed)
    config = Gemma2Config(**cfg_kwargs)
    config._attn_implementation = "eager"
    model = Gemma2ForCausalLM(config)
    model = model.to(torch.float32).eval()
    if getattr(model.config, "_attn_implementation", None) != "eager":
        model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager", model.config._attn_implementation

    gen = torch.Generator().manual_seed(seed)
    H = config.hidden_size
    I = config.intermediate_size

    def normal_(t, std):
        with torch.no_grad():
            t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float32) * std)

    normal_(model.model.embed_tokens.weight, EMBED_STD)
    for layer in model.model.layers:
        a = layer.self_attn
        normal_(a.q_proj.weight, init["qk_std_times_sqrt_h"] / math.sqrt(H))
        normal_(a.k_proj.weight, init["qk_std_times_sqrt_h"] / math.sqrt(H))
        normal_(a.v_proj.weight, 1.0 / math.sqrt(H))
        normal_(a.o_proj.weight, 1.0 / math.sqrt(a.o_proj.in_features))
        normal_(layer.mlp.gate_proj.weight, 1.0 / math.sqrt(H))
        normal_(layer.mlp.up_proj.weight, 1.0 / math.sqrt(H))
        normal_(layer.mlp.down_proj.weight, 1.0 / math.sqrt(I))
        for norm in (layer.input_layernorm, layer.pre_feedforward_layernorm):
            normal_(norm.weight, NORM_STD)
        for norm in (layer.post_attention_layernorm, layer.post_feedforward_layernorm):
            normal_(norm.weight, NORM_STD)
            with torch.no_grad():
                norm.weight.add_(POST_NORM_MEAN)
    normal_(model.model.norm.weight, init["final_norm_one_plus_w_std"])
    with torch.no_grad():
        model.model.norm.weight.sub_(1.0)
    # Tied head: it must literally be the embedding matrix.
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "lm_head not tied"
    return model


def round_params_to_bf16_(model):
    """Round every parameter (not the buffers: inv_freq, embed_scale) to bf16, kept in f32."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


# --------------------------------------------------------------------------
# Forward helpers
# --------------------------------------------------------------------------
@torch.no_grad()
def forward_logits(model, ids):
    out = model(input_ids=ids.view(1, -1).long(), use_cache=False)
    return out.logits[0].float()


@torch.no_grad()
def forward_with_hooks(model, ids):
    captured = {}
    handles = []

    def grab(name):
        def hook(_mod, _inp, out):
            t = out[0] if isinstance(out, (tuple, list)) else out
            captured[name] = t.detach()[0].float().clone()

        return hook

    handles.append(model.model.embed_tokens.register_forward_hook(grab("hidden.embed")))
    for i, layer in enumerate(model.model.layers):
        handles.append(layer.register_forward_hook(grab(f"hidden.layer{i}")))
    handles.append(model.model.norm.register_forward_hook(grab("hidden.final_norm")))
    handles.append(model.lm_head.register_forward_hook(grab("precap_logits")))

    _ATTN_RECORD.clear()
    calls_before = _EAGER_CALLS[0]
    _RECORDING[0] = True
    try:
        logits = forward_logits(model, ids)
    finally:
        _RECORDING[0] = False
        for h in handles:
            h.remove()
    n_layers = model.config.num_hidden_layers
    assert _EAGER_CALLS[0] - calls_before == n_layers, "eager attention function was not used for every layer"
    attn = sorted(_ATTN_RECORD, key=lambda r: r["layer"])
    assert [r["layer"] for r in attn] == list(range(n_layers))
    return logits, captured, attn


@torch.no_grad()
def greedy(model, prompt, n):
    seq = prompt.clone().long()
    out, gaps = [], []
    for _ in range(n):
        last = forward_logits(model, seq)[-1]
        top2 = torch.topk(last, 2).values
        gaps.append(float(top2[0] - top2[1]))
        nxt = int(torch.argmax(last))
        out.append(nxt)
        seq = torch.cat([seq, torch.tensor([nxt])])
    return torch.tensor(out, dtype=torch.int32), gaps


# --------------------------------------------------------------------------
# Independent float64 re-implementation of the spec (docs/model.md §3)
# --------------------------------------------------------------------------
@torch.no_grad()
def spec_forward_f64(model, ids):
    c = model.config
    sd = {k: v.detach().double() for k, v in model.state_dict().items()}
    H, NH, NKV, D = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    Tn = ids.numel()
    ids = ids.long()
    theta = 10000.0  # rope_theta of both fixtures

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.rms_norm_eps) * (1.0 + w)

    def gelu_tanh(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))

    half = D // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, dtype=torch.float64) * 2.0 / D))
    ang = torch.arange(Tn, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos, sin = torch.cos(ang), torch.sin(ang)

    def rope(x):  # x [T, nh, D]
        x1, x2 = x[..., :half], x[..., half:]
        cc, ss = cos[:, None, :], sin[:, None, :]
        return torch.cat([x1 * cc - x2 * ss, x2 * cc + x1 * ss], -1)

    E = sd["model.embed_tokens.weight"]
    x = E[ids] * math.sqrt(H)
    hidden = {"hidden.embed": x.clone()}
    i_idx = torch.arange(Tn)[:, None]
    j_idx = torch.arange(Tn)[None, :]
    scale = c.query_pre_attn_scalar**-0.5
    for l in range(c.num_hidden_layers):
        p = f"model.layers.{l}."
        sliding = l % 2 == 0
        visible = j_idx <= i_idx
        if sliding:
            visible = visible & ((i_idx - j_idx) < c.sliding_window)
        h = rms(x, sd[p + "input_layernorm.weight"])
        q = (h @ sd[p + "self_attn.q_proj.weight"].T).view(Tn, NH, D)
        k = (h @ sd[p + "self_attn.k_proj.weight"].T).view(Tn, NKV, D)
        v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(Tn, NKV, D)
        q, k = rope(q), rope(k)
        o = torch.empty(Tn, NH, D, dtype=torch.float64)
        for n in range(NH):
            g = n // (NH // NKV)
            z = (q[:, n, :] @ k[:, g, :].T) * scale
            z = c.attn_logit_softcapping * torch.tanh(z / c.attn_logit_softcapping)
            z = z.masked_fill(~visible, float("-inf"))
            o[:, n, :] = torch.softmax(z, -1) @ v[:, g, :]
        a = o.reshape(Tn, NH * D) @ sd[p + "self_attn.o_proj.weight"].T
        x = x + rms(a, sd[p + "post_attention_layernorm.weight"])
        h = rms(x, sd[p + "pre_feedforward_layernorm.weight"])
        m = (gelu_tanh(h @ sd[p + "mlp.gate_proj.weight"].T) * (h @ sd[p + "mlp.up_proj.weight"].T)) @ sd[
            p + "mlp.down_proj.weight"
        ].T
        x = x + rms(m, sd[p + "post_feedforward_layernorm.weight"])
        hidden[f"hidden.layer{l}"] = x.clone()
    x = rms(x, sd["model.norm.weight"])
    hidden["hidden.final_norm"] = x.clone()
    logits = x @ E.T
    logits = c.final_logit_softcapping * torch.tanh(logits / c.final_logit_softcapping)
    return logits, hidden


def assert_close(name, got, want, rtol, atol):
    got, want = got.double(), want.double()
    err = (got - want).abs()
    tol = atol + rtol * want.abs()
    bad = err > tol
    assert not bad.any(), f"{name}: max abs err {float(err.max()):.3e} (max |ref| {float(want.abs().max()):.3e})"
    return float(err.max())


# --------------------------------------------------------------------------
# One fixture
# --------------------------------------------------------------------------
def make_fixture(spec):
    name, seed = spec["name"], spec["seed"]
    cfg_kwargs = dict(BASE_CONFIG, **spec["overrides"])
    out_dir = os.path.join(FIXTURE_ROOT, name)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)

    model = build_model(cfg_kwargs, seed, spec["init"])
    cfg = model.config
    L = cfg.num_hidden_layers

    # ---- layer parity (docs/model.md §1.3): even sliding, odd global --------------
    layer_types = list(getattr(cfg, "layer_types", None) or [])
    attn_layer_types = [m.self_attn.layer_type for m in model.model.layers]
    attn_windows = [m.self_attn.sliding_window for m in model.model.layers]
    expected = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(L)]
    assert layer_types == expected, layer_types
    assert attn_layer_types == expected, attn_layer_types
    assert attn_windows == [cfg.sliding_window if i % 2 == 0 else None for i in range(L)], attn_windows

    # ---- save weights ------------------------------------------------------
    save_dtype = spec["save_dtype"]
    if save_dtype == torch.float32:
        model.save_pretrained(out_dir, safe_serialization=True)
    else:
        to_save = copy.deepcopy(model).to(save_dtype)
        to_save.save_pretrained(out_dir, safe_serialization=True)
        del to_save
        round_params_to_bf16_(model)  # reference = f32 forward of the bf16-rounded weights
    for extra in ("generation_config.json",):
        # save_pretrained also writes generation_config.json; it is not part of the fixture.
        path = os.path.join(out_dir, extra)
        if os.path.exists(path):
            os.remove(path)

    with safe_open(os.path.join(out_dir, "model.safetensors"), "pt") as f:
        saved_names = sorted(f.keys())
        saved = {k: f.get_tensor(k) for k in saved_names}
        st_metadata = f.metadata()
    lm_head_saved = "lm_head.weight" in saved_names
    saved_dtypes = sorted({str(t.dtype) for t in saved.values()})
    assert saved_dtypes == [str(save_dtype)], saved_dtypes
    params = dict(model.named_parameters())
    for k, t in saved.items():
        ref = params[k] if k in params else None
        assert ref is not None, f"unexpected tensor {k} in model.safetensors"
        assert torch.equal(t.float(), ref.detach()), f"saved tensor {k} differs from the model"

    # ---- main forward on the 40-token sequence -------------------------
    gen = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.cat(
        [torch.tensor([BOS]), torch.randint(3, cfg.vocab_size, (T - 1,), generator=gen)]
    ).to(torch.int32)
    assert T > cfg.sliding_window

    logits, hidden, attn = forward_with_hooks(model, input_ids)
    precap = hidden.pop("precap_logits")
    for k, v in list(hidden.items()) + [("logits", logits), ("precap", precap)]:
        assert torch.isfinite(v).all(), f"non-finite values in {k}"
    assert sorted(hidden) == sorted(
        ["hidden.embed", "hidden.final_norm"] + [f"hidden.layer{i}" for i in range(L)]
    ), sorted(hidden)
    # the final soft-cap is exactly what turns the hooked lm_head output into the logits
    fc = cfg.final_logit_softcapping
    assert_close("final softcap", logits, fc * torch.tanh(precap / fc), 1e-6, 1e-5)
    # hidden.embed is the scaled embedding
    assert_close(
        "embed",
        hidden["hidden.embed"],
        model.model.embed_tokens.weight[input_ids.long()].detach() * math.sqrt(cfg.hidden_size),
        1e-6,
        1e-6,
    )

    # mask check from the recorded visibility: sliding layers see i-W < j <= i
    ii = torch.arange(T)[:, None]
    jj = torch.arange(T)[None, :]
    for r in attn:
        vis = (jj <= ii) & ((ii - jj < cfg.sliding_window) if r["layer"] % 2 == 0 else True)
        assert torch.equal(r["visible"], vis), f"layer {r['layer']} mask differs from the spec"

    max_attn = max(r["max_visible"] for r in attn)
    max_final = float(precap.abs().max())
    attn_cap, final_cap = cfg.attn_logit_softcapping, cfg.final_logit_softcapping
    attn_engaged = max_attn > attn_cap
    final_engaged = max_final > final_cap
    assert attn_engaged, f"attention soft-cap does not engage (max {max_attn:.2f} <= {attn_cap})"
    assert final_engaged, f"final soft-cap does not engage (max {max_final:.2f} <= {final_cap})"

    # ---- causality -------------------------------------------------------
    # (a) Same length, different future: replacing the tokens after position t must
    #     leave logits[0..t] unchanged to 1e-5 (same kernels, so in practice bit-exact).
    # (b) Truncated prefix: in float32 the CPU matmul kernels block differently for
    #     short sequences, so a prefix run differs from the full run by reduction-order
    #     noise (~1e-5 on logits of magnitude ~30); this check is relative to the logit
    #     scale (1e-5 * max|logit|). A real leak would change logits by O(1).
    gen_f = torch.Generator().manual_seed(seed + 2)
    future_err = 0.0
    for t in (0, 4, cfg.sliding_window - 1, cfg.sliding_window, 16, 30):
        alt = input_ids.clone()
        alt[t + 1 :] = torch.randint(3, cfg.vocab_size, (T - t - 1,), generator=gen_f).to(torch.int32)
        alt_logits = forward_logits(model, alt)
        future_err = max(future_err, assert_close(f"future after {t}", alt_logits[: t + 1], logits[: t + 1], 0.0, 1e-5))
        assert float((alt_logits[t + 1 :] - logits[t + 1 :]).abs().max()) > 1e-2
    prefixes = (1, 5, cfg.sliding_window, cfg.sliding_window + 1, 17, 31)
    scale = max(1.0, float(logits.abs().max()))
    causal_err = 0.0
    for k in prefixes:
        err = float((forward_logits(model, input_ids[:k]) - logits[:k]).abs().max())
        assert err <= 1e-5 * scale, f"prefix {k}: f32 logits differ by {err:.3e} (scale {scale:.1f})"
        causal_err = max(causal_err, err)

    # ---- the sliding window matters ----------------------------------------
    wide = copy.deepcopy(model)
    wide.config.sliding_window = 10**6
    wide_logits = forward_logits(wide, input_ids)
    del wide
    window_effect = float((wide_logits - logits).abs().max())
    assert window_effect > 1e-2, f"sliding window has no visible effect ({window_effect})"
    win = cfg.sliding_window
    assert_close("window prefix", wide_logits[:win], logits[:win], 0.0, 1e-5)

    # ---- independent float64 spec forward -------------------------------
    # HF float32 versus exact (f64) math: the tolerance is relative to each tensor's scale.
    spec_logits, spec_hidden = spec_forward_f64(model, input_ids)
    spec_err = {}
    for k, got, want in [("logits", logits, spec_logits)] + [(k, hidden[k], v) for k, v in spec_hidden.items()]:
        tol = SPEC_REL_TOL * max(1.0, float(want.abs().max()))
        spec_err[k] = assert_close(f"spec {k}", got, want, 0.0, tol)

    # ---- greedy -----------------------------------------------------------
    greedy_prompt = input_ids[:P].clone()
    greedy_ids, gaps = greedy(model, greedy_prompt, N)
    assert min(gaps) > 0.05, f"greedy argmax too close to a tie ({min(gaps):.4f})"

    # ---- reload the saved folder and compare -----------------------------
    reloaded = Gemma2ForCausalLM.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager").eval()
    assert reloaded.config._attn_implementation == "eager"
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    reload_err = assert_close("reloaded logits", forward_logits(reloaded, input_ids), logits, 0.0, 1e-5)
    del reloaded

    # ---- write reference + meta ------------------------------------------
    ref = {"input_ids": input_ids, "logits": logits}
    ref.update(hidden)
    ref["greedy_prompt"] = greedy_prompt.to(torch.int32)
    ref["greedy_ids"] = greedy_ids.to(torch.int32)
    ref = {k: v.contiguous() for k, v in ref.items()}
    for k, v in ref.items():
        assert v.dtype in (torch.float32, torch.int32), (k, v.dtype)
    save_file(ref, os.path.join(out_dir, "reference.safetensors"))

    meta = {
        "name": name,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "seed": seed,
        "init": dict(
            embed_std=EMBED_STD,
            norm_std=NORM_STD,
            post_norm_mean=POST_NORM_MEAN,
            final_norm="w = -1 + N(0, final_norm_one_plus_w_std)",
            **spec["init"],
        ),
        "weights_dtype": str(save_dtype).replace("torch.", ""),
        "reference_dtype": "float32 (HF eager, bf16-rounded weights upcast to f32)"
        if save_dtype == torch.bfloat16
        else "float32 (HF eager)",
        "attn_implementation": cfg._attn_implementation,
        "seq_len": T,
        "sliding_window": cfg.sliding_window,
        "layer_types": layer_types,
        "max_abs_attn_logit_precap": max_attn,
        "max_abs_attn_logit_precap_per_layer": [r["max_visible"] for r in attn],
        "attn_logits_over_cap_count": sum(r["n_visible_over_cap"] for r in attn),
        "attn_softcap": attn_cap,
        "attn_softcap_engaged": attn_engaged,
        "max_abs_final_logit_precap": max_final,
        "final_logits_over_cap_count": int((precap.abs() > final_cap).sum()),
        "final_softcap": final_cap,
        "final_softcap_engaged": final_engaged,
        "note_attn_max": "over causal/window-visible (query, key) pairs only, all heads, pre-cap "
        "score = (q.k) * query_pre_attn_scalar**-0.5 with post-RoPE q, k",
        "greedy_min_top2_gap": min(gaps),
        "lm_head_weight_in_model_safetensors": lm_head_saved,
        "model_safetensors_metadata": st_metadata,
        "checks": {
            "future_tokens_changed_max_abs_err": future_err,
            "truncated_prefix_max_abs_err": causal_err,
            "sliding_window_effect_max_abs_logit_diff": window_effect,
            "spec_f64_max_abs_err": spec_err,
            "reload_max_abs_err": reload_err,
        },
    }
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")

    print(f"== {name}")
    print(f"   weights {meta['weights_dtype']}, layers {L}, heads {cfg.num_attention_heads}/"
          f"{cfg.num_key_value_heads}, head_dim {cfg.head_dim}, qpas {cfg.query_pre_attn_scalar}, window {win}")
    print(f"   layer_types {layer_types}")
    print(f"   max pre-cap attn logit {max_attn:.2f} (cap {attn_cap}), "
          f"max pre-cap final logit {max_final:.2f} (cap {final_cap})")
    print(f"   greedy {greedy_ids.tolist()} (min top-2 gap {min(gaps):.3f})")
    print(f"   causality: future-change err {future_err:.2e}, prefix err {causal_err:.2e}, window effect {window_effect:.2f}, "
          f"spec err (logits) {spec_err['logits']:.2e}, reload err {reload_err:.2e}")
    print(f"   model.safetensors: {len(saved_names)} tensors, lm_head.weight saved: {lm_head_saved}")
    for fn in sorted(os.listdir(out_dir)):
        print(f"   {fn}: {os.path.getsize(os.path.join(out_dir, fn))} bytes")
    return meta


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    np.random.seed(0)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}", file=sys.stderr)
    for spec in FIXTURES:
        make_fixture(spec)


if __name__ == "__main__":
    main()
