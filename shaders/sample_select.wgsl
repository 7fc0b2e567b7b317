// sample_select.wgsl: the first of the sampler's two kernels. One workgroup per chunk of
// SAMPLE_CHUNK logits (WG threads, each holding SAMPLE_CHUNK / WG contiguous keys in
// registers) reads its chunk once and writes its candidates for sample.wgsl:
//   (greedy settings take sample_argmax.wgsl instead, which keeps each chunk's arg-max)
//   top-k (1 <= top_k <= SAMPLE_LOCAL): every id whose key is >= a threshold t at or below
//     the chunk's k-th largest key (k = min(top_k, ids in the chunk)), in index order. The
//     global k-th largest key is >= every chunk's, so the global top-k (ties included) is
//     among the candidates. t is the k-th largest of the threads' own maxima (at least k keys
//     reach it, and for keys in random order about 1.15 k do when k = 64); when more than
//     SAMPLE_LOCAL keys reach it, t is the exact k-th largest key instead, by radix select
//     over the registers (up to four rounds of 8 bits, stopping as soon as the keys at or
//     above the bits found so far fit). More than SAMPLE_LOCAL ids tied at the k-th largest:
//     the chunk's count is OVERFLOW and sample.wgsl goes back to the logits.
// Layout of `cands` for C chunks: counts [C], then (key, id) pairs [C][SAMPLE_LOCAL].
// Barriers: 2 for the threshold, 3 for the compaction's prefix sum, plus 3 per radix round.
// Workgroup memory is kept small (2.1 KiB): WebGPU zero-fills it for every workgroup, and
// SwiftShader does that slowly.

@group(0) @binding(0) var<storage, read> logits: array<f32>;         // [n]
@group(0) @binding(1) var<storage, read_write> cands: array<u32>;    // see above
@group(0) @binding(2) var<uniform> p: Params;

const PER: u32 = SAMPLE_CHUNK / WG;
// The prefix sum's groups: GROUPS groups of WG / GROUPS threads.
const GROUPS: u32 = 16u;

var<workgroup> shared_u: array<u32, WG>;
var<workgroup> group_sum: array<u32, GROUPS>;
var<workgroup> state: vec3<u32>;   // radix select: (key bits found so far, rank left, keys above)
var<workgroup> bcast: u32;

// Exclusive prefix sum of v over the workgroup in index order, and the total (in bcast), in
// three barriers: each group of WG / GROUPS threads is summed by its first thread, then every
// thread adds the groups before its own and its group's threads before it.
fn exclusive_sum(lid: u32, v: u32) -> u32 {
    let size = WG / GROUPS;
    shared_u[lid] = v;
    workgroupBarrier();
    if lid < GROUPS {
        var s = 0u;
        for (var j = 0u; j < size; j++) {
            s += shared_u[lid * size + j];
        }
        group_sum[lid] = s;
    }
    workgroupBarrier();
    let g = lid / size;
    var before = 0u;
    var total = 0u;
    for (var j = 0u; j < GROUPS; j++) {
        let s = group_sum[j];
        if j < g {
            before += s;
        }
        total += s;
    }
    for (var j = g * size; j < lid; j++) {
        before += shared_u[j];
    }
    if lid == 0u {
        bcast = total;
    }
    return before;
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let chunk = wid.x;
    let c = n_chunks();
    if chunk >= c {
        return;
    }
    let base = chunk * SAMPLE_CHUNK;
    let chunk_n = min(SAMPLE_CHUNK, p.n - base);
    let first = base + lid * PER;
    // The chunk's keys, PER contiguous ids per thread; 0 past the end.
    var keys: array<u32, PER>;
    var own_max = 0u;
    for (var r = 0u; r < PER; r++) {
        let i = first + r;
        var k = 0u;
        if i < base + chunk_n {
            k = order_key(logits[i]);
        }
        keys[r] = k;
        own_max = max(own_max, k);
    }

    // t: the k-th largest of the threads' maxima (ties broken by thread), found by each
    // thread counting the maxima ranked above its own. With k >= the chunk's ids, every id.
    let k = min(p.top_k, chunk_n);
    var threshold = 1u;
    if k < chunk_n {
        shared_u[lid] = own_max;
        if lid == 0u {
            bcast = 0u;
        }
        workgroupBarrier();
        // Four maxima a step: threads j..j+3 against this thread's.
        var ranks = vec4<u32>(0u);
        let mine = vec4<u32>(own_max);
        for (var j = 0u; j < WG; j += 4u) {
            let o = vec4<u32>(shared_u[j], shared_u[j + 1u], shared_u[j + 2u], shared_u[j + 3u]);
            let ids = vec4<u32>(j) + vec4<u32>(0u, 1u, 2u, 3u);
            ranks += select(vec4<u32>(0u), vec4<u32>(1u), (o > mine) | ((o == mine) & (ids < vec4<u32>(lid))));
        }
        let rank = ranks.x + ranks.y + ranks.z + ranks.w;
        if rank == k - 1u {
            bcast = own_max;
        }
        threshold = max(workgroupUniformLoad(&bcast), 1u);
    }
    var n_kept = 0u;
    for (var r = 0u; r < PER; r++) {
        n_kept += u32(keys[r] >= threshold);
    }
    var before = exclusive_sum(lid, n_kept);
    var total = workgroupUniformLoad(&bcast);

    if total > SAMPLE_LOCAL && k < chunk_n {
        // Too many: the exact k-th largest key by radix select, 8 bits a round from the top,
        // stopping once the keys at or above the bits found so far (lower bits 0) number at
        // most SAMPLE_LOCAL (they are at least k).
        if lid == 0u {
            state = vec3<u32>(0u, k, 0u);
        }
        var done = false;
        for (var d = 0u; d < 4u && !done; d++) {
            atomicStore(&hist[lid], 0u);
            let st = workgroupUniformLoad(&state);
            let shift = 24u - 8u * d;
            let above = ~(0xffffffffu >> (8u * d));
            for (var r = 0u; r < PER; r++) {
                if (keys[r] & above) == st.x {
                    atomicAdd(&hist[(keys[r] >> shift) & 255u], 1u);
                }
            }
            workgroupBarrier();
            if lid == 0u {
                // `higher` counts the keys above the bits found so far.
                let found = top_bin(st.xy, shift);
                let higher = st.z + (st.y - found.y);
                // Keys at or above the bin's lower edge: those above, and the bin's.
                bcast = higher + atomicLoad(&hist[(found.x >> shift) & 255u]);
                state = vec3<u32>(found.x, found.y, higher);
            }
            let reach = workgroupUniformLoad(&bcast);
            done = reach <= SAMPLE_LOCAL;
        }
        threshold = max(workgroupUniformLoad(&state).x, 1u);
        n_kept = 0u;
        for (var r = 0u; r < PER; r++) {
            n_kept += u32(keys[r] >= threshold);
        }
        before = exclusive_sum(lid, n_kept);
        total = workgroupUniformLoad(&bcast);
    }

    // The kept ids in index order.
    if lid == 0u {
        cands[chunk] = select(total, OVERFLOW, total > SAMPLE_LOCAL);
    }
    if total <= SAMPLE_LOCAL {
        var slot = c + 2u * (chunk * SAMPLE_LOCAL + before);
        for (var r = 0u; r < PER; r++) {
            if keys[r] >= threshold {
                cands[slot] = keys[r];
                cands[slot + 1u] = first + r;
                slot += 2u;
            }
        }
    }
}
