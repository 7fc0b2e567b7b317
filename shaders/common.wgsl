// common.wgsl: numeric helpers shared by several kernels (prepended to them; see src/shaders.rs).

// tanh with its argument clamped: WGSL defines tanh through sinh/cosh, which some drivers
// evaluate to inf/inf = NaN for |x| > ~44..89. tanh(±15) is ±1 in f32 already.
fn tanh_clamped(x: f32) -> f32 {
    return tanh(clamp(x, -15.0, 15.0));
}

// c * tanh(x / c): Gemma 2's logit soft-cap (attention and final logits).
fn softcap(x: f32, c: f32) -> f32 {
    return c * tanh_clamped(x / c);
}

// PyTorch's GELU(approximate='tanh'), its tanh argument clamped.
fn gelu_tanh(v: f32) -> f32 {
    return 0.5 * v * (1.0 + tanh_clamped(0.7978845608028654 * (v + 0.044715 * v * v * v)));
}

// Linear workgroup index of a grid folded into (x, y) by `gpu::grid` on the host.
fn linear_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// The per-step uniform, written once per forward pass by the engine and bound by every kernel
// whose work depends on the position, so that a decode step rewrites no per-layer uniform
// (mirrored by `ops::StepParams`).
struct Step {
    pos: u32,       // absolute position of the step's first token
    n_tokens: u32,  // tokens in the step
    _pad0: u32,
    _pad1: u32,
}

// Decode attention split across the keys (attention_split.wgsl, attention_combine.wgsl): keys
// per split (whole tiles of ATTN_KEYS) and splits, for `visible` keys; as `split_plan` in
// src/ops/attention.rs, which sizes the dispatch.
fn split_plan(visible: u32) -> vec2<u32> {
    let tiles = max((visible + ATTN_KEYS - 1u) / ATTN_KEYS, 1u);
    let chunk = ((tiles + ATTN_MAX_SPLITS - 1u) / ATTN_MAX_SPLITS) * ATTN_KEYS;
    return vec2<u32>(chunk, max((visible + chunk - 1u) / chunk, 1u));
}

// The first key query position i sees with a window of `window` keys (0: global).
fn window_start(i: u32, window: u32) -> u32 {
    if window > 0u && i + 1u > window {
        return i + 1u - window;
    }
    return 0u;
}
