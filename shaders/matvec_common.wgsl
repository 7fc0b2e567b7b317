// matvec_common.wgsl: the pieces of the matrix-vector kernels (matvec.wgsl and the fused
// matvec_geglu.wgsl, matvec_qkv.wgsl; prepended to them): a 32-weight chunk of a packed row
// decoded and dotted with x, and the team reduction. The including kernel declares
// `xv: array<vec4<f32>>` (x), `w: array<u32>` and `wv: array<vec4<u32>>` (the weight) and a
// uniform `p` with fields `k` (row length, a multiple of 32 on the chunked paths) and
// `scales_offset`, and the override `T` (lanes per team). The team reduction (`team_sum`) and
// the invocation's place in its team (`Invocation`, `thread_index`) come from team_plain.wgsl
// or team_subgroup.wgsl, whichever the device allows (appended by `Shader::source_for`).

// Chunk c (weights 32c..32c+31) of row r, decoded: its 32 codes (or values for the float
// types), and (scale, min) so that chunk . x = (codes . x) * scale + sum(x) * min. Group
// g = r * k / 32 + c: int4 keeps a chunk in one vec4<u32>, int8 in two, f16/bf16 in four, f32
// in eight.
struct Chunk {
    v: array<vec4<f32>, 8>,
    sm: vec2<f32>,
}

fn chunk_codes(r: u32, c: u32) -> Chunk {
    let g = r * (p.k / 32u) + c;
    var ch: Chunk;
    ch.sm = vec2<f32>(1.0, 0.0);
    switch WTYPE {
        case WTYPE_INT4: {
            let q = wv[g];
            ch.sm = int4_params(g, p.scales_offset);
            ch.v = array<vec4<f32>, 8>(int4_lo(q.x), int4_hi(q.x), int4_lo(q.y), int4_hi(q.y),
                                       int4_lo(q.z), int4_hi(q.z), int4_lo(q.w), int4_hi(q.w));
        }
        case WTYPE_INT8: {
            let a = wv[2u * g];
            let b = wv[2u * g + 1u];
            ch.sm = vec2<f32>(int8_scale(g, p.scales_offset), 0.0);
            ch.v = array<vec4<f32>, 8>(int8_codes(a.x), int8_codes(a.y), int8_codes(a.z), int8_codes(a.w),
                                       int8_codes(b.x), int8_codes(b.y), int8_codes(b.z), int8_codes(b.w));
        }
        case WTYPE_Q4_0, WTYPE_Q5_0, WTYPE_Q5_1, WTYPE_Q4_K, WTYPE_Q5_K, WTYPE_Q6_K: {
            let q = wv[g];
            ch.v = array<vec4<f32>, 8>(int4_lo(q.x), int4_hi(q.x), int4_lo(q.y), int4_hi(q.y),
                                       int4_lo(q.z), int4_hi(q.z), int4_lo(q.w), int4_hi(q.w));
            block_chunk(&ch, g);
        }
        case WTYPE_F16, WTYPE_BF16: {
            for (var j = 0u; j < 4u; j++) {
                let q = wv[4u * g + j];
                if WTYPE == WTYPE_BF16 {
                    ch.v[2u * j] = bitcast<vec4<f32>>(vec4<u32>(q.x << 16u, q.x & 0xffff0000u, q.y << 16u, q.y & 0xffff0000u));
                    ch.v[2u * j + 1u] = bitcast<vec4<f32>>(vec4<u32>(q.z << 16u, q.z & 0xffff0000u, q.w << 16u, q.w & 0xffff0000u));
                } else {
                    ch.v[2u * j] = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
                    ch.v[2u * j + 1u] = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
                }
            }
        }
        default: {
            for (var j = 0u; j < 8u; j++) {
                ch.v[j] = bitcast<vec4<f32>>(wv[8u * g + j]);
            }
        }
    }
    return ch;
}

// Bits s..s+3 of h (one per value), and 2-bit fields s..s+3 of h.
fn bits4(h: u32, s: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(h) >> (vec4<u32>(s) + vec4<u32>(0u, 1u, 2u, 3u))) & vec4<u32>(1u));
}

fn crumbs4(h: u32, s: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(h) >> (vec4<u32>(2u * s) + vec4<u32>(0u, 2u, 4u, 6u))) & vec4<u32>(3u));
}

// A block type's chunk g, its low codes already in ch.v: the high bits added, and the
// parameters as (scale, min), the offsets of Q4_0/Q5_0 folded into the min and Q6_K's two
// sub-block scales into the codes (whose differences from ggml's order of operations only
// reorder a dot product's rounding, as every chunk_dot does).
fn block_chunk(ch: ptr<function, Chunk>, g: u32) {
    let so = p.scales_offset;
    if is_5bit() {
        let h = w[hi_plane(so) + g];
        (*ch).v[0] += 16.0 * bits4(h, 0u);
        (*ch).v[1] += 16.0 * bits4(h, 4u);
        (*ch).v[2] += 16.0 * bits4(h, 8u);
        (*ch).v[3] += 16.0 * bits4(h, 12u);
        (*ch).v[4] += 16.0 * bits4(h, 16u);
        (*ch).v[5] += 16.0 * bits4(h, 20u);
        (*ch).v[6] += 16.0 * bits4(h, 24u);
        (*ch).v[7] += 16.0 * bits4(h, 28u);
    }
    switch WTYPE {
        case WTYPE_Q4_0: {
            let d = int8_scale(g, so);
            (*ch).sm = vec2<f32>(d, -8.0 * d);
        }
        case WTYPE_Q5_0: {
            let d = int8_scale(g, so);
            (*ch).sm = vec2<f32>(d, -16.0 * d);
        }
        case WTYPE_Q5_1: {
            (*ch).sm = int4_params(g, so);
        }
        case WTYPE_Q6_K: {
            let hp = hi_plane(so) + 2u * g;
            let h0 = w[hp];
            let h1 = w[hp + 1u];
            let base = so + 5u * (g / 8u);
            let j = 2u * (g % 8u);
            let s0 = f32(bitcast<i32>(byte_at(base + 1u, j) << 24u) >> 24u);
            let s1 = f32(bitcast<i32>(byte_at(base + 1u, j + 1u) << 24u) >> 24u);
            (*ch).v[0] = s0 * ((*ch).v[0] + 16.0 * crumbs4(h0, 0u) - 32.0);
            (*ch).v[1] = s0 * ((*ch).v[1] + 16.0 * crumbs4(h0, 4u) - 32.0);
            (*ch).v[2] = s0 * ((*ch).v[2] + 16.0 * crumbs4(h0, 8u) - 32.0);
            (*ch).v[3] = s0 * ((*ch).v[3] + 16.0 * crumbs4(h0, 12u) - 32.0);
            (*ch).v[4] = s1 * ((*ch).v[4] + 16.0 * crumbs4(h1, 0u) - 32.0);
            (*ch).v[5] = s1 * ((*ch).v[5] + 16.0 * crumbs4(h1, 4u) - 32.0);
            (*ch).v[6] = s1 * ((*ch).v[6] + 16.0 * crumbs4(h1, 8u) - 32.0);
            (*ch).v[7] = s1 * ((*ch).v[7] + 16.0 * crumbs4(h1, 12u) - 32.0);
            (*ch).sm = vec2<f32>(unpack2x16float(w[base]).x, 0.0);
        }
        default: {
            let dm = kquant_params(g, so);
            (*ch).sm = vec2<f32>(dm.x, -dm.y);
        }
    }
}

// Chunk c of row r dotted with the chunk's activations xc (sx: their sum, for the int4 min).
// Literal indices throughout: SwiftShader keeps loop-indexed local arrays in memory.
fn chunk_dot(ch: Chunk, xc: array<vec4<f32>, 8>, sx: f32) -> f32 {
    let d = dot(ch.v[0], xc[0]) + dot(ch.v[1], xc[1]) + dot(ch.v[2], xc[2]) + dot(ch.v[3], xc[3])
          + dot(ch.v[4], xc[4]) + dot(ch.v[5], xc[5]) + dot(ch.v[6], xc[6]) + dot(ch.v[7], xc[7]);
    return d * ch.sm.x + sx * ch.sm.y;
}

// The 32 activations of chunk c of row m of x (eight vec4 loads).
fn x_chunk(m: u32, c: u32) -> array<vec4<f32>, 8> {
    let b = (m * p.k) / 4u + 8u * c;
    return array<vec4<f32>, 8>(xv[b], xv[b + 1u], xv[b + 2u], xv[b + 3u], xv[b + 4u], xv[b + 5u], xv[b + 6u], xv[b + 7u]);
}

fn x_sum(xc: array<vec4<f32>, 8>) -> f32 {
    let s4 = xc[0] + xc[1] + xc[2] + xc[3] + xc[4] + xc[5] + xc[6] + xc[7];
    return s4.x + s4.y + s4.z + s4.w;
}
