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

// Linear workgroup index of a grid folded into (x, y) by `gpu::grid` on the host.
fn linear_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}
