// sample_argmax.wgsl: the sampler with greedy settings, in two dispatches of this kernel:
//   MERGE = false: one workgroup per chunk of SAMPLE_CHUNK logits finds the chunk's arg-max
//     (the lowest id among equal values, -0 and +0 equal, as the CPU rule compares) and writes
//     it as the chunk's one candidate, in the layout of sample_select.wgsl;
//   MERGE = true: one workgroup takes the arg-max of those candidates into result[0].
// Two workgroup atomics make each reduction: 8 bytes of workgroup memory, which WebGPU
// zero-fills for every workgroup (slowly, on SwiftShader).

@group(0) @binding(0) var<storage, read> logits: array<f32>;         // [n]
@group(0) @binding(1) var<storage, read_write> cands: array<u32>;    // see sample_select.wgsl
@group(0) @binding(2) var<storage, read_write> result: array<u32>;   // [0] = chosen id (MERGE)
@group(0) @binding(3) var<uniform> p: Params;

override MERGE: bool = false;

var<workgroup> best_key: atomic<u32>;
var<workgroup> best_id: atomic<u32>;

// The workgroup's largest key and the lowest id holding it, from each thread's (key, id); a
// thread without one passes id 0xffffffff.
fn reduce(lid: u32, key: u32, id: u32) -> vec2<u32> {
    if lid == 0u {
        atomicStore(&best_id, 0xffffffffu);
    }
    atomicMax(&best_key, key);
    workgroupBarrier();
    if id != 0xffffffffu && key == atomicLoad(&best_key) {
        atomicMin(&best_id, id);
    }
    workgroupBarrier();
    return vec2<u32>(atomicLoad(&best_key), atomicLoad(&best_id));
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let c = n_chunks();
    // This thread's largest key (first id among equal ones): over logits, neighbouring threads
    // reading neighbouring ids, or over the chunks' candidates (in id order).
    var key = 0u;
    var id = 0xffffffffu;
    if MERGE {
        for (var j = lid; j < c; j += WG) {
            let slot = c + 2u * j * SAMPLE_LOCAL;
            let k = cands[slot];
            if id == 0xffffffffu || k > key {
                key = k;
                id = cands[slot + 1u];
            }
        }
        let best = reduce(lid, key, id);
        if lid == 0u {
            result[0] = best.y;
        }
        return;
    }
    let chunk = wid.x;
    if chunk >= c {
        return;
    }
    let base = chunk * SAMPLE_CHUNK;
    let end = base + min(SAMPLE_CHUNK, p.n - base);
    for (var i = base + lid; i < end; i += WG) {
        let v = logits[i];
        let k = order_key(select(v, 0.0, v == 0.0));  // -0 as +0
        if id == 0xffffffffu || k > key {
            key = k;
            id = i;
        }
    }
    let best = reduce(lid, key, id);
    if lid == 0u {
        cands[chunk] = 1u;
        let slot = c + 2u * chunk * SAMPLE_LOCAL;
        cands[slot] = best.x;
        cands[slot + 1u] = best.y;
    }
}
