// attention_combine.wgsl: merge the splits attention_split.wgsl left in `part` into each query
// head's output (as many splits as `split_plan` gives for the step's position). One workgroup
// per query head: with M = max_s m_s and w_s = exp(m_s - M),
//   out[d] = sum_s w_s * acc_s[d] / sum_s w_s * l_s.

const MAX_SPLITS: u32 = ATTN_MAX_SPLITS;

struct Params {
    n_heads: u32,
    head_dim: u32,
    window: u32,    // 0: global
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> part: array<f32>;        // [n_heads, n_splits, head_dim + 2]
@group(0) @binding(1) var<storage, read_write> out: array<f32>;   // [n_heads * head_dim]
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<uniform> now: Step;                      // the query's position

var<workgroup> weight: array<f32, MAX_SPLITS>;
var<workgroup> total: f32;

@compute @workgroup_size(ATTN_KEYS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = wid.x;
    let n_splits = split_plan(now.pos + 1u - window_start(now.pos, p.window)).y;
    let d_len = p.head_dim;
    let rec_len = d_len + 2u;
    let base = n * n_splits * rec_len;
    var m = -3.0e38;
    for (var s = 0u; s < n_splits; s++) {
        m = max(m, part[base + s * rec_len + d_len]);
    }
    for (var s = lid; s < n_splits; s += ATTN_KEYS) {
        weight[s] = exp(part[base + s * rec_len + d_len] - m);
    }
    workgroupBarrier();
    if lid == 0u {
        var sum = 0.0;
        for (var s = 0u; s < n_splits; s++) {
            sum += weight[s] * part[base + s * rec_len + d_len + 1u];
        }
        total = sum;
    }
    let l = workgroupUniformLoad(&total);
    for (var d = lid; d < d_len; d += ATTN_KEYS) {
        var a = 0.0;
        for (var s = 0u; s < n_splits; s++) {
            a += weight[s] * part[base + s * rec_len + d];
        }
        out[n * d_len + d] = a / l;
    }
}
