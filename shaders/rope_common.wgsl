// rope_common.wgsl: one RoPE pair rotated at the step's position, as rope.wgsl rotates it
// (rotate-half pairing, the CPU's cos/sin table), for the fused decode kernels that rotate as
// they write (matvec_qkv.wgsl, qk_norm_rope.wgsl; prepended to them). The including kernel
// declares `table: array<f32>` (the table), `now: Step` and a uniform `p` with `head_dim`.

// (a, b) = (x[j], x[j + D/2]) of one head rotated at position now.pos.
fn rotate(a: f32, b: f32, j: u32) -> vec2<f32> {
    let cs = (now.pos * (p.head_dim / 2u) + j) * 2u;
    let c = table[cs];
    let s = table[cs + 1u];
    return vec2<f32>(a * c - b * s, b * c + a * s);
}
