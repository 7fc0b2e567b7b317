// add_rmsnorm.wgsl: a sub-block's end and the next one's start in one kernel. The branch
// output `o` is normed into the residual stream, and the stream normed for what follows:
//   x += rmsnorm(o, w_add);   h = rmsnorm(x, w_next)
// (Gemma's RMSNorm as in rmsnorm.wgsl, statistics in f32). Each invocation re-reads only the
// elements of x it wrote itself, so the two norms need no barrier beyond their reductions.
// One workgroup of WG_NORM invocations per row.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> o: array<f32>;            // [rows, cols]
@group(0) @binding(1) var<storage, read> w_add: array<f32>;        // [cols], stored as w
@group(0) @binding(2) var<storage, read_write> x: array<f32>;      // [rows, cols] residual
@group(0) @binding(3) var<storage, read> w_next: array<f32>;       // [cols], stored as w
@group(0) @binding(4) var<storage, read_write> h: array<f32>;      // [rows, cols]
@group(0) @binding(5) var<uniform> p: Params;

@compute @workgroup_size(WG_NORM)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    // Uniform per workgroup, so the early return keeps the barriers in uniform control flow.
    let row = linear_group(wid, nwg);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG_NORM) {
        let v = o[base + c];
        s += v * v;
    }
    let inv_o = 1.0 / sqrt(workgroup_sum(s, lid) / f32(p.cols) + p.eps);
    var t = 0.0;
    for (var c = lid; c < p.cols; c += WG_NORM) {
        let v = x[base + c] + o[base + c] * inv_o * (1.0 + w_add[c]);
        x[base + c] = v;
        t += v * v;
    }
    let inv_x = 1.0 / sqrt(workgroup_sum(t, lid) / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += WG_NORM) {
        h[base + c] = x[base + c] * inv_x * (1.0 + w_next[c]);
    }
}
