// attention_common.wgsl: what attention.wgsl (a block of queries) and attention_split.wgsl (one
// query, split across the keys) share (prepended to each; see src/shaders.rs): the cache layout,
// the uniform (src/ops/attention.rs `AttentionParams`), key and value reads, the capped score
// and the window's start.

override KV_F32: bool = false; // cache layout, see kv_cache.wgsl

struct Params {
    n_queries: u32,
    q_pos_start: u32,  // attention.wgsl; the split kernel reads the step uniform's position
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    window: u32,    // 0: global (causal only)
    capacity: u32,  // cache slots
    chunk: u32,     // unused (the split kernel computes its plan from the position)
    scale: f32,     // query_pre_attn_scalar^-0.5
    softcap: f32,   // 0: no soft-cap
    n_splits: u32,  // unused, likewise
    _pad0: u32,
}

@group(0) @binding(1) var<storage, read> k_cache: array<u32>;     // [capacity, n_kv_heads * head_dim] fp16 or f32
@group(0) @binding(2) var<storage, read> v_cache: array<u32>;     // same
@group(0) @binding(4) var<uniform> p: Params;

// u32 words per `values` cached values: fp16 packs 2 values per word, f32 uses 1.
fn words(values: u32) -> u32 {
    if KV_F32 {
        return values;
    }
    return values / 2u;
}

// Key dimensions 4i..4i+3 of the key whose head starts at word `base`.
fn k_vec4(base: u32, i: u32) -> vec4<f32> {
    if KV_F32 {
        let b = base + 4u * i;
        return vec4<f32>(bitcast<f32>(k_cache[b]), bitcast<f32>(k_cache[b + 1u]), bitcast<f32>(k_cache[b + 2u]), bitcast<f32>(k_cache[b + 3u]));
    }
    let b = base + 2u * i;
    return vec4<f32>(unpack2x16float(k_cache[b]), unpack2x16float(k_cache[b + 1u]));
}

// Value dimensions 4i..4i+3 of the value whose head starts at word `base` (as k_vec4).
fn v_vec4(base: u32, i: u32) -> vec4<f32> {
    if KV_F32 {
        let b = base + 4u * i;
        return vec4<f32>(bitcast<f32>(v_cache[b]), bitcast<f32>(v_cache[b + 1u]), bitcast<f32>(v_cache[b + 2u]), bitcast<f32>(v_cache[b + 3u]));
    }
    let b = base + 2u * i;
    return vec4<f32>(unpack2x16float(v_cache[b]), unpack2x16float(v_cache[b + 1u]));
}

// The score of a raw q.k: scaled, then soft-capped (before any mask).
fn score(qk: f32) -> f32 {
    let z = qk * p.scale;
    if p.softcap > 0.0 {
        return softcap(z, p.softcap);
    }
    return z;
}

// The first key query position i sees: 0, or the window's start.
fn first_key(i: u32) -> u32 {
    return window_start(i, p.window);
}
