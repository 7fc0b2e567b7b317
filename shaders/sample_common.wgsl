// sample_common.wgsl: what the sampler's two kernels share (sample_select.wgsl, sample.wgsl):
// the uniform (the order-preserving key of a logit is in order_key.wgsl).

struct Params {
    n: u32,
    top_k: u32,
    seed: u32,
    counter: u32,
    temperature: f32,
    top_p: f32,
    // 1 when sample_select.wgsl ran before sample.wgsl for this draw (the launcher decides:
    // greedy, or 1 <= top_k <= SAMPLE_LOCAL), so sample.wgsl reads its candidates.
    candidates: u32,
    _pad0: u32,
}

// Chunks of SAMPLE_CHUNK logits, one per sample_select workgroup.
fn n_chunks() -> u32 {
    return (p.n + SAMPLE_CHUNK - 1u) / SAMPLE_CHUNK;
}

// A chunk's count is at most SAMPLE_LOCAL, or this: more ids tied at its boundary than fit.
const OVERFLOW: u32 = 0xffffffffu;

// Radix select over keys (sample_select.wgsl, sample.wgsl): a 256-bin histogram of the next 8
// bits of the keys that share the bits found so far.
var<workgroup> hist: array<atomic<u32>, 256>;

// One round's answer (thread 0, after the histogram): the bin holding the rank-th largest of
// those keys (st.x: the bits found so far, st.y: the rank), from the top. Returns the bits
// found with this bin's, and the rank left within it.
fn top_bin(st: vec2<u32>, shift: u32) -> vec2<u32> {
    var rest = st.y;
    var b = 255u;
    loop {
        let h = atomicLoad(&hist[b]);
        if h >= rest || b == 0u {
            break;
        }
        rest -= h;
        b -= 1u;
    }
    return vec2<u32>(st.x | (b << shift), rest);
}
