// matvec.wgsl: matrix-vector products y[m, out_offset + n] = sum_k x[m, k] * W[n, k] for one
// part of a packed weight W [n, k] and a few rows m of x (y rows are out_stride apart): one row
// in decode (MB = 1), short prompts in blocks of MB rows (each weight chunk read once per block).
//
// A workgroup of MV_WG threads is MV_WG / T teams of T lanes; each team computes NR rows. The
// row is read in chunks of 32 weights (one int4 or int8 group: one or two vec4<u32> loads and
// one scale load), lane l taking chunks l, l + T, ...: a team's lanes read consecutive 16-byte
// vectors of a row, and the 32 activations of a chunk are loaded once (eight vec4 loads) and
// kept in registers for the team's NR rows. One tree reduction over T lanes (log2 T barriers)
// serves all NR x MB outputs. Workgroups along z take successive blocks of MB rows of x; with
// MB > 1 a lane loads the chunk's activations of all MB rows first (MB x 32 registers), then
// reads and decodes each weight chunk once for all of them (`chunk_codes`). The
// launcher picks T from K so each lane takes a handful of chunks. Rows whose length is not a
// multiple of 32 (f32/f16/bf16 only) take an element-wise path.

override T: u32 = 4u;   // lanes per team: 4, 16 or 64
override NR: u32 = 8u;  // rows of W per team, at most MV_MAX_NR
override MB: u32 = 1u;  // rows of x per workgroup, at most MV_MAX_MB

@group(0) @binding(0) var<storage, read> x: array<f32>;          // [m, k]
@group(0) @binding(1) var<storage, read> w: array<u32>;          // packed [n, k]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;    // [m, out_stride]
@group(0) @binding(3) var<storage, read> xv: array<vec4<f32>>;   // x again, as vec4 (k % 32 == 0)
@group(0) @binding(4) var<storage, read> wv: array<vec4<u32>>;   // w again, as vec4
@group(0) @binding(5) var<uniform> p: Params;

var<workgroup> partial: array<array<f32, MV_WG>, MV_MAX_OUT>;

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

// Chunk c of row r dotted with the chunk's activations xc (sx: their sum, for the int4 min).
// Literal indices throughout: SwiftShader keeps loop-indexed local arrays in memory.
fn chunk_dot(ch: Chunk, xc: array<vec4<f32>, 8>, sx: f32) -> f32 {
    let d = dot(ch.v[0], xc[0]) + dot(ch.v[1], xc[1]) + dot(ch.v[2], xc[2]) + dot(ch.v[3], xc[3])
          + dot(ch.v[4], xc[4]) + dot(ch.v[5], xc[5]) + dot(ch.v[6], xc[6]) + dot(ch.v[7], xc[7]);
    return d * ch.sm.x + sx * ch.sm.y;
}

@compute @workgroup_size(MV_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let lane = lid % T;
    let team = lid / T;
    let row0 = (linear_group(wid, nwg) * (MV_WG / T) + team) * NR;
    let m0 = wid.z * MB;
    // acc[i * NR + r]: row m0 + i of x times row row0 + r of W.
    var acc: array<f32, MV_MAX_OUT>;
    if p.k % 32u == 0u && MB > 1u {
        // Several rows of x: the chunk's activations of every row are loaded first, then each
        // weight chunk is read and decoded once and used for all of them.
        for (var c = lane; c < p.k / 32u; c += T) {
            var xs: array<array<vec4<f32>, 8>, MV_MAX_MB>;
            var sx: array<f32, MV_MAX_MB>;
            for (var i = 0u; i < MB; i++) {
                if m0 + i < p.m {
                    let xb = ((m0 + i) * p.k) / 4u + 8u * c;
                    for (var j = 0u; j < 8u; j++) {
                        xs[i][j] = xv[xb + j];
                    }
                    let s4 = xs[i][0] + xs[i][1] + xs[i][2] + xs[i][3] + xs[i][4] + xs[i][5] + xs[i][6] + xs[i][7];
                    sx[i] = s4.x + s4.y + s4.z + s4.w;
                }
            }
            for (var r = 0u; r < NR; r++) {
                if row0 + r < p.n {
                    let ch = chunk_codes(row0 + r, c);
                    for (var i = 0u; i < MB; i++) {
                        acc[i * NR + r] += chunk_dot(ch, xs[i], sx[i]);
                    }
                }
            }
        }
    } else if p.k % 32u == 0u {
        for (var c = lane; c < p.k / 32u; c += T) {
            for (var i = 0u; i < MB; i++) {
                if m0 + i < p.m {
                    let xb = ((m0 + i) * p.k) / 4u + 8u * c;
                    var xc: array<vec4<f32>, 8>;
                    for (var j = 0u; j < 8u; j++) {
                        xc[j] = xv[xb + j];
                    }
                    let s4 = xc[0] + xc[1] + xc[2] + xc[3] + xc[4] + xc[5] + xc[6] + xc[7];
                    let sx = s4.x + s4.y + s4.z + s4.w;
                    for (var r = 0u; r < NR; r++) {
                        if row0 + r < p.n {
                            acc[i * NR + r] += chunk_dot(chunk_codes(row0 + r, c), xc, sx);
                        }
                    }
                }
            }
        }
    } else {
        for (var k = lane; k < p.k; k += T) {
            for (var i = 0u; i < MB; i++) {
                if m0 + i < p.m {
                    let xk = x[(m0 + i) * p.k + k];
                    for (var r = 0u; r < NR; r++) {
                        if row0 + r < p.n {
                            acc[i * NR + r] += xk * load_weight((row0 + r) * p.k + k, p.scales_offset);
                        }
                    }
                }
            }
        }
    }
    let outs = MB * NR;
    for (var o = 0u; o < outs; o++) {
        partial[o][lid] = acc[o];
    }
    workgroupBarrier();
    for (var stride = T / 2u; stride > 0u; stride >>= 1u) {
        if lane < stride {
            for (var o = 0u; o < outs; o++) {
                partial[o][lid] += partial[o][lid + stride];
            }
        }
        workgroupBarrier();
    }
    // The team's first lane holds each sum; its lanes write them out.
    for (var o = lane; o < outs; o += T) {
        let m = m0 + o / NR;
        let row = row0 + o % NR;
        if m < p.m && row < p.n {
            y[m * p.out_stride + p.out_offset + row] = partial[o][lid - lane];
        }
    }
}
