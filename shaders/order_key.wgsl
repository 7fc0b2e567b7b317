// order_key.wgsl: the order-preserving u32 key of an f32, for reductions over logits with
// integer atomics (the sampler, logprobs.wgsl).

// Order-preserving map from f32 to u32: a < b  <=>  order_key(a) < order_key(b). Every key of a
// number is >= 1 (0 is the key of one NaN bit pattern only), so 0 marks an empty slot.
fn order_key(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if (b & 0x80000000u) != 0u {
        return ~b;
    }
    return b | 0x80000000u;
}

// The inverse of order_key.
fn key_value(k: u32) -> f32 {
    if (k & 0x80000000u) != 0u {
        return bitcast<f32>(k & 0x7fffffffu);
    }
    return bitcast<f32>(~k);
}
