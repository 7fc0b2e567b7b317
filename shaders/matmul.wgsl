// matmul.wgsl: prefill matrix product y[m, out_offset + n] = sum_k x[m, k] * W[n, k] for one
// part of a packed weight W [n, k]; y rows are out_stride apart. Workgroup tiles of
// BM x BN outputs (16 x 16 threads, TM x 4 each), K walked in BK-wide slices through workgroup
// memory (8 KiB). Any m, n, k: out-of-range tile entries load as 0 and are not stored.
// TM = 4 (64-row tiles) for long prompts; TM = 1 (16-row tiles) wastes less on short ones.

override TM: u32 = 4u;
const BN: u32 = MATMUL_TILE;
const BK: u32 = MATMUL_BK;

@group(0) @binding(0) var<storage, read> x: array<f32>;        // [m, k]
@group(0) @binding(1) var<storage, read> w: array<u32>;        // packed [n, k]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;  // [m, out_stride]
@group(0) @binding(3) var<uniform> p: Params;

var<workgroup> xs: array<f32, 1024>; // [BK][16 * TM]
var<workgroup> ws: array<f32, 1024>; // [BK][BN]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let bm = 16u * TM;
    let m0 = wid.y * bm;
    let n0 = wid.x * BN;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var i = 0u; i < 4u; i++) {
            let idx = lid + i * WG;
            let r = idx / BK;
            let kk = idx % BK;
            let gk = k0 + kk;
            if i < TM {
                var xv = 0.0;
                if m0 + r < p.m && gk < p.k {
                    xv = x[(m0 + r) * p.k + gk];
                }
                xs[kk * bm + r] = xv;
            }
            // int4 tiles are decoded a word (8 values) at a time below.
            if WTYPE != 3u {
                var wv = 0.0;
                if n0 + r < p.n && gk < p.k {
                    wv = load_weight((n0 + r) * p.k + gk, p.scales_offset);
                }
                ws[kk * BN + r] = wv;
            }
        }
        if WTYPE == WTYPE_INT4 && lid < 128u {
            // 64 rows x 16 values = 128 words; K % 32 == 0, so a word never crosses K.
            let r = lid / 2u;
            let kk0 = (lid % 2u) * 8u;
            var lo = vec4<f32>(0.0);
            var hi = vec4<f32>(0.0);
            if n0 + r < p.n && k0 + kk0 < p.k {
                let e = (n0 + r) * p.k + k0 + kk0;
                let word = w[e >> 3u];
                let sm = int4_params(e >> 5u, p.scales_offset);
                lo = int4_lo(word) * sm.x + sm.y;
                hi = int4_hi(word) * sm.x + sm.y;
            }
            ws[kk0 * BN + r] = lo.x;
            ws[(kk0 + 1u) * BN + r] = lo.y;
            ws[(kk0 + 2u) * BN + r] = lo.z;
            ws[(kk0 + 3u) * BN + r] = lo.w;
            ws[(kk0 + 4u) * BN + r] = hi.x;
            ws[(kk0 + 5u) * BN + r] = hi.y;
            ws[(kk0 + 6u) * BN + r] = hi.z;
            ws[(kk0 + 7u) * BN + r] = hi.w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let b = vec4<f32>(ws[kk * BN + lid3.x * 4u], ws[kk * BN + lid3.x * 4u + 1u],
                              ws[kk * BN + lid3.x * 4u + 2u], ws[kk * BN + lid3.x * 4u + 3u]);
            // Unrolled by hand: llvmpipe counts every loop iteration of an invocation against
            // one shared budget of 65535 (README.md, "A note on lavapipe").
            if TM == 4u {
                let xb = kk * bm + lid3.y * 4u;
                let a = vec4<f32>(xs[xb], xs[xb + 1u], xs[xb + 2u], xs[xb + 3u]);
                acc[0] += a.x * b.x; acc[1] += a.x * b.y; acc[2] += a.x * b.z; acc[3] += a.x * b.w;
                acc[4] += a.y * b.x; acc[5] += a.y * b.y; acc[6] += a.y * b.z; acc[7] += a.y * b.w;
                acc[8] += a.z * b.x; acc[9] += a.z * b.y; acc[10] += a.z * b.z; acc[11] += a.z * b.w;
                acc[12] += a.w * b.x; acc[13] += a.w * b.y; acc[14] += a.w * b.z; acc[15] += a.w * b.w;
            } else {
                let a = xs[kk * bm + lid3.y];
                acc[0] += a * b.x; acc[1] += a * b.y; acc[2] += a * b.z; acc[3] += a * b.w;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        let gm = m0 + lid3.y * TM + i;
        for (var j = 0u; j < 4u; j++) {
            let gn = n0 + lid3.x * 4u + j;
            if gm < p.m && gn < p.n {
                y[gm * p.out_stride + p.out_offset + gn] = acc[i * 4u + j];
            }
        }
    }
}
