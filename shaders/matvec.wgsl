// matvec.wgsl: decode-time matrix-vector product y[out_offset + n] = sum_k x[k] * W[n, k] for
// one part of a packed weight W [n, k]. Each workgroup computes ROWS rows; LANES threads split
// a row's K and reduce in workgroup memory. ROWS * LANES = WG. For short rows the launcher
// picks one lane per row (ROWS = 256): a 256k-row LM head with K = 256 would otherwise spend
// its time in workgroup launches and barriers (on CPU adapters above all).

override ROWS: u32 = 4u;
override LANES: u32 = 64u;

struct Params {
    k: u32,
    n: u32,
    scales_offset: u32,
    out_offset: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;        // [k]
@group(0) @binding(1) var<storage, read> w: array<u32>;        // packed [n, k]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;  // [>= out_offset + n]
@group(0) @binding(3) var<uniform> p: Params;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let lane = lid % LANES;
    let row = linear_group(wid, nwg) * ROWS + lid / LANES;
    var acc = 0.0;
    if row < p.n {
        let base = row * p.k;
        let k8 = p.k & ~7u;
        for (var k = lane * 8u; k < k8; k += LANES * 8u) {
            let a = vec4<f32>(x[k], x[k + 1u], x[k + 2u], x[k + 3u]);
            let b = vec4<f32>(x[k + 4u], x[k + 5u], x[k + 6u], x[k + 7u]);
            acc += dot8(base + k, p.scales_offset, a, b);
        }
        for (var k = k8 + lane; k < p.k; k += LANES) {
            acc += x[k] * load_weight(base + k, p.scales_offset);
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = LANES / 2u; stride > 0u; stride >>= 1u) {
        if lane < stride {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    if lane == 0u && row < p.n {
        y[p.out_offset + row] = partial[lid];
    }
}
