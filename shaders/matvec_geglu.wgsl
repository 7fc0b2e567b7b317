// matvec_geglu.wgsl: the MLP's first half in one pass (decode): act[j] = gelu_tanh(g[j]) * u[j]
// with g = W_gate x and u = W_up x, from the gate and up weights joined by rows in one buffer
// (gate rows first, from buffer row w_row0; up rows n rows later). Each team of T lanes
// computes 4 outputs: rows j..j+3 of gate and of up (8 rows of W, as matvec.wgsl's teams do),
// so the pair of every output meets in one team and GeGLU is applied as it is written: no
// gate/up buffers, no third dispatch. Needs k % 32 == 0 and n % 4 == 0.

override T: u32 = 4u;   // lanes per team: 4, 16 or 64

@group(0) @binding(0) var<storage, read> xv: array<vec4<f32>>;   // x [k] as vec4
@group(0) @binding(1) var<storage, read> w: array<u32>;          // packed [.., k]: gate rows, then up rows
@group(0) @binding(2) var<storage, read> wv: array<vec4<u32>>;   // w again, as vec4
@group(0) @binding(3) var<storage, read_write> act: array<f32>;  // [n]
@group(0) @binding(4) var<uniform> p: Params;                    // linear.wgsl; n = I

@compute @workgroup_size(MV_WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        inv: Invocation) {
    let lid = thread_index(inv);
    let lane = lid % T;
    let j0 = (linear_group(wid, nwg) * (MV_WG / T) + lid / T) * 4u;
    // Outputs past n are read clamped (in bounds, no branch) and never written.
    let last = p.n - 1u;
    let g0 = min(j0, last) + p.w_row0;
    let g1 = min(j0 + 1u, last) + p.w_row0;
    let g2 = min(j0 + 2u, last) + p.w_row0;
    let g3 = min(j0 + 3u, last) + p.w_row0;
    var gate = vec4<f32>();
    var up = vec4<f32>();
    for (var c = lane; c < p.k / 32u; c += T) {
        let xc = x_chunk(0u, c);
        let sx = x_sum(xc);
        gate += vec4<f32>(chunk_dot(chunk_codes(g0, c), xc, sx), chunk_dot(chunk_codes(g1, c), xc, sx),
                          chunk_dot(chunk_codes(g2, c), xc, sx), chunk_dot(chunk_codes(g3, c), xc, sx));
        up += vec4<f32>(chunk_dot(chunk_codes(g0 + p.n, c), xc, sx), chunk_dot(chunk_codes(g1 + p.n, c), xc, sx),
                        chunk_dot(chunk_codes(g2 + p.n, c), xc, sx), chunk_dot(chunk_codes(g3 + p.n, c), xc, sx));
    }
    let s = team_sum(gate, up, inv, lane);
    if lane < 4u && j0 + lane < p.n {
        act[j0 + lane] = gelu_tanh(s.a[lane]) * s.b[lane];
    }
}
