// linear.wgsl: the uniform of both products with a packed weight, the tiled matmul and the
// matrix-vector kernel (prepended to them; mirrored by `ops::linear::MatMulParams`).

struct Params {
    m: u32,
    k: u32,
    n: u32,
    scales_offset: u32,
    out_offset: u32,
    out_stride: u32,
    // > 0: each output is soft-capped, cap * tanh(y / cap), as it is written (the LM head of
    // Gemma 2, whose final soft-cap needs no pass of its own over the logits).
    softcap: f32,
    // First row of W inside the bound buffer: 0, or where this weight starts in a buffer that
    // holds several joined by rows (q, k and v; gate and up).
    w_row0: u32,
}

// What a product writes for y: y itself, or soft-capped.
fn epilogue(v: f32) -> f32 {
    if p.softcap > 0.0 {
        return softcap(v, p.softcap);
    }
    return v;
}
