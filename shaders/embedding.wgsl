// embedding.wgsl: out[t, :] = table[ids[t], :] * scale, for the tokens whose id falls in the
// rows this part of the (split) table holds. One workgroup per token; threads stride the columns.

struct Params {
    n_tokens: u32,
    cols: u32,          // H
    row_start: u32,     // first vocabulary row held by this part
    rows: u32,          // rows held by this part
    scales_offset: u32, // int4 / int8 only: word offset of the group parameters in `w`
    scale: f32,         // Gemma: sqrt(H) in f32, the activation dtype (docs/model.md §3.1)
    w_row0: u32,        // row of `w` where this part starts (0 unless it is a view)
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> ids: array<u32>;        // [T]
@group(0) @binding(1) var<storage, read> w: array<u32>;          // packed [rows, cols]
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // [T, cols]
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = linear_group(wid, nwg);
    if t >= p.n_tokens {
        return;
    }
    let id = ids[t];
    if id < p.row_start || id >= p.row_start + p.rows {
        return;
    }
    let base = (id - p.row_start + p.w_row0) * p.cols;
    for (var c = lid; c < p.cols; c += WG) {
        out[t * p.cols + c] = load_weight(base + c, p.scales_offset) * p.scale;
    }
}
