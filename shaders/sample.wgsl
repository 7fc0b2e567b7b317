// sample.wgsl: pick the next token from one row of logits on the GPU; only the id is read back.
// One workgroup of WG threads.
//   greedy (temperature <= 0 or top_k == 1): argmax, ties to the lowest id.
//   otherwise, with logits l, max m and mass(i) = exp((l_i - m) / temperature):
//     1. top-k: keep ids whose logit >= the k-th largest logit (ties at the boundary kept);
//        top_k = 0 or >= n keeps all. Found by bisection on the order-preserving u32 key.
//     2. top-p: of those, keep the smallest set of highest logits whose mass >= top_p * total
//        (ties kept together); top_p >= 1 keeps all. Also a bisection on the key.
//     3. u = uniform [0,1) from PCG(seed, counter); walk the kept ids in index order and pick
//        the first whose cumulative mass exceeds u * kept mass.
// The CPU twin (reference::sample) implements the same definition.


struct Params {
    n: u32,
    top_k: u32,
    seed: u32,
    counter: u32,
    temperature: f32,
    top_p: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> logits: array<f32>;        // [n]
@group(0) @binding(1) var<storage, read_write> result: array<u32>;  // [0] = chosen id
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> counter: atomic<u32>;
var<workgroup> bounds: vec2<u32>;   // bisection interval [lo, hi] in key space
var<workgroup> bcast_f: f32;
var<workgroup> bcast_u: u32;

// Order-preserving map from f32 to u32: a < b  <=>  order_key(a) < order_key(b).
fn order_key(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if (b & 0x80000000u) != 0u {
        return ~b;
    }
    return b | 0x80000000u;
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

// Passes over the logits stride by WG and handle UNROLL ids per iteration: llvmpipe (lavapipe)
// cuts any loop off after 65535 iterations, and 32 bisection steps over a 256k vocabulary at
// one id per iteration would exceed that.
const UNROLL: u32 = 4u;

fn mass_of(i: u32, threshold: u32, m: f32, inv_t: f32) -> f32 {
    if i < p.n {
        let l = logits[i];
        if order_key(l) >= threshold {
            return exp((l - m) * inv_t);
        }
    }
    return 0.0;
}

fn count_of(i: u32, threshold: u32) -> u32 {
    if i < p.n && order_key(logits[i]) >= threshold {
        return 1u;
    }
    return 0u;
}

// Mass of the ids this thread strides over whose key is >= threshold.
fn mass_at_least(lid: u32, threshold: u32, m: f32, inv_t: f32) -> f32 {
    var s = 0.0;
    for (var i = lid; i < p.n; i += UNROLL * WG) {
        s += mass_of(i, threshold, m, inv_t) + mass_of(i + WG, threshold, m, inv_t)
           + mass_of(i + 2u * WG, threshold, m, inv_t) + mass_of(i + 3u * WG, threshold, m, inv_t);
    }
    return s;
}

// Midpoint rounding up, without overflow: lo + ceil((hi - lo) / 2).
fn upper_mid(b: vec2<u32>) -> u32 {
    let d = b.y - b.x;
    return b.x + (d >> 1u) + (d & 1u);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    // Arg-max (also gives the max m for the softmax).
    var best_v = -3.4e38;
    var best_i = 0xffffffffu;
    for (var i = lid; i < p.n; i += WG) {
        let v = logits[i];
        if v > best_v {
            best_v = v;
            best_i = i;
        }
    }
    red_f[lid] = best_v;
    red_u[lid] = best_i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            let ov = red_f[lid + s];
            let oi = red_u[lid + s];
            if ov > red_f[lid] || (ov == red_f[lid] && oi < red_u[lid]) {
                red_f[lid] = ov;
                red_u[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if p.temperature <= 0.0 || p.top_k == 1u {
        if lid == 0u {
            result[0] = red_u[0];
        }
        return;
    }
    if lid == 0u {
        bcast_f = red_f[0];
    }
    let m = workgroupUniformLoad(&bcast_f);
    let inv_t = 1.0 / p.temperature;

    // 1. top-k threshold: the largest key t with count(key >= t) >= k.
    if lid == 0u {
        bounds = vec2<u32>(0u, 0xffffffffu);
        atomicStore(&counter, 0u);
    }
    if p.top_k > 0u && p.top_k < p.n {
        for (var it = 0u; it < 32u; it++) {
            let b = workgroupUniformLoad(&bounds);
            let mid = upper_mid(b);
            var c = 0u;
            for (var i = lid; i < p.n; i += UNROLL * WG) {
                c += count_of(i, mid) + count_of(i + WG, mid) + count_of(i + 2u * WG, mid) + count_of(i + 3u * WG, mid);
            }
            atomicAdd(&counter, c);
            workgroupBarrier();
            if lid == 0u {
                if atomicLoad(&counter) >= p.top_k {
                    bounds.x = mid;
                } else {
                    bounds.y = mid - 1u;
                }
                atomicStore(&counter, 0u);
            }
        }
    }
    let tk = workgroupUniformLoad(&bounds).x;
    let total = sum_all(lid, mass_at_least(lid, tk, m, inv_t));

    // 2. top-p threshold: the largest key t >= tk with mass(key >= t) >= top_p * total.
    if lid == 0u {
        bounds = vec2<u32>(tk, 0xffffffffu);
    }
    if p.top_p < 1.0 {
        for (var it = 0u; it < 32u; it++) {
            let b = workgroupUniformLoad(&bounds);
            let mid = upper_mid(b);
            let mass = sum_all(lid, mass_at_least(lid, mid, m, inv_t));
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

    // 3. Inverse-CDF draw in index order over contiguous chunks.
    let chunk = (p.n + WG - 1u) / WG;
    let start = min(lid * chunk, p.n);
    let stop = min(start + chunk, p.n);
    var part = 0.0;
    for (var i = start; i < stop; i++) {
        let l = logits[i];
        if order_key(l) >= threshold {
            part += exp((l - m) * inv_t);
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
        var last = 0u;
        for (var i = 0u; i < WG; i++) {
            let pi = red_f[i];
            if pi > 0.0 {
                last = i;
                if chosen == WG && before + pi > target_mass {
                    chosen = i;
                } else if chosen == WG {
                    before += pi;
                }
            }
        }
        if chosen == WG {
            chosen = last;
            before -= red_f[last];
        }
        bcast_u = chosen;
        bcast_f = target_mass - before;
    }
    let owner = workgroupUniformLoad(&bcast_u);
    if lid == owner {
        let rest = bcast_f;
        var acc = 0.0;
        var pick = 0xffffffffu;
        var last_kept = start;
        for (var i = start; i < stop; i++) {
            let l = logits[i];
            if order_key(l) >= threshold {
                last_kept = i;
                acc += exp((l - m) * inv_t);
                if acc > rest && pick == 0xffffffffu {
                    pick = i;
                }
            }
        }
        if pick == 0xffffffffu {
            pick = last_kept;
        }
        result[0] = pick;
    }
}
