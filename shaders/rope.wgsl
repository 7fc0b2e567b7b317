// rope.wgsl: rotary embedding, rotate-half (GPT-NeoX) pairing: dimension j pairs with j + D/2.
//   out[j]       = x[j]       * cos(a) - x[j + D/2] * sin(a)
//   out[j + D/2] = x[j + D/2] * cos(a) + x[j]       * sin(a)
// Angles come from a table computed on the CPU (WGSL sin/cos are only accurate near 0).
// In place on x; token t is at absolute position pos_start + t.

struct Params {
    n_tokens: u32,
    n_heads: u32,
    head_dim: u32,
    pos_start: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;   // [T, n_heads * head_dim]
@group(0) @binding(1) var<storage, read> table: array<f32>;     // [positions, head_dim / 2, 2] = (cos, sin)
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WG_ROPE)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let half_dim = p.head_dim / 2u;
    let per_token = p.n_heads * half_dim;
    let item = linear_group(wid, nwg) * WG_ROPE + lid;
    if item >= p.n_tokens * per_token {
        return;
    }
    let t = item / per_token;
    let head = (item % per_token) / half_dim;
    let j = item % half_dim;
    let cs = ((p.pos_start + t) * half_dim + j) * 2u;
    let c = table[cs];
    let s = table[cs + 1u];
    let base = t * p.n_heads * p.head_dim + head * p.head_dim;
    let a = x[base + j];
    let b = x[base + j + half_dim];
    x[base + j] = a * c - b * s;
    x[base + j + half_dim] = b * c + a * s;
}
