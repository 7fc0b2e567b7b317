// packed.wgsl: reading packed weights (prepended to kernels that read weights).
// The including shader declares `w: array<u32>` (one part of a packed [rows, cols] tensor).
// Layouts are defined and documented in src/quant.rs; WTYPE selects one at pipeline creation.

override WTYPE: u32 = WTYPE_F32; // WTYPE_F32, _F16, _BF16, _INT4 (affine), _INT8 (groups of 32)

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

// Element e (= row * cols + col) of the tensor, widened to f32.
fn load_weight(e: u32, scales_offset: u32) -> f32 {
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
