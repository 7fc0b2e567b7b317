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
// The lanes' sums meet through `team_sum` (one round for MB = 1, four for MB = 4): subgroup
// shuffles where the device has subgroups (team_subgroup.wgsl), else a 2 KiB workgroup scratch,
// one pair of vec4 per lane at a time (team_plain.wgsl). The kernel is written without
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

fn put(m: u32, row: u32, v: f32) {
    if m < p.m && row < p.n {
        y[m * p.out_stride + p.out_offset + row] = epilogue(v);
    }
}

// One row of x: a holds the team's rows 0-3, b rows 4-7; lanes 0-3 write one of each.
fn finish_one(a: vec4<f32>, b: vec4<f32>, m: u32, row0: u32, inv: Invocation, lane: u32) {
    let s = team_sum(a, b, inv, lane);
    if lane < 4u {
        put(m, row0 + lane, s.a[lane]);
        put(m, row0 + 4u + lane, s.b[lane]);
    }
}

// A block of MV_MB rows of x: a and b hold rows r and r + 1 of the team for the block's four
// rows of x; lane i < 4 writes row i of x's pair.
fn finish_block(a: vec4<f32>, b: vec4<f32>, m0: u32, row: u32, inv: Invocation, lane: u32) {
    let s = team_sum(a, b, inv, lane);
    if lane < 4u {
        put(m0 + lane, row, s.a[lane]);
        put(m0 + lane, row + 1u, s.b[lane]);
    }
}

@compute @workgroup_size(MV_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        inv: Invocation) {
    let lid = thread_index(inv);
    let lane = lid % T;
    let team = lid / T;
    let row0 = (linear_group(wid, nwg) * (MV_WG / T) + team) * MV_NR;
    let m0 = wid.z * MB;
    // Rows past the end of W or x are read clamped (in bounds, no branch) and never written;
    // r0..r7 are rows of the bound buffer (W starts at its row w_row0).
    let last_n = p.n - 1u;
    let last_m = p.m - 1u;
    let r0 = min(row0, last_n) + p.w_row0;
    let r1 = min(row0 + 1u, last_n) + p.w_row0;
    let r2 = min(row0 + 2u, last_n) + p.w_row0;
    let r3 = min(row0 + 3u, last_n) + p.w_row0;
    let r4 = min(row0 + 4u, last_n) + p.w_row0;
    let r5 = min(row0 + 5u, last_n) + p.w_row0;
    let r6 = min(row0 + 6u, last_n) + p.w_row0;
    let r7 = min(row0 + 7u, last_n) + p.w_row0;
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
        finish_block(a0, a1, m0, row0, inv, lane);
        workgroupBarrier();
        finish_block(a2, a3, m0, row0 + 2u, inv, lane);
        workgroupBarrier();
        finish_block(a4, a5, m0, row0 + 4u, inv, lane);
        workgroupBarrier();
        finish_block(a6, a7, m0, row0 + 6u, inv, lane);
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
        finish_one(lo, hi, m0, row0, inv, lane);
    } else {
        // Rows whose length is not a multiple of 32 (float types only), element by element,
        // into the same layout: MB = 1: acc[0] rows 0-3, acc[1] rows 4-7; else acc[r] row r.
        var acc: array<vec4<f32>, MV_NR>;
        for (var k = lane; k < p.k; k += T) {
            for (var i = 0u; i < MB; i++) {
                let xk = x[min(m0 + i, last_m) * p.k + k];
                for (var r = 0u; r < MV_NR; r++) {
                    let wk = xk * load_weight((min(row0 + r, last_n) + p.w_row0) * p.k + k, p.scales_offset);
                    if MB == 1u {
                        acc[r / 4u][r % 4u] += wk;
                    } else {
                        acc[r][i] += wk;
                    }
                }
            }
        }
        if MB == 1u {
            finish_one(acc[0], acc[1], m0, row0, inv, lane);
        } else {
            for (var r = 0u; r < MV_NR; r += 2u) {
                workgroupBarrier();
                finish_block(acc[r], acc[r + 1u], m0, row0 + r, inv, lane);
            }
        }
    }
}
