// qk_norm_rope.wgsl: Gemma 3's decode step between the q/k/v product and attention, in one
// dispatch. `src` holds one token's q, k and v as the joined q/k/v product wrote them
// ([NH*D][NKV*D][NKV*D]); each query and key head is normed over its D values with its weight
// (q_norm or k_norm, Gemma's (1 + w)), rotated (RoPE, rotate-half pairing, the CPU's table as
// rope.wgsl reads it) at the step's position, and written: queries to `q`, keys and the values
// to the layer's cache at slot pos % capacity (fp16 pairs as kv_cache.wgsl packs them, or f32
// with KV_F32). One workgroup of WG_NORM invocations per query or key head (a key head's
// workgroup also writes its values); each invocation takes pairs of neighbouring dimensions j,
// j + 1 and their RoPE partners j + D/2, j + D/2 + 1, so it packs the cache's fp16 pairs itself.
// Needs head_dim % 4 == 0.

override KV_F32: bool = false;

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    capacity: u32,  // cache slots (a ring for sliding-window layers)
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;           // [NH*D + 2*NKV*D]
@group(0) @binding(1) var<storage, read> q_norm: array<f32>;        // [D], stored as w
@group(0) @binding(2) var<storage, read> k_norm: array<f32>;        // [D], stored as w
@group(0) @binding(3) var<storage, read_write> q: array<f32>;       // [NH*D]
@group(0) @binding(4) var<storage, read_write> k_cache: array<u32>; // kv_cache.wgsl's layout
@group(0) @binding(5) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(6) var<storage, read> table: array<f32>;         // rope.wgsl's (cos, sin) table
@group(0) @binding(7) var<uniform> p: Params;
@group(0) @binding(8) var<uniform> now: Step;

// Dimension j of the head starting at `base`, normed by `inv` with the weight of a query head
// or a key head.
fn normed(base: u32, j: u32, inv: f32, query: bool) -> f32 {
    let w = select(k_norm[j], q_norm[j], query);
    return src[base + j] * inv * (1.0 + w);
}

// Word w of a cache row: fp16 pairs (two values) or one f32 value each.
fn put(cache_k: bool, word: u32, value: u32) {
    if cache_k {
        k_cache[word] = value;
    } else {
        v_cache[word] = value;
    }
}

@compute @workgroup_size(WG_NORM)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;  // uniform per workgroup: the barriers below stay in uniform control flow
    if h >= p.n_heads + p.n_kv_heads {
        return;
    }
    let d = p.head_dim;
    let half_d = d / 2u;
    let base = h * d;
    var s = 0.0;
    for (var j = 2u * lid; j < half_d; j += 2u * WG_NORM) {
        let a = vec2<f32>(src[base + j], src[base + j + 1u]);
        let b = vec2<f32>(src[base + half_d + j], src[base + half_d + j + 1u]);
        s += dot(a, a) + dot(b, b);
    }
    let inv = 1.0 / sqrt(workgroup_sum(s, lid) / f32(d) + p.eps);
    let query = h < p.n_heads;
    let width = p.n_kv_heads * d;
    let slot = now.pos % p.capacity;
    let kv = h - select(p.n_heads, 0u, query);               // the key head (key heads only)
    for (var j = 2u * lid; j < half_d; j += 2u * WG_NORM) {
        let y0 = rotate(normed(base, j, inv, query), normed(base, j + half_d, inv, query), j);
        let y1 = rotate(normed(base, j + 1u, inv, query), normed(base, j + 1u + half_d, inv, query), j + 1u);
        if query {
            q[base + j] = y0.x;
            q[base + j + 1u] = y1.x;
            q[base + half_d + j] = y0.y;
            q[base + half_d + j + 1u] = y1.y;
        } else {
            let at = slot * width + kv * d + j;              // cache element of dimension j
            if KV_F32 {
                put(true, at, bitcast<u32>(y0.x));
                put(true, at + 1u, bitcast<u32>(y1.x));
                put(true, at + half_d, bitcast<u32>(y0.y));
                put(true, at + half_d + 1u, bitcast<u32>(y1.y));
            } else {
                put(true, at / 2u, pack2x16float(vec2<f32>(y0.x, y1.x)));
                put(true, (at + half_d) / 2u, pack2x16float(vec2<f32>(y0.y, y1.y)));
            }
        }
    }
    if query {
        return;
    }
    // The values of this key head, unchanged.
    let v_base = (p.n_heads + p.n_kv_heads) * d + kv * d;
    for (var c = 2u * lid; c < d; c += 2u * WG_NORM) {
        let at = slot * width + kv * d + c;
        if KV_F32 {
            put(false, at, bitcast<u32>(src[v_base + c]));
            put(false, at + 1u, bitcast<u32>(src[v_base + c + 1u]));
        } else {
            put(false, at / 2u, pack2x16float(vec2<f32>(src[v_base + c], src[v_base + c + 1u])));
        }
    }
}
