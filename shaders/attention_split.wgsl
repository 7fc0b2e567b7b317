// attention_split.wgsl: decode attention split across the keys (flash-decoding), for one query
// at position i = the step uniform's `pos` (launcher: src/ops/attention.rs; definition as attention.wgsl:
// z_j = softcap(scale * q.k_j) before the mask, keys max(0, i + 1 - window) ..= i, key j in
// slot j % capacity of the fp16 or f32 cache).
//
// Workgroup (g, s) takes KV head g and split s: keys lo + s*chunk .. lo + (s+1)*chunk (clipped
// to i; chunk and the number of splits from `split_plan`, as the launcher sized the grid), for ALL the query heads that share KV head g (GROUP = n_heads / n_kv_heads <=
// MAX_GROUP), so each key and value is read from the cache once per KV head rather than once per
// query head. Keys go through in tiles of KT, one per invocation: the key is read as vec4 and
// dotted with every head's query; then an online softmax per head, and each invocation
// accumulates whole cache words (2 fp16 values, or 1 f32) of V for every head. The split's
// unnormalised result (acc, running max m, running sum l) goes to `part`; attention_combine.wgsl
// merges the splits. Workgroup memory: the tile's probabilities and slots (1.25 KiB). Loops
// over the group's heads run to the constant MAX_GROUP and break early, so a compiler can
// unroll them and index the per-head registers with constants (SwiftShader spills arrays it
// must index dynamically).

const KT: u32 = ATTN_KEYS;
const MAX_GROUP: u32 = ATTN_MAX_GROUP;
// Cache words of one head's V per invocation, at most (f32 at MAX_HEAD_DIM).
const WPT: u32 = MAX_HEAD_DIM / KT;

@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;     // [n_heads * head_dim / 4]
@group(0) @binding(3) var<storage, read_write> part: array<f32>;  // [n_heads, n_splits, head_dim + 2]
@group(0) @binding(5) var<uniform> now: Step;                       // the query's position

var<workgroup> probs: array<f32, MAX_GROUP * KT>;  // [head in group][key in tile]
var<workgroup> slots: array<u32, KT>;

// The values in cache word `w` (fp16: two; f32: one, in x).
fn v_word(w: u32) -> vec2<f32> {
    if KV_F32 {
        return vec2<f32>(bitcast<f32>(v_cache[w]), 0.0);
    }
    return unpack2x16float(v_cache[w]);
}

@compute @workgroup_size(ATTN_KEYS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = wid.x;
    let split = wid.y;
    let d_len = p.head_dim;
    let group = p.n_heads / p.n_kv_heads;
    let i = now.pos;
    let lo = first_key(i);
    let plan = split_plan(i + 1u - lo);
    let chunk = plan.x;
    let n_splits = plan.y;
    let start = lo + split * chunk;
    let end = min(start + chunk, i + 1u);
    let slot_words = words(p.n_kv_heads * d_len);
    let head_word = words(g * d_len);
    let q_vec4s = d_len / 4u;
    let v_words = words(d_len);

    var m: array<f32, MAX_GROUP>;
    var l: array<f32, MAX_GROUP>;
    var acc: array<vec2<f32>, MAX_GROUP * WPT>;
    for (var h = 0u; h < MAX_GROUP; h++) {
        m[h] = -3.0e38;
    }
    for (var j0 = start; j0 < end; j0 += KT) {
        let j = j0 + lid;
        let valid = j < end;
        // Scores of key j for every head of the group, the key read once.
        var z: array<f32, MAX_GROUP>;
        if valid {
            let slot = j % p.capacity;
            slots[lid] = slot;
            let kb = slot * slot_words + head_word;
            for (var c = 0u; c < q_vec4s; c += 2u) {
                let k0 = k_vec4(kb, c);
                let k1 = k_vec4(kb, c + 1u);
                for (var h = 0u; h < MAX_GROUP; h++) {
                    if h >= group { break; }
                    let qb = (g * group + h) * q_vec4s + c;
                    z[h] += dot(q[qb], k0) + dot(q[qb + 1u], k1);
                }
            }
        }
        for (var h = 0u; h < MAX_GROUP; h++) {
            if h >= group { break; }
            var zh = -3.0e38;
            if valid {
                zh = score(z[h]);
            }
            z[h] = zh;
            probs[h * KT + lid] = zh;
        }
        workgroupBarrier();
        // Entries past n_valid hold -3e38 here and 0 below, so the unrolled tails are exact.
        let n_valid = min(KT, end - j0);
        var corr: array<f32, MAX_GROUP>;
        for (var h = 0u; h < MAX_GROUP; h++) {
            if h >= group { break; }
            var m_new = m[h];
            for (var jj = 0u; jj < n_valid; jj += 4u) {
                let b = h * KT + jj;
                m_new = max(m_new, max(max(probs[b], probs[b + 1u]), max(probs[b + 2u], probs[b + 3u])));
            }
            corr[h] = exp(m[h] - m_new);
            m[h] = m_new;
        }
        workgroupBarrier();
        for (var h = 0u; h < MAX_GROUP; h++) {
            if h >= group { break; }
            var pr = 0.0;
            if valid {
                pr = exp(z[h] - m[h]);
            }
            probs[h * KT + lid] = pr;
        }
        workgroupBarrier();
        for (var h = 0u; h < MAX_GROUP; h++) {
            if h >= group { break; }
            var psum = 0.0;
            for (var jj = 0u; jj < n_valid; jj += 4u) {
                let b = h * KT + jj;
                psum += (probs[b] + probs[b + 1u]) + (probs[b + 2u] + probs[b + 3u]);
            }
            l[h] = l[h] * corr[h] + psum;
            for (var r = 0u; r < WPT; r++) {
                acc[h * WPT + r] *= corr[h];
            }
        }
        // V: this invocation's words of every key in the tile, each read once for all heads.
        for (var r = 0u; r < WPT; r++) {
            let w = lid + r * KT;
            if w < v_words {
                for (var jj = 0u; jj < n_valid; jj++) {
                    let vv = v_word(slots[jj] * slot_words + head_word + w);
                    for (var h = 0u; h < MAX_GROUP; h++) {
                        if h >= group { break; }
                        acc[h * WPT + r] += probs[h * KT + jj] * vv;
                    }
                }
            }
        }
        workgroupBarrier();
    }
    let rec_len = d_len + 2u;
    for (var h = 0u; h < MAX_GROUP; h++) {
        if h >= group { break; }
        let rec = ((g * group + h) * n_splits + split) * rec_len;
        for (var r = 0u; r < WPT; r++) {
            let w = lid + r * KT;
            if w < v_words {
                let a = acc[h * WPT + r];
                if KV_F32 {
                    part[rec + w] = a.x;
                } else {
                    part[rec + 2u * w] = a.x;
                    part[rec + 2u * w + 1u] = a.y;
                }
            }
        }
        if lid == 0u {
            part[rec + d_len] = m[h];
            part[rec + d_len + 1u] = l[h];
        }
    }
}
