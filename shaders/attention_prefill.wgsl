// attention_prefill.wgsl: Gemma attention for a block of queries (prefill), the same function
// as attention.wgsl (soft-cap before the causal + sliding-window mask, grouped-query heads,
// online softmax in f32, the fp16 or f32 cache of kv_cache.wgsl, rings), shaped so that each
// K/V tile is read once for many query rows instead of once per (query head, query).
//
// A workgroup takes one KV head and AP_ROWS query rows that share it. Rows are (query, head of
// the group) pairs in query-major order (row = t * G + h, G = n_heads / n_kv_heads), so a
// workgroup holds AP_ROWS / G queries of all G heads (Gemma 2: 4 queries x 2 heads; Gemma 3
// 270M: 2 x 4). The rows' q vectors sit in workgroup memory; the keys the block sees are walked
// in tiles of AP_KEYS, three barriers per tile:
//   1. scores: invocation (key kk, pair) reads key kk once and dots it with rows pair and
//      pair + 4 (a key is loaded by 4 invocations of one workgroup for its 8 rows, where
//      attention.wgsl loads it in 8 workgroups, one per row);
//   2. softmax: invocation r < AP_ROWS updates row r's running maximum and sum and turns its
//      scores into weights (masked keys weigh exactly 0);
//   3. values: invocation d4 < head_dim / 4 reads dimensions 4 d4..4 d4 + 3 of each value once
//      and accumulates them into all AP_ROWS rows (eight vec4 registers).
// Loops that run per tile are unrolled by hand (llvmpipe's per-invocation loop budget, see
// attention.wgsl): at most 45 iterations per tile of 16 keys with head_dim 256 (32 for the
// scores, 8 for the softmax, 4 for the values, the tile loop), so 8192 keys take ~23k of the
// 65,535 (the kernel test's prefill at positions 8179..8191 checks it).

const AP_PAIRS: u32 = AP_ROWS / 2u;
const_assert AP_ROWS == 8u && AP_KEYS % 4u == 0u;  // eight accumulators below; tiles unrolled by 4
const NEG: f32 = -3.0e38;

@group(0) @binding(0) var<storage, read> q: array<f32>;           // [T, n_heads * head_dim]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;   // [T, n_heads * head_dim]

var<workgroup> qs: array<array<vec4<f32>, MAX_HEAD_DIM / 4u>, AP_ROWS>;
var<workgroup> weight: array<array<f32, AP_KEYS>, AP_ROWS>;      // scores, then softmax weights
var<workgroup> slots: array<u32, AP_KEYS>;
var<workgroup> corr: array<f32, AP_ROWS>;                        // this tile's rescale per row
var<workgroup> total: array<f32, AP_ROWS>;                       // the softmax sums, at the end

struct Row {
    t: u32,      // query index within the call (clamped to the last valid row)
    head: u32,   // query head
    valid: bool,
}

fn row_of(block: u32, r: u32, g: u32, group: u32) -> Row {
    let n_rows = p.n_queries * group;
    let flat = block * AP_ROWS + r;
    let f = min(flat, n_rows - 1u);
    return Row(f / group, g * group + f % group, flat < n_rows);
}

// Whether query position i sees key j.
fn visible(j: u32, i: u32) -> bool {
    return j <= i && j >= first_key(i);
}

// Dimensions 4 d4..4 d4 + 3 of the tile's value c, or zeros past the tile's keys.
fn v_quad(c: u32, n_valid: u32, slot_words: u32, head_word: u32, d4: u32) -> vec4<f32> {
    if c >= n_valid {
        return vec4<f32>();
    }
    return v_vec4(slots[c] * slot_words + head_word, d4);
}

// Row r's weights of keys c..c+3 of the tile, as a vec4.
fn w4(r: u32, c: u32) -> vec4<f32> {
    return vec4<f32>(weight[r][c], weight[r][c + 1u], weight[r][c + 2u], weight[r][c + 3u]);
}

// Row r's accumulator plus its weights of keys c..c+3 times those keys' values.
fn add_keys(a: vec4<f32>, r: u32, c: u32, v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>) -> vec4<f32> {
    let x = w4(r, c);
    return a + x.x * v0 + x.y * v1 + x.z * v2 + x.w * v3;
}

@compute @workgroup_size(AP_KEYS * AP_PAIRS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = wid.x;
    let block = wid.y;
    let d_len = p.head_dim;
    let group = p.n_heads / p.n_kv_heads;
    let slot_words = words(p.n_kv_heads * d_len);
    let head_word = words(g * d_len);
    let row_words = p.n_heads * d_len;

    // The rows' q vectors, and the range of keys any of them sees.
    for (var r = 0u; r < AP_ROWS; r++) {
        let row = row_of(block, r, g, group);
        if lid < d_len / 4u {
            let b = row.t * row_words + row.head * d_len + 4u * lid;
            qs[r][lid] = vec4<f32>(q[b], q[b + 1u], q[b + 2u], q[b + 3u]);
        }
    }
    workgroupBarrier();
    let first = row_of(block, 0u, g, group);
    let last = row_of(block, AP_ROWS - 1u, g, group);
    let lo = first_key(p.q_pos_start + first.t);
    let end = p.q_pos_start + last.t + 1u;

    // Scores: this invocation's key and rows.
    let kk = lid % AP_KEYS;
    let ra = lid / AP_KEYS;
    let rb = ra + AP_PAIRS;
    let ia = p.q_pos_start + row_of(block, ra, g, group).t;
    let ib = p.q_pos_start + row_of(block, rb, g, group).t;
    // Softmax state of row lid (invocations lid < AP_ROWS).
    var m = NEG;
    var l = 0.0;
    // Values: dimensions 4 lid..4 lid + 3 of every row.
    var a0 = vec4<f32>();
    var a1 = vec4<f32>();
    var a2 = vec4<f32>();
    var a3 = vec4<f32>();
    var a4 = vec4<f32>();
    var a5 = vec4<f32>();
    var a6 = vec4<f32>();
    var a7 = vec4<f32>();

    for (var j0 = lo; j0 < end; j0 += AP_KEYS) {
        let j = j0 + kk;
        var za = NEG;
        var zb = NEG;
        if j < end {
            let slot = j % p.capacity;
            if ra == 0u {
                slots[kk] = slot;
            }
            let kb = slot * slot_words + head_word;
            var sa = 0.0;
            var sb = 0.0;
            for (var d = 0u; d < d_len / 4u; d += 2u) {
                let k0 = k_vec4(kb, d);
                let k1 = k_vec4(kb, d + 1u);
                sa += dot(qs[ra][d], k0) + dot(qs[ra][d + 1u], k1);
                sb += dot(qs[rb][d], k0) + dot(qs[rb][d + 1u], k1);
            }
            if visible(j, ia) {
                za = score(sa);
            }
            if visible(j, ib) {
                zb = score(sb);
            }
        }
        weight[ra][kk] = za;
        weight[rb][kk] = zb;
        workgroupBarrier();

        if lid < AP_ROWS {
            let r = lid;
            var mx = m;
            for (var c = 0u; c < AP_KEYS; c += 4u) {
                let s = w4(r, c);
                mx = max(mx, max(max(s.x, s.y), max(s.z, s.w)));
            }
            // Masked keys hold NEG and weigh 0 (also while every key so far is masked).
            var sum = 0.0;
            for (var c = 0u; c < AP_KEYS; c += 4u) {
                let s = w4(r, c);
                let e = select(vec4<f32>(), exp(s - vec4<f32>(mx)), s > vec4<f32>(0.5 * NEG));
                weight[r][c] = e.x;
                weight[r][c + 1u] = e.y;
                weight[r][c + 2u] = e.z;
                weight[r][c + 3u] = e.w;
                sum += (e.x + e.y) + (e.z + e.w);
            }
            let cr = exp(m - mx);
            l = l * cr + sum;
            m = mx;
            corr[r] = cr;
        }
        workgroupBarrier();

        if lid < d_len / 4u {
            let n_valid = min(AP_KEYS, end - j0);
            a0 *= corr[0];
            a1 *= corr[1];
            a2 *= corr[2];
            a3 *= corr[3];
            a4 *= corr[4];
            a5 *= corr[5];
            a6 *= corr[6];
            a7 *= corr[7];
            for (var c = 0u; c < AP_KEYS; c += 4u) {
                let v0 = v_quad(c, n_valid, slot_words, head_word, lid);
                let v1 = v_quad(c + 1u, n_valid, slot_words, head_word, lid);
                let v2 = v_quad(c + 2u, n_valid, slot_words, head_word, lid);
                let v3 = v_quad(c + 3u, n_valid, slot_words, head_word, lid);
                a0 = add_keys(a0, 0u, c, v0, v1, v2, v3);
                a1 = add_keys(a1, 1u, c, v0, v1, v2, v3);
                a2 = add_keys(a2, 2u, c, v0, v1, v2, v3);
                a3 = add_keys(a3, 3u, c, v0, v1, v2, v3);
                a4 = add_keys(a4, 4u, c, v0, v1, v2, v3);
                a5 = add_keys(a5, 5u, c, v0, v1, v2, v3);
                a6 = add_keys(a6, 6u, c, v0, v1, v2, v3);
                a7 = add_keys(a7, 7u, c, v0, v1, v2, v3);
            }
        }
        workgroupBarrier();
    }

    if lid < AP_ROWS {
        total[lid] = l;
    }
    workgroupBarrier();
    if lid < d_len / 4u {
        put(block, 0u, g, group, a0, lid);
        put(block, 1u, g, group, a1, lid);
        put(block, 2u, g, group, a2, lid);
        put(block, 3u, g, group, a3, lid);
        put(block, 4u, g, group, a4, lid);
        put(block, 5u, g, group, a5, lid);
        put(block, 6u, g, group, a6, lid);
        put(block, 7u, g, group, a7, lid);
    }
}

// Row r's dimensions 4 d4..4 d4 + 3, normalised, if the row is one of the call's.
fn put(block: u32, r: u32, g: u32, group: u32, acc: vec4<f32>, d4: u32) {
    let row = row_of(block, r, g, group);
    if row.valid {
        let b = (row.t * p.n_heads + row.head) * p.head_dim + 4u * d4;
        let y = acc / total[r];
        out[b] = y.x;
        out[b + 1u] = y.y;
        out[b + 2u] = y.z;
        out[b + 3u] = y.w;
    }
}
