// matmul.wgsl: prefill matrix product y[m, out_offset + n] = sum_k x[m, k] * W[n, k] for one
// part of a packed weight W [n, k]; y rows are out_stride apart.
//
// Each workgroup computes a 64 x 64 tile of y (MATMUL_TILE rows of x by MATMUL_TILE rows of W)
// with 8 x 8 invocations, each holding an 8 x 8 block in registers (four 4 x 4 matrices).
// K is walked in slices of MATMUL_BK: per slice the workgroup stages x and W in workgroup
// memory as vec4 (4 rows at one column each; 2 x 4 KiB in all), decoding each weight once,
// then every invocation does MATMUL_BK steps of 4 vec4 reads and 64 multiply-adds.
// Two barriers per slice.
//
// Rows of x or W past the end are read clamped (their results are never stored) and columns
// past K read as 0, so no load is branched around. int4/int8 weights have K % 32 == 0.

const TILE: u32 = MATMUL_TILE;
const BK: u32 = MATMUL_BK;
const Q: u32 = MATMUL_TILE / 4u; // 4-row quads per tile side
const_assert MATMUL_TILE == 64u && MATMUL_BK % 16u == 0u && MATMUL_WG == 64u;

@group(0) @binding(0) var<storage, read> x: array<f32>;        // [m, k]
@group(0) @binding(1) var<storage, read> w: array<u32>;        // packed [n, k]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;  // [m, out_stride]
@group(0) @binding(3) var<uniform> p: Params;

// xs[kk * Q + i]: x rows 4i..4i+3 of the tile at column k0 + kk; ws likewise for W.
var<workgroup> xs: array<vec4<f32>, BK * Q>;
var<workgroup> ws: array<vec4<f32>, BK * Q>;

// Invocation (tx, ty) owns x quads ty and ty + 8 and W quads tx and tx + 8: c[i][j] holds
// y[x quad i, W quad j], column r of the matrix being x row r of the quad.
struct Acc {
    c00: mat4x4<f32>,
    c01: mat4x4<f32>,
    c10: mat4x4<f32>,
    c11: mat4x4<f32>,
}

fn outer(a: vec4<f32>, b: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(a.x * b, a.y * b, a.z * b, a.w * b);
}

fn step(acc: ptr<function, Acc>, kk: u32, ty: u32, tx: u32) {
    let a0 = xs[kk * Q + ty];
    let a1 = xs[kk * Q + ty + 8u];
    let b0 = ws[kk * Q + tx];
    let b1 = ws[kk * Q + tx + 8u];
    (*acc).c00 += outer(a0, b0);
    (*acc).c01 += outer(a0, b1);
    (*acc).c10 += outer(a1, b0);
    (*acc).c11 += outer(a1, b1);
}

// Weight element (row, k) of the tile, row clamped to the last row and 0 past K.
fn weight_at(row: u32, k: u32) -> f32 {
    let v = load_weight((min(row, p.n - 1u) + p.w_row0) * p.k + min(k, p.k - 1u), p.scales_offset);
    return select(0.0, v, k < p.k);
}

// Rows row..row + 3 of W, clamped to the last row, as rows of the bound buffer.
fn rows4(row: u32) -> vec4<u32> {
    return min(vec4<u32>(row) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u)) + vec4<u32>(p.w_row0);
}

// Stages the W slice at k0 word by word: each weight word is read once and decoded in
// registers, and the 4 rows of a quad are transposed into columns (`ws` holds 4 rows per
// column). Units are (quad, word column); 64 invocations share them.
fn stage_w(k0: u32, n0: u32, lid: u32) {
    switch WTYPE {
        case WTYPE_INT4: {
            // Q quads x BK / 8 words, each 4 words and 4 scales -> 8 columns.
            for (var u = lid; u < Q * BK / 8u; u += MATMUL_WG) {
                let q = u / (BK / 8u);
                let c = (u % (BK / 8u)) * 8u;
                let r = rows4(n0 + 4u * q) * p.k + k0 + c;
                let wd = vec4<u32>(w[r.x >> 3u], w[r.y >> 3u], w[r.z >> 3u], w[r.w >> 3u]);
                let s0 = int4_params(r.x >> 5u, p.scales_offset);
                let s1 = int4_params(r.y >> 5u, p.scales_offset);
                let s2 = int4_params(r.z >> 5u, p.scales_offset);
                let s3 = int4_params(r.w >> 5u, p.scales_offset);
                let lo = transpose(mat4x4<f32>(int4_lo(wd.x) * s0.x + s0.y, int4_lo(wd.y) * s1.x + s1.y,
                                               int4_lo(wd.z) * s2.x + s2.y, int4_lo(wd.w) * s3.x + s3.y));
                let hi = transpose(mat4x4<f32>(int4_hi(wd.x) * s0.x + s0.y, int4_hi(wd.y) * s1.x + s1.y,
                                               int4_hi(wd.z) * s2.x + s2.y, int4_hi(wd.w) * s3.x + s3.y));
                for (var j = 0u; j < 4u; j++) {
                    ws[(c + j) * Q + q] = lo[j];
                    ws[(c + 4u + j) * Q + q] = hi[j];
                }
            }
        }
        case WTYPE_INT8: {
            // Q quads x BK / 4 words, each 4 words and 4 scales -> 4 columns.
            for (var u = lid; u < Q * BK / 4u; u += MATMUL_WG) {
                let q = u / (BK / 4u);
                let c = (u % (BK / 4u)) * 4u;
                let r = rows4(n0 + 4u * q) * p.k + k0 + c;
                let wd = vec4<u32>(w[r.x >> 2u], w[r.y >> 2u], w[r.z >> 2u], w[r.w >> 2u]);
                let t = transpose(mat4x4<f32>(int8_codes(wd.x) * int8_scale(r.x >> 5u, p.scales_offset),
                                              int8_codes(wd.y) * int8_scale(r.y >> 5u, p.scales_offset),
                                              int8_codes(wd.z) * int8_scale(r.z >> 5u, p.scales_offset),
                                              int8_codes(wd.w) * int8_scale(r.w >> 5u, p.scales_offset)));
                for (var j = 0u; j < 4u; j++) {
                    ws[(c + j) * Q + q] = t[j];
                }
            }
        }
        default: {
            // Floats, element by element: Q quads x BK columns.
            for (var u = lid; u < Q * BK; u += MATMUL_WG) {
                let q = u / BK;
                let kk = u % BK;
                let wr = n0 + 4u * q;
                let gk = k0 + kk;
                ws[kk * Q + q] = vec4<f32>(weight_at(wr, gk), weight_at(wr + 1u, gk), weight_at(wr + 2u, gk), weight_at(wr + 3u, gk));
            }
        }
    }
}

// Stages the x slice at k0: invocation (q, kk) loads x quads q, q + 4, .. at column k0 + kk
// (adjacent invocations read adjacent columns).
fn stage_x(k0: u32, m0: u32, lid: u32) {
    let kk = lid % BK;
    let gk = k0 + kk;
    let ck = min(gk, p.k - 1u);
    for (var q = lid / BK; q < Q; q += MATMUL_WG / BK) {
        let r = min(vec4<u32>(m0 + 4u * q) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.m - 1u)) * p.k + ck;
        xs[kk * Q + q] = select(vec4<f32>(0.0), vec4<f32>(x[r.x], x[r.y], x[r.z], x[r.w]), gk < p.k);
    }
}

// Stores the 4 x 4 block c (x quad at row gm, W quad at column gn), clipped to m x n.
fn store(c: mat4x4<f32>, gm: u32, gn: u32) {
    for (var i = 0u; i < 4u; i++) {
        let row = c[i];
        for (var j = 0u; j < 4u; j++) {
            if gm + i < p.m && gn + j < p.n {
                y[(gm + i) * p.out_stride + p.out_offset + gn + j] = epilogue(row[j]);
            }
        }
    }
}

@compute @workgroup_size(8, 8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let m0 = wid.y * TILE;
    let n0 = wid.x * TILE;
    let z = mat4x4<f32>();
    var acc = Acc(z, z, z, z);
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        stage_x(k0, m0, lid);
        stage_w(k0, n0, lid);
        workgroupBarrier();
        // Unrolled by four: llvmpipe counts every loop iteration of an invocation against one
        // shared budget of 65535 (README.md, "A note on lavapipe").
        for (var s = 0u; s < BK; s += 4u) {
            step(&acc, s, lid3.y, lid3.x);
            step(&acc, s + 1u, lid3.y, lid3.x);
            step(&acc, s + 2u, lid3.y, lid3.x);
            step(&acc, s + 3u, lid3.y, lid3.x);
        }
        workgroupBarrier();
    }
    let gm = m0 + 4u * lid3.y;
    let gn = n0 + 4u * lid3.x;
    store(acc.c00, gm, gn);
    store(acc.c01, gm, gn + 32u);
    store(acc.c10, gm + 32u, gn);
    store(acc.c11, gm + 32u, gn + 32u);
}
