// packed.wgsl: reading packed weights (prepended to kernels that read weights).
// The including shader declares `w: array<u32>` (one part of a packed [rows, cols] tensor).
// Layouts are defined and documented in src/quant/mod.rs and, for llama.cpp's block types
// (Q4_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K), src/quant/blocks.rs; WTYPE selects one at pipeline
// creation.

override WTYPE: u32 = WTYPE_F32; // WTYPE_F32, _F16, _BF16, _INT4 (affine), _INT8 (groups of 32), _Q*

fn half_bits(i: u32) -> u32 {
    return (w[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu;
}

fn half_value(i: u32) -> f32 {
    if WTYPE == WTYPE_BF16 {
        return bitcast<f32>(half_bits(i) << 16u);
    }
    return unpack2x16float(half_bits(i)).x;
}

// (scale, min) of int4 group g: code q stands for q * scale + min.
fn int4_params(g: u32, scales_offset: u32) -> vec2<f32> {
    return unpack2x16float(w[scales_offset + g]);
}

// The 8 int4 codes (0..15) of one word: nibbles 0-3 and 4-7.
fn int4_lo(word: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(word, word >> 4u, word >> 8u, word >> 12u) & vec4<u32>(15u));
}

fn int4_hi(word: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(word >> 16u, word >> 20u, word >> 24u, word >> 28u) & vec4<u32>(15u));
}

// fp16 scale of int8 group g.
fn int8_scale(g: u32, scales_offset: u32) -> f32 {
    return unpack2x16float(half_bits(2u * scales_offset + g)).x;
}

// The 4 signed int8 codes of one word (byte 0 first).
fn int8_codes(word: u32) -> vec4<f32> {
    // WGSL needs the parentheses: `a << b >> c` does not parse in Tint (naga accepts it).
    return vec4<f32>((vec4<i32>(bitcast<i32>(word)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// The block types' planes (src/quant/blocks.rs): low codes (4 words per 32-value chunk), high
// bits (1 word per chunk for the 5-bit types, 2 for Q6_K), then the parameters from
// scales_offset, which gives the chunk count and so where the high bits start.
fn hi_plane(scales_offset: u32) -> u32 {
    if WTYPE == WTYPE_Q6_K {
        return scales_offset / 6u * 4u;
    }
    return scales_offset / 5u * 4u;
}

fn is_5bit() -> bool {
    return WTYPE == WTYPE_Q5_0 || WTYPE == WTYPE_Q5_1 || WTYPE == WTYPE_Q5_K;
}

// Byte j of the bytes packed from word `at` on.
fn byte_at(at: u32, j: u32) -> u32 {
    return (w[at + j / 4u] >> ((j % 4u) * 8u)) & 0xffu;
}

// K-quant chunk g: (d * sc, dmin * mn) as ggml computes them (Q4_K, Q5_K).
fn kquant_params(g: u32, scales_offset: u32) -> vec2<f32> {
    let base = scales_offset + 5u * (g / 8u);
    let dm = unpack2x16float(w[base]);
    return vec2<f32>(dm.x * f32(byte_at(base + 1u, g % 8u)), dm.y * f32(byte_at(base + 3u, g % 8u)));
}

// Q6_K: d * sc of the 16 values that hold value e, as ggml computes it.
fn q6k_scale(e: u32, scales_offset: u32) -> f32 {
    let base = scales_offset + 5u * (e / 256u);
    let sc = bitcast<i32>(byte_at(base + 1u, (e % 256u) / 16u) << 24u) >> 24u;
    return unpack2x16float(w[base]).x * f32(sc);
}

// Element e (= row * cols + col) of the tensor, widened to f32.
fn load_weight(e: u32, scales_offset: u32) -> f32 {
    if WTYPE >= WTYPE_Q4_0 {
        // llama.cpp's blocks, with ggml's operations in ggml's order.
        let g = e >> 5u;
        var q = (w[e >> 3u] >> ((e & 7u) * 4u)) & 15u;
        if is_5bit() {
            q |= ((w[hi_plane(scales_offset) + g] >> (e & 31u)) & 1u) << 4u;
        }
        switch WTYPE {
            case WTYPE_Q4_0: {
                return f32(i32(q) - 8) * int8_scale(g, scales_offset);
            }
            case WTYPE_Q5_0: {
                return f32(i32(q) - 16) * int8_scale(g, scales_offset);
            }
            case WTYPE_Q5_1: {
                let dm = int4_params(g, scales_offset);
                return f32(q) * dm.x + dm.y;
            }
            case WTYPE_Q6_K: {
                let h = (w[hi_plane(scales_offset) + 2u * g + ((e & 31u) >> 4u)] >> (2u * (e & 15u))) & 3u;
                return q6k_scale(e, scales_offset) * f32(i32(q | (h << 4u)) - 32);
            }
            default: {
                let dm = kquant_params(g, scales_offset);
                return dm.x * f32(q) - dm.y;
            }
        }
    }
    switch WTYPE {
        case WTYPE_F16, WTYPE_BF16: {
            return half_value(e);
        }
        case WTYPE_INT4: {
            let q = (w[e >> 3u] >> ((e & 7u) * 4u)) & 15u;
            let sm = int4_params(e >> 5u, scales_offset);
            return f32(q) * sm.x + sm.y;
        }
        case WTYPE_INT8: {
            let q = bitcast<i32>(w[e >> 2u] << (24u - (e & 3u) * 8u)) >> 24u;
            return f32(q) * int8_scale(e >> 5u, scales_offset);
        }
        default: {
            return bitcast<f32>(w[e]);
        }
    }
}

// Dot product of 8 consecutive weights starting at element e (e % 8 == 0 for int4 and int8)
// with a, b.
fn dot8(e: u32, scales_offset: u32, a: vec4<f32>, b: vec4<f32>) -> f32 {
    switch WTYPE {
        case WTYPE_INT4: {
            let word = w[e >> 3u];
            let sm = int4_params(e >> 5u, scales_offset);
            return (dot(int4_lo(word), a) + dot(int4_hi(word), b)) * sm.x + dot(a + b, vec4<f32>(1.0)) * sm.y;
        }
        case WTYPE_INT8: {
            let i = e >> 2u;
            return (dot(int8_codes(w[i]), a) + dot(int8_codes(w[i + 1u]), b)) * int8_scale(e >> 5u, scales_offset);
        }
        case WTYPE_F16: {
            if (e & 1u) == 0u {
                let i = e >> 1u;
                let x0 = unpack2x16float(w[i]);
                let x1 = unpack2x16float(w[i + 1u]);
                let x2 = unpack2x16float(w[i + 2u]);
                let x3 = unpack2x16float(w[i + 3u]);
                return dot(vec4<f32>(x0, x1), a) + dot(vec4<f32>(x2, x3), b);
            }
        }
        case WTYPE_F32: {
            let lo = vec4<f32>(bitcast<f32>(w[e]), bitcast<f32>(w[e + 1u]), bitcast<f32>(w[e + 2u]), bitcast<f32>(w[e + 3u]));
            let hi = vec4<f32>(bitcast<f32>(w[e + 4u]), bitcast<f32>(w[e + 5u]), bitcast<f32>(w[e + 6u]), bitcast<f32>(w[e + 7u]));
            return dot(lo, a) + dot(hi, b);
        }
        default: {}
    }
    let lo = vec4<f32>(load_weight(e, scales_offset), load_weight(e + 1u, scales_offset),
                       load_weight(e + 2u, scales_offset), load_weight(e + 3u, scales_offset));
    let hi = vec4<f32>(load_weight(e + 4u, scales_offset), load_weight(e + 5u, scales_offset),
                       load_weight(e + 6u, scales_offset), load_weight(e + 7u, scales_offset));
    return dot(lo, a) + dot(hi, b);
}
