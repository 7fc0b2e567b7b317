// attention.wgsl: Gemma attention (docs/model.md §3.3; launcher and host-side checks in
// src/ops/attention.rs) for a block of queries (prefill) or one query (decode), reading K and V
// from the cache written by kv_cache.wgsl (fp16, or f32 with KV_F32). One workgroup per
// (query head, query token); keys are walked in tiles of KT with an online softmax in f32.
//
// For query i (absolute position q_pos_start + t), query head n, kv head g = n / (NH / NKV):
//   z_j = softcap * tanh(scale * (q . k_j) / softcap)       (soft-cap BEFORE the mask)
//   key j is visible iff j <= i and (window == 0 or i - j < window)
//   out = sum_j softmax(z)_j * v_j
// Masked keys are never visited (equivalent to -inf after the cap). Key j lives in slot
// j % capacity; the host checks every visible key is still resident in a ring.

const KT: u32 = ATTN_KEYS; // keys per tile, one per invocation
const PER_THREAD: u32 = MAX_HEAD_DIM / KT;

@group(0) @binding(0) var<storage, read> q: array<f32>;           // [T, n_heads * head_dim]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;   // [T, n_heads * head_dim]

var<workgroup> qs: array<vec4<f32>, MAX_HEAD_DIM / 4u>;
var<workgroup> probs: array<f32, KT>;
var<workgroup> slots: array<u32, KT>;

// Loops below are unrolled by hand where they run per key: llvmpipe counts every loop
// iteration of an invocation against one shared budget of 65535 (README.md, "A note on
// lavapipe"), and
// a tile costs about 130 iterations, which allows about 31k keys.

// probs[jj] * v[key jj][d]; `head_word` is where this kv head starts inside a slot.
fn v_term(jj: u32, n_valid: u32, slot_words: u32, head_word: u32, d: u32) -> f32 {
    if jj >= n_valid {
        return 0.0;
    }
    let base = slots[jj] * slot_words + head_word;
    if KV_F32 {
        return probs[jj] * bitcast<f32>(v_cache[base + d]);
    }
    let vv = unpack2x16float(v_cache[base + d / 2u]);
    return probs[jj] * select(vv.x, vv.y, (d & 1u) == 1u);
}

@compute @workgroup_size(ATTN_KEYS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wid.x;
    let t = wid.y;
    let d_len = p.head_dim;
    let g = head / (p.n_heads / p.n_kv_heads);
    let q_base = (t * p.n_heads + head) * d_len;
    if lid < d_len / 4u {
        let b = q_base + 4u * lid;
        qs[lid] = vec4<f32>(q[b], q[b + 1u], q[b + 2u], q[b + 3u]);
    }
    workgroupBarrier();

    let i = p.q_pos_start + t;
    let lo = first_key(i);
    let end = i + 1u;
    let slot_words = words(p.n_kv_heads * d_len);
    let head_word = words(g * d_len);

    var m = -3.0e38;
    var l = 0.0;
    var acc: array<f32, PER_THREAD>;
    for (var j0 = lo; j0 < end; j0 += KT) {
        let j = j0 + lid;
        var z = -3.0e38;
        if j < end {
            let slot = j % p.capacity;
            slots[lid] = slot;
            let kb = slot * slot_words + head_word;
            var s = 0.0;
            for (var d8 = 0u; d8 < d_len / 8u; d8++) {
                s += dot(qs[2u * d8], k_vec4(kb, 2u * d8)) + dot(qs[2u * d8 + 1u], k_vec4(kb, 2u * d8 + 1u));
            }
            z = score(s);
        }
        probs[lid] = z;
        workgroupBarrier();
        // Entries past n_valid hold -3e38 here and 0 below, so the unrolled tails are exact.
        let n_valid = min(KT, end - j0);
        var m_new = m;
        for (var jj = 0u; jj < n_valid; jj += 4u) {
            m_new = max(m_new, max(max(probs[jj], probs[jj + 1u]), max(probs[jj + 2u], probs[jj + 3u])));
        }
        workgroupBarrier();
        var pr = 0.0;
        if j < end {
            pr = exp(z - m_new);
        }
        probs[lid] = pr;
        workgroupBarrier();
        let corr = exp(m - m_new);
        var psum = 0.0;
        for (var jj = 0u; jj < n_valid; jj += 4u) {
            psum += (probs[jj] + probs[jj + 1u]) + (probs[jj + 2u] + probs[jj + 3u]);
        }
        l = l * corr + psum;
        for (var r = 0u; r < PER_THREAD; r++) {
            let d = lid + r * KT;
            if d < d_len {
                var a = acc[r] * corr;
                for (var jj = 0u; jj < n_valid; jj += 4u) {
                    a += v_term(jj, n_valid, slot_words, head_word, d) + v_term(jj + 1u, n_valid, slot_words, head_word, d)
                       + v_term(jj + 2u, n_valid, slot_words, head_word, d) + v_term(jj + 3u, n_valid, slot_words, head_word, d);
                }
                acc[r] = a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    for (var r = 0u; r < PER_THREAD; r++) {
        let d = lid + r * KT;
        if d < d_len {
            out[q_base + d] = acc[r] / l;
        }
    }
}
