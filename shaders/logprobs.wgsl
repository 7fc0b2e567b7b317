// logprobs.wgsl: the log-probability of the sampled token and the top p.k tokens (k <=
// LOGPROB_K) of one row of logits (after penalties and bias: the distribution the sampler
// draws from before temperature, top-k and top-p), in two dispatches of this kernel, read
// back only when asked:
//   MERGE = false: one workgroup per chunk of SAMPLE_CHUNK logits writes the chunk's maximum
//     m, its sum of exp(l - m), and its k largest logits (by value, then lowest id) into
//     `part` (stride 2 + 2 * LOGPROB_K words per chunk);
//   MERGE = true: one workgroup merges the chunks: log-sum-exp L = M + log(sum_c s_c *
//     exp(m_c - M)) with M the largest m_c, then the k largest of the chunks' candidates, and
//     writes out = [sampled id, its l - L, then k pairs (id, l - L)] (f32 as bits).
// A round of the top-k takes the largest (key, lowest id) strictly after the previous round's
// in that order, so ties are taken in id order and nothing is taken twice.

@group(0) @binding(0) var<storage, read> logits: array<f32>;         // [n]
@group(0) @binding(1) var<storage, read_write> part: array<u32>;     // [chunks * (2 + 2K)]
@group(0) @binding(2) var<storage, read> ids: array<u32>;            // [0] = the sampled id
@group(0) @binding(3) var<storage, read_write> out: array<u32>;      // [2 + 2K]
@group(0) @binding(4) var<uniform> p: Params;

struct Params {
    n: u32,
    k: u32,
    _pad0: u32,
    _pad1: u32,
}

override MERGE: bool = false;

const STRIDE: u32 = 2u + 2u * LOGPROB_K;
const NONE: u32 = 0xffffffffu;

var<workgroup> best_key: atomic<u32>;
var<workgroup> best_id: atomic<u32>;
var<workgroup> red: array<f32, WG>;

// (key, id) comes after (pk, pid) in the order: larger keys first, then lower ids.
fn after(key: u32, id: u32, pk: u32, pid: u32) -> bool {
    return key < pk || (key == pk && id > pid);
}

// The workgroup's first (key, id) in the order from each thread's own first (id NONE: none).
fn reduce_best(lid: u32, key: u32, id: u32) -> vec2<u32> {
    workgroupBarrier();
    if lid == 0u {
        atomicStore(&best_key, 0u);
        atomicStore(&best_id, NONE);
    }
    workgroupBarrier();
    if id != NONE {
        atomicMax(&best_key, key);
    }
    workgroupBarrier();
    if id != NONE && key == atomicLoad(&best_key) {
        atomicMin(&best_id, id);
    }
    workgroupBarrier();
    return vec2<u32>(atomicLoad(&best_key), atomicLoad(&best_id));
}

fn reduce_max(lid: u32, v: f32) -> f32 {
    workgroupBarrier();
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    return red[0];
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    workgroupBarrier();
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    return red[0];
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let chunks = (p.n + SAMPLE_CHUNK - 1u) / SAMPLE_CHUNK;
    let k = min(p.k, LOGPROB_K);
    if !MERGE {
        let chunk = wid.x;
        if chunk >= chunks {
            return;
        }
        let base = chunk * SAMPLE_CHUNK;
        let end = base + min(SAMPLE_CHUNK, p.n - base);
        var m = -3.4e38;
        for (var i = base + lid; i < end; i += WG) {
            m = max(m, logits[i]);
        }
        m = reduce_max(lid, m);
        var s = 0.0;
        for (var i = base + lid; i < end; i += WG) {
            s += exp(logits[i] - m);
        }
        s = reduce_sum(lid, s);
        let at = chunk * STRIDE;
        if lid == 0u {
            part[at] = bitcast<u32>(m);
            part[at + 1u] = bitcast<u32>(s);
        }
        var prev = vec2<u32>(0xffffffffu, NONE);
        for (var r = 0u; r < k; r++) {
            var key = 0u;
            var id = NONE;
            for (var i = base + lid; i < end; i += WG) {
                let v = logits[i];
                let ki = order_key(select(v, 0.0, v == 0.0));
                if (prev.y == NONE || after(ki, i, prev.x, prev.y)) && (id == NONE || after(key, id, ki, i)) {
                    key = ki;
                    id = i;
                }
            }
            let best = reduce_best(lid, key, id);
            if lid == 0u {
                part[at + 2u + 2u * r] = best.x;
                part[at + 3u + 2u * r] = best.y;
            }
            prev = best;
        }
        return;
    }
    // Merge: the log-sum-exp over the chunks.
    var m = -3.4e38;
    for (var c = lid; c < chunks; c += WG) {
        m = max(m, bitcast<f32>(part[c * STRIDE]));
    }
    m = reduce_max(lid, m);
    var s = 0.0;
    for (var c = lid; c < chunks; c += WG) {
        s += bitcast<f32>(part[c * STRIDE + 1u]) * exp(bitcast<f32>(part[c * STRIDE]) - m);
    }
    s = reduce_sum(lid, s);
    let lse = m + log(s);
    if lid == 0u {
        let t = ids[0];
        out[0] = t;
        out[1] = bitcast<u32>(select(-3.4e38, logits[min(t, p.n - 1u)] - lse, t < p.n));
    }
    // The k first of the chunks' candidates (each chunk's list is in order and holds its k
    // first, so the global k first are among them).
    var prev = vec2<u32>(0xffffffffu, NONE);
    for (var r = 0u; r < k; r++) {
        var key = 0u;
        var id = NONE;
        for (var j = lid; j < chunks * k; j += WG) {
            let slot = (j / k) * STRIDE + 2u + 2u * (j % k);
            let kj = part[slot];
            let ij = part[slot + 1u];
            if ij != NONE && (prev.y == NONE || after(kj, ij, prev.x, prev.y)) && (id == NONE || after(key, id, kj, ij)) {
                key = kj;
                id = ij;
            }
        }
        let best = reduce_best(lid, key, id);
        if lid == 0u {
            out[2u + 2u * r] = best.y;
            out[3u + 2u * r] = bitcast<u32>(select(-3.4e38, key_value(best.x) - lse, best.y != NONE));
        }
        prev = best;
    }
}
