// matvec.wgsl: matrix-vector products y[m, out_offset + n] = sum_k x[m, k] * W[n, k] for one
// part of a packed weight W [n, k] and a few rows m of x (y rows are out_stride apart): one row
// in decode (MB = 1), short prompts in blocks of MB rows (each weight chunk read once per block).
//
// A workgroup of MV_WG threads is MV_WG / T teams of T lanes; each team computes MV_NR = 8
// rows of W. A row is read in chunks of 32 weights (one int4 or int8 group: one or two
// vec4<u32> loads and one scale load), lane l taking chunks l, l + T, ...: a team's lanes read
// consecutive 16-byte vectors of a row, and the 32 activations of a chunk are loaded once (eight
// vec4 loads) and kept in registers for the team's 8 rows, which accumulate in two vec4. With
// MB = MV_MB = 4 (workgroups along z take successive blocks of 4 rows of x) a lane loads the
// chunk's activations of all 4 rows first, then reads and decodes each weight chunk once for
// all of them (`block_dot`), accumulating one vec4 (over x's rows) per row of W. The launcher
// picks T from K so each lane takes a handful of chunks. Rows whose length is not a multiple of
// 32 (f32/f16/bf16 only) take an element-wise path.
//
// The lanes' sums meet in a 2 KiB workgroup scratch, one pair of vec4 per lane at a time
// (`team_sum`: one round for MB = 1, four for MB = 4). The kernel is written without
// loop-indexed local arrays and with a small scratch because both cost on emulators: SwiftShader
// keeps such arrays in memory and pays per byte for WebGPU's zero-fill of workgroup memory (an
// 8 KiB scratch made its LM head 1.7x slower); a real GPU fits more workgroups per core.

override T: u32 = 4u;   // lanes per team: 4, 16 or 64
override MB: u32 = 1u;  // rows of x per workgroup: 1 or MV_MB

@group(0) @binding(0) var<storage, read> x: array<f32>;          // [m, k]
@group(0) @binding(1) var<storage, read> w: array<u32>;          // packed [n, k]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;    // [m, out_stride]
@group(0) @binding(3) var<storage, read> xv: array<vec4<f32>>;   // x again, as vec4 (k % 32 == 0)
@group(0) @binding(4) var<storage, read> wv: array<vec4<u32>>;   // w again, as vec4
@group(0) @binding(5) var<uniform> p: Params;

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

// The 32 activations of chunk c of row m of x (eight vec4 loads).
fn x_chunk(m: u32, c: u32) -> array<vec4<f32>, 8> {
    let b = (m * p.k) / 4u + 8u * c;
    return array<vec4<f32>, 8>(xv[b], xv[b + 1u], xv[b + 2u], xv[b + 3u], xv[b + 4u], xv[b + 5u], xv[b + 6u], xv[b + 7u]);
}

fn x_sum(xc: array<vec4<f32>, 8>) -> f32 {
    let s4 = xc[0] + xc[1] + xc[2] + xc[3] + xc[4] + xc[5] + xc[6] + xc[7];
    return s4.x + s4.y + s4.z + s4.w;
}

// One chunk of the MV_MB rows of x of a block, and their sums.
struct XBlock {
    x0: array<vec4<f32>, 8>,
    x1: array<vec4<f32>, 8>,
    x2: array<vec4<f32>, 8>,
    x3: array<vec4<f32>, 8>,
    s: vec4<f32>,
}

// Chunk c of row r decoded once, dotted with the block's MV_MB rows of x.
fn block_dot(r: u32, c: u32, xb: XBlock) -> vec4<f32> {
    let ch = chunk_codes(r, c);
    return vec4<f32>(chunk_dot(ch, xb.x0, xb.s.x), chunk_dot(ch, xb.x1, xb.s.y),
                     chunk_dot(ch, xb.x2, xb.s.z), chunk_dot(ch, xb.x3, xb.s.w));
}

const_assert MV_NR == 8u && MV_MB == 4u;  // written out below as two vec4 / four rows

// The cross-lane reduction's scratch: one pair of vec4 per invocation (2 KiB). It is kept this
// small on purpose: WebGPU zero-fills workgroup memory before every workgroup, and emulators
// (SwiftShader) pay for that per byte, while a real GPU fits more workgroups per core.
var<workgroup> red: array<array<vec4<f32>, MV_WG>, 2>;

struct Pair {
    a: vec4<f32>,
    b: vec4<f32>,
}

// a and b summed over the T lanes of this invocation's team (a tree: 1 + log2 T barriers),
// returned to every lane of the team. Called in uniform control flow; a second call needs a
// barrier first (the team's lanes read the first lane's slots last).
fn team_sum(a: vec4<f32>, b: vec4<f32>, lid: u32, lane: u32) -> Pair {
    red[0][lid] = a;
    red[1][lid] = b;
    workgroupBarrier();
    for (var stride = T / 2u; stride > 0u; stride >>= 1u) {
        if lane < stride {
            red[0][lid] += red[0][lid + stride];
            red[1][lid] += red[1][lid + stride];
        }
        workgroupBarrier();
    }
    return Pair(red[0][lid - lane], red[1][lid - lane]);
}

fn put(m: u32, row: u32, v: f32) {
    if m < p.m && row < p.n {
        y[m * p.out_stride + p.out_offset + row] = epilogue(v);
    }
}

// One row of x: a holds the team's rows 0-3, b rows 4-7; lanes 0-3 write one of each.
fn finish_one(a: vec4<f32>, b: vec4<f32>, m: u32, row0: u32, lid: u32, lane: u32) {
    let s = team_sum(a, b, lid, lane);
    if lane < 4u {
        put(m, row0 + lane, s.a[lane]);
        put(m, row0 + 4u + lane, s.b[lane]);
    }
}

// A block of MV_MB rows of x: a and b hold rows r and r + 1 of the team for the block's four
// rows of x; lane i < 4 writes row i of x's pair.
fn finish_block(a: vec4<f32>, b: vec4<f32>, m0: u32, row: u32, lid: u32, lane: u32) {
    let s = team_sum(a, b, lid, lane);
    if lane < 4u {
        put(m0 + lane, row, s.a[lane]);
        put(m0 + lane, row + 1u, s.b[lane]);
    }
}

@compute @workgroup_size(MV_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let lane = lid % T;
    let team = lid / T;
    let row0 = (linear_group(wid, nwg) * (MV_WG / T) + team) * MV_NR;
    let m0 = wid.z * MB;
    // Rows past the end of W or x are read clamped (in bounds, no branch) and never written.
    let last_n = p.n - 1u;
    let last_m = p.m - 1u;
    let r0 = min(row0, last_n);
    let r1 = min(row0 + 1u, last_n);
    let r2 = min(row0 + 2u, last_n);
    let r3 = min(row0 + 3u, last_n);
    let r4 = min(row0 + 4u, last_n);
    let r5 = min(row0 + 5u, last_n);
    let r6 = min(row0 + 6u, last_n);
    let r7 = min(row0 + 7u, last_n);
    let chunks = p.k / 32u;
    if p.k % 32u == 0u && MB > 1u {
        // A block of rows of x: the chunk's activations of each are loaded first, then each
        // weight chunk is read and decoded once and used for all of them.
        var a0 = vec4<f32>();
        var a1 = vec4<f32>();
        var a2 = vec4<f32>();
        var a3 = vec4<f32>();
        var a4 = vec4<f32>();
        var a5 = vec4<f32>();
        var a6 = vec4<f32>();
        var a7 = vec4<f32>();
        for (var c = lane; c < chunks; c += T) {
            var xb: XBlock;
            xb.x0 = x_chunk(min(m0, last_m), c);
            xb.x1 = x_chunk(min(m0 + 1u, last_m), c);
            xb.x2 = x_chunk(min(m0 + 2u, last_m), c);
            xb.x3 = x_chunk(min(m0 + 3u, last_m), c);
            xb.s = vec4<f32>(x_sum(xb.x0), x_sum(xb.x1), x_sum(xb.x2), x_sum(xb.x3));
            a0 += block_dot(r0, c, xb);
            a1 += block_dot(r1, c, xb);
            a2 += block_dot(r2, c, xb);
            a3 += block_dot(r3, c, xb);
            a4 += block_dot(r4, c, xb);
            a5 += block_dot(r5, c, xb);
            a6 += block_dot(r6, c, xb);
            a7 += block_dot(r7, c, xb);
        }
        finish_block(a0, a1, m0, row0, lid, lane);
        workgroupBarrier();
        finish_block(a2, a3, m0, row0 + 2u, lid, lane);
        workgroupBarrier();
        finish_block(a4, a5, m0, row0 + 4u, lid, lane);
        workgroupBarrier();
        finish_block(a6, a7, m0, row0 + 6u, lid, lane);
    } else if p.k % 32u == 0u {
        // One row of x (decode): the team's eight rows accumulate in two vec4.
        let m = min(m0, last_m);
        var lo = vec4<f32>();
        var hi = vec4<f32>();
        for (var c = lane; c < chunks; c += T) {
            let xc = x_chunk(m, c);
            let sx = x_sum(xc);
            lo += vec4<f32>(chunk_dot(chunk_codes(r0, c), xc, sx), chunk_dot(chunk_codes(r1, c), xc, sx),
                            chunk_dot(chunk_codes(r2, c), xc, sx), chunk_dot(chunk_codes(r3, c), xc, sx));
            hi += vec4<f32>(chunk_dot(chunk_codes(r4, c), xc, sx), chunk_dot(chunk_codes(r5, c), xc, sx),
                            chunk_dot(chunk_codes(r6, c), xc, sx), chunk_dot(chunk_codes(r7, c), xc, sx));
        }
        finish_one(lo, hi, m0, row0, lid, lane);
    } else {
        // Rows whose length is not a multiple of 32 (float types only), element by element,
        // into the same layout: MB = 1: acc[0] rows 0-3, acc[1] rows 4-7; else acc[r] row r.
        var acc: array<vec4<f32>, MV_NR>;
        for (var k = lane; k < p.k; k += T) {
            for (var i = 0u; i < MB; i++) {
                let xk = x[min(m0 + i, last_m) * p.k + k];
                for (var r = 0u; r < MV_NR; r++) {
                    let wk = xk * load_weight(min(row0 + r, last_n) * p.k + k, p.scales_offset);
                    if MB == 1u {
                        acc[r / 4u][r % 4u] += wk;
                    } else {
                        acc[r][i] += wk;
                    }
                }
            }
        }
        if MB == 1u {
            finish_one(acc[0], acc[1], m0, row0, lid, lane);
        } else {
            for (var r = 0u; r < MV_NR; r += 2u) {
                workgroupBarrier();
                finish_block(acc[r], acc[r + 1u], m0, row0 + r, lid, lane);
            }
        }
    }
}
