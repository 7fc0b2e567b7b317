// rmsnorm.wgsl: Gemma's RMSNorm, y = x / sqrt(mean(x^2) + eps) * (1 + w), statistics in f32.
// With ADD_TO_OUT the result is added to `out` (the residual stream): out += y.
// One workgroup of WG_NORM invocations per row.

override ADD_TO_OUT: bool = false;

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;          // [rows, cols]
@group(0) @binding(1) var<storage, read> weight: array<f32>;     // [cols], stored as w (not 1 + w)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // [rows, cols]
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WG_NORM)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = linear_group(wid, nwg);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG_NORM) {
        let v = x[base + c];
        s += v * v;
    }
    let inv = 1.0 / sqrt(workgroup_sum(s, lid) / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += WG_NORM) {
        let y = x[base + c] * inv * (1.0 + weight[c]);
        if ADD_TO_OUT {
            out[base + c] = out[base + c] + y;
        } else {
            out[base + c] = y;
        }
    }
}
