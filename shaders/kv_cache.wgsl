// kv_cache.wgsl: write new K and V rows into a layer's cache, packed as fp16 pairs in u32
// (or, with KV_F32, as f32 bit patterns: twice the memory, no rounding).
// Token t (absolute position pos_start + t) goes to slot (pos_start + t) % capacity, so a
// cache of `capacity` < context slots is a ring (sliding-window layers).
// Cache layout: [capacity, width / 2] u32 (fp16) or [capacity, width] u32 (f32),
// width = n_kv_heads * head_dim (even).

override KV_F32: bool = false;

struct Params {
    n_tokens: u32,
    width: u32,
    pos_start: u32,
    capacity: u32,
}

@group(0) @binding(0) var<storage, read> k: array<f32>;              // [T, width]
@group(0) @binding(1) var<storage, read> v: array<f32>;              // [T, width]
@group(0) @binding(2) var<storage, read_write> k_cache: array<u32>;  // see layout above
@group(0) @binding(3) var<storage, read_write> v_cache: array<u32>;  // see layout above
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let half_width = p.width / 2u;
    let item = linear_group(wid, nwg) * WG + lid;
    if item >= p.n_tokens * half_width {
        return;
    }
    let t = item / half_width;
    let c = item % half_width;
    let slot = (p.pos_start + t) % p.capacity;
    let src = t * p.width + 2u * c;
    if KV_F32 {
        let dst = slot * p.width + 2u * c;
        k_cache[dst] = bitcast<u32>(k[src]);
        k_cache[dst + 1u] = bitcast<u32>(k[src + 1u]);
        v_cache[dst] = bitcast<u32>(v[src]);
        v_cache[dst + 1u] = bitcast<u32>(v[src + 1u]);
    } else {
        let dst = slot * half_width + c;
        k_cache[dst] = pack2x16float(vec2<f32>(k[src], k[src + 1u]));
        v_cache[dst] = pack2x16float(vec2<f32>(v[src], v[src + 1u]));
    }
}
