// sample.wgsl: pick the next token from one row of logits on the GPU; only the id is read back.
// The second of the sampler's two kernels: one workgroup of WG threads.
//   greedy (temperature <= 0 or top_k == 1): argmax, ties to the lowest id
//     (sample_argmax.wgsl does it; this kernel only samples).
//   otherwise, with logits l, max m and mass(i) = exp((l_i - m) / temperature):
//     1. top-k: keep ids whose logit >= the k-th largest logit (ties at the boundary kept);
//        top_k = 0 or >= n keeps all. Found by radix select on the order-preserving u32 key
//        (four rounds, 8 bits each).
//     2. top-p: of those, keep the smallest set of highest logits whose mass >= top_p * total
//        (ties kept together); top_p >= 1 keeps all. A bisection on the key.
//     3. u = uniform [0,1) from PCG(seed, counter); walk the kept ids in index order and pick
//        the first whose cumulative mass exceeds u * kept mass.
// The CPU twin (reference::sample) implements the same definition.
//
// What it reads: with greedy settings or 1 <= top_k <= SAMPLE_LOCAL, sample_select.wgsl has
// already read the logits once and left each chunk's candidates (its arg-max, or every id at
// or above its own k-th largest key), which hold the global answer; this kernel reads only
// those (the "source" below), never the logits: one pass over the logits per token. Where a
// chunk had more ties than it could keep (OVERFLOW), or top_k is 0 or above SAMPLE_LOCAL, the
// source is the logits themselves. With top-k on and at most CAND ids kept (ties included),
// the kept ids are compacted into workgroup memory in index order, so the top-p bisection and
// the draw read the source no more; otherwise they go over the whole source (3 + 32 passes
// with top-p).

@group(0) @binding(0) var<storage, read> logits: array<f32>;        // [n]
@group(0) @binding(1) var<storage, read> cands: array<u32>;         // see sample_select.wgsl
@group(0) @binding(2) var<storage, read_write> result: array<u32>;  // [0] = chosen id
@group(0) @binding(3) var<uniform> p: Params;

var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> bounds: vec2<u32>;   // bisection interval [lo, hi] in key space
var<workgroup> bcast_f: f32;
var<workgroup> bcast_u: u32;

// The list steps 1-3 go over: the candidates (C chunks x SAMPLE_LOCAL slots, the empty ones
// with key 0) or every logit.
var<private> from_cands: bool;
var<private> n_ch: u32;

fn src_len() -> u32 {
    if from_cands {
        return n_ch * SAMPLE_LOCAL;
    }
    return p.n;
}

fn src_key(j: u32) -> u32 {
    if from_cands {
        if j % SAMPLE_LOCAL < cands[j / SAMPLE_LOCAL] {
            return cands[n_ch + 2u * j];
        }
        return 0u;
    }
    return order_key(logits[j]);
}

fn src_idx(j: u32) -> u32 {
    if from_cands {
        return cands[n_ch + 2u * j + 1u];
    }
    return j;
}

fn src_mass(j: u32, m: f32, inv_t: f32) -> f32 {
    if from_cands {
        return exp((key_value(cands[n_ch + 2u * j]) - m) * inv_t);
    }
    return exp((logits[j] - m) * inv_t);
}

fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// Sum of v over the workgroup, returned to every thread.
fn sum_all(lid: u32, v: f32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red_f[lid] += red_f[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        bcast_f = red_f[0];
    }
    return workgroupUniformLoad(&bcast_f);
}

// Sum of v over the workgroup, returned to every thread.
fn sum_u(lid: u32, v: u32) -> u32 {
    red_u[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red_u[lid] += red_u[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        bcast_u = red_u[0];
    }
    return workgroupUniformLoad(&bcast_u);
}

// Passes over the source stride by WG and handle UNROLL ids per iteration: llvmpipe (lavapipe)
// cuts any loop off after 65535 iterations, and 32 bisection steps over a 256k vocabulary at
// one id per iteration would exceed that.
const UNROLL: u32 = 4u;

fn mass_of(j: u32, threshold: u32, m: f32, inv_t: f32) -> f32 {
    if j < src_len() && src_key(j) >= threshold {
        return src_mass(j, m, inv_t);
    }
    return 0.0;
}

// Mass of the source's ids this thread strides over whose key is >= threshold.
fn mass_at_least(lid: u32, threshold: u32, m: f32, inv_t: f32) -> f32 {
    var s = 0.0;
    for (var j = lid; j < src_len(); j += UNROLL * WG) {
        s += mass_of(j, threshold, m, inv_t) + mass_of(j + WG, threshold, m, inv_t)
           + mass_of(j + 2u * WG, threshold, m, inv_t) + mass_of(j + 3u * WG, threshold, m, inv_t);
    }
    return s;
}

// Midpoint rounding up, without overflow: lo + ceil((hi - lo) / 2).
fn upper_mid(b: vec2<u32>) -> u32 {
    let d = b.y - b.x;
    return b.x + (d >> 1u) + (d & 1u);
}

// Ids that top-k keeps, compacted (index order) when at most CAND; their keys and masses.
const CAND: u32 = 1024u;
var<workgroup> cand_key: array<u32, CAND>;
var<workgroup> cand_mass: array<f32, CAND>;
var<workgroup> cand_idx: array<u32, CAND>;
var<workgroup> select_state: vec2<u32>;   // radix select: (key bits found so far, rank left)

// Element j of the list the draw walks: the compacted ids (fast) or the whole source.
fn elem_key(j: u32, fast: bool) -> u32 {
    if fast {
        return cand_key[j];
    }
    return src_key(j);
}

fn elem_mass(j: u32, fast: bool, m: f32, inv_t: f32) -> f32 {
    if fast {
        return cand_mass[j];
    }
    return src_mass(j, m, inv_t);
}

fn elem_idx(j: u32, fast: bool) -> u32 {
    if fast {
        return cand_idx[j];
    }
    return src_idx(j);
}

// This thread's share of the mass of the list's ids whose key is >= threshold.
fn kept_mass(lid: u32, fast: bool, list_n: u32, threshold: u32, m: f32, inv_t: f32) -> f32 {
    if fast {
        var s = 0.0;
        for (var j = lid; j < list_n; j += WG) {
            if cand_key[j] >= threshold {
                s += cand_mass[j];
            }
        }
        return s;
    }
    return mass_at_least(lid, threshold, m, inv_t);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    // The source: the candidates, unless a chunk had more ties than it could keep.
    n_ch = n_chunks();
    var overflowed = 0u;
    var valid = 0u;
    if p.candidates != 0u {
        for (var c = lid; c < n_ch; c += WG) {
            let count = cands[c];
            if count == OVERFLOW {
                overflowed = 1u;
            } else {
                valid += count;
            }
        }
    }
    let n_overflowed = sum_u(lid, overflowed);
    let use_cands = p.candidates != 0u && n_overflowed == 0u;
    let n_valid = select(p.n, sum_u(lid, valid), use_cands);
    from_cands = use_cands;
    let len = src_len();

    // Arg-max by value, ties to the lowest id (also gives the max m for the softmax).
    var best_v = -3.4e38;
    var best_i = 0xffffffffu;
    for (var j = lid; j < len; j += WG) {
        let key = src_key(j);
        if !use_cands || key != 0u {
            let v = key_value(key);
            let i = src_idx(j);
            if best_i == 0xffffffffu || v > best_v || (v == best_v && i < best_i) {
                best_v = v;
                best_i = i;
            }
        }
    }
    red_f[lid] = best_v;
    red_u[lid] = best_i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            let ov = red_f[lid + s];
            let oi = red_u[lid + s];
            if oi != 0xffffffffu && (red_u[lid] == 0xffffffffu || ov > red_f[lid] || (ov == red_f[lid] && oi < red_u[lid])) {
                red_f[lid] = ov;
                red_u[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if lid == 0u {
        bcast_f = red_f[0];
    }
    let m = workgroupUniformLoad(&bcast_f);
    let inv_t = 1.0 / p.temperature;

    // 1. top-k threshold tk: the k-th largest key (the largest t with count(key >= t) >= k),
    //    by radix select: four rounds, each counting the next 8 bits of the keys that share
    //    the bits found so far into 256 bins. top_k = 0 or >= n keeps all (tk = 0; 1 over
    //    the candidates, whose empty slots have key 0).
    if lid == 0u {
        select_state = vec2<u32>(select(0u, 1u, use_cands), p.top_k);
    }
    if p.top_k > 0u && p.top_k < n_valid {
        if lid == 0u {
            select_state.x = 0u;
        }
        for (var d = 0u; d < 4u; d++) {
            for (var b = lid; b < 256u; b += WG) {
                atomicStore(&hist[b], 0u);
            }
            let st = workgroupUniformLoad(&select_state);
            let shift = 24u - 8u * d;
            let above = ~(0xffffffffu >> (8u * d));
            for (var j = lid; j < len; j += WG) {
                let key = src_key(j);
                if (key & above) == st.x {
                    atomicAdd(&hist[(key >> shift) & 255u], 1u);
                }
            }
            workgroupBarrier();
            if lid == 0u {
                select_state = top_bin(st, shift);
            }
            workgroupBarrier();
        }
    }
    let tk = workgroupUniformLoad(&select_state).x;

    // 2. The ids top-k keeps, in index order, compacted into workgroup memory when they fit
    //    (at most CAND: top_k <= CAND and not too many ties at the boundary). Each thread
    //    counts its contiguous range of the source, an exclusive scan gives its first slot,
    //    then it writes its range's ids with their masses. Otherwise (top_k = 0, or too many)
    //    the passes below go over the whole source.
    let range = (len + WG - 1u) / WG;
    let start = min(lid * range, len);
    let stop = min(start + range, len);
    var kept_n = 0xffffffffu;  // not compacted
    if p.top_k > 0u && p.top_k <= CAND {
        var c = 0u;
        for (var j = start; j < stop; j++) {
            if src_key(j) >= tk {
                c++;
            }
        }
        red_u[lid] = c;
        workgroupBarrier();
        for (var s = 1u; s < WG; s <<= 1u) {
            var v = 0u;
            if lid >= s {
                v = red_u[lid - s];
            }
            workgroupBarrier();
            red_u[lid] += v;
            workgroupBarrier();
        }
        if lid == WG - 1u {
            bcast_u = red_u[lid];
        }
        kept_n = workgroupUniformLoad(&bcast_u);
        if kept_n <= CAND {
            var slot = red_u[lid] - c;
            for (var j = start; j < stop; j++) {
                let key = src_key(j);
                if key >= tk {
                    cand_key[slot] = key;
                    cand_mass[slot] = src_mass(j, m, inv_t);
                    cand_idx[slot] = src_idx(j);
                    slot++;
                }
            }
        }
    }
    workgroupBarrier();  // the compacted ids are read by other threads from here on
    let fast = kept_n <= CAND;
    let list_n = select(len, kept_n, fast);
    let total = sum_all(lid, kept_mass(lid, fast, list_n, tk, m, inv_t));

    // 3. top-p threshold: the largest key t >= tk with mass(key >= t) >= top_p * total.
    if lid == 0u {
        bounds = vec2<u32>(tk, 0xffffffffu);
    }
    if p.top_p < 1.0 {
        for (var it = 0u; it < 32u; it++) {
            let b = workgroupUniformLoad(&bounds);
            let mid = upper_mid(b);
            let mass = sum_all(lid, kept_mass(lid, fast, list_n, mid, m, inv_t));
            if lid == 0u {
                if mass >= p.top_p * total {
                    bounds.x = mid;
                } else {
                    bounds.y = mid - 1u;
                }
            }
        }
    }
    let threshold = workgroupUniformLoad(&bounds).x;

    // 4. Inverse-CDF draw in index order over contiguous ranges of the list.
    let chunk = (list_n + WG - 1u) / WG;
    let first = min(lid * chunk, list_n);
    let last = min(first + chunk, list_n);
    var part = 0.0;
    for (var j = first; j < last; j++) {
        if elem_key(j, fast) >= threshold {
            part += elem_mass(j, fast, m, inv_t);
        }
    }
    red_f[lid] = part;
    workgroupBarrier();
    if lid == 0u {
        var kept = 0.0;
        for (var i = 0u; i < WG; i++) {
            kept += red_f[i];
        }
        let u = f32(pcg(p.seed ^ pcg(p.counter)) >> 8u) * (1.0 / 16777216.0);
        let target_mass = u * kept;
        var before = 0.0;
        var chosen = WG;
        var last_owner = 0u;
        for (var i = 0u; i < WG; i++) {
            let pi = red_f[i];
            if pi > 0.0 {
                last_owner = i;
                if chosen == WG && before + pi > target_mass {
                    chosen = i;
                } else if chosen == WG {
                    before += pi;
                }
            }
        }
        if chosen == WG {
            chosen = last_owner;
            before -= red_f[last_owner];
        }
        bcast_u = chosen;
        bcast_f = target_mass - before;
    }
    let owner = workgroupUniformLoad(&bcast_u);
    if lid == owner {
        let rest = bcast_f;
        var acc = 0.0;
        var pick = 0xffffffffu;
        var last_kept = 0u;
        for (var j = first; j < last; j++) {
            if elem_key(j, fast) >= threshold {
                last_kept = elem_idx(j, fast);
                acc += elem_mass(j, fast, m, inv_t);
                if acc > rest && pick == 0xffffffffu {
                    pick = elem_idx(j, fast);
                }
            }
        }
        if pick == 0xffffffffu {
            pick = last_kept;
        }
        result[0] = pick;
    }
}
