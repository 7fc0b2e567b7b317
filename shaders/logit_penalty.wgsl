// logit_penalty.wgsl: repetition, frequency and presence penalties and logit bias, applied to
// the row of logits in place before the sampler, touching only the tokens they concern (never
// a pass over the whole vocabulary). One kernel, four modes (the MODE override):
//   MODE_INIT (0): for each of the first p.count entries of `seen` (the context's distinct
//     tokens, written by the CPU at the start of a generation, counts cleared), mark the token
//     as in the context: counts[t] = IN_CONTEXT.
//   MODE_RECORD (1): one thread records the token just sampled (ids[0]): a token not seen yet
//     is appended to `seen`; its generated count goes up by one.
//   MODE_PENALIZE (2): one thread per entry of `seen` (p.count bounds how many there can be;
//     threads past seen[0] do nothing) adjusts that token's logit l:
//       - repetition (HF / CTRL) for a token in the context or generated: l > 0 ? l / r : l * r;
//       - frequency and presence (OpenAI) for a generated token, c times:
//         l -= frequency * c + presence.
//   MODE_BIAS (3): one thread per (id, bias) pair: l += bias; a bias of -100 or less bans the
//     token (l = -3.4e38: it has no mass and never wins an arg-max over a real logit).
//   MODE_MASK (4): one thread per logit: a token whose bit in `mask` is clear is banned the
//     same way (a grammar's allowed tokens, computed on the CPU while the step ran).
// The layouts: counts[t] = IN_CONTEXT bit | generated count; seen[0] = entries, seen[1..] the
// ids; bias[0] = pairs, then (id, f32 bits) pairs. The CPU twin is `reference::penalize`.

@group(0) @binding(0) var<storage, read_write> logits: array<f32>;   // [n]
@group(0) @binding(1) var<storage, read_write> counts: array<u32>;   // [n]
@group(0) @binding(2) var<storage, read_write> seen: array<u32>;     // [1 + capacity]
@group(0) @binding(3) var<storage, read> bias: array<u32>;           // [1 + 2 * pairs]
@group(0) @binding(4) var<storage, read> ids: array<u32>;            // [0] = the sampled id
@group(0) @binding(5) var<storage, read> mask: array<u32>;           // [ceil(n / 32)] bits
@group(0) @binding(6) var<uniform> p: Params;

struct Params {
    n: u32,
    count: u32,
    repetition: f32,
    frequency: f32,
    presence: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override MODE: u32 = 0u;

const MODE_INIT: u32 = 0u;
const MODE_RECORD: u32 = 1u;
const MODE_PENALIZE: u32 = 2u;
const MODE_BIAS: u32 = 3u;
const MODE_MASK: u32 = 4u;

const IN_CONTEXT: u32 = 0x80000000u;
const BANNED: f32 = -3.4e38;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = gid.x + gid.y * nwg.x * WG;
    if MODE == MODE_RECORD {
        if j == 0u {
            let t = ids[0];
            if t < p.n {
                let c = counts[t];
                if c == 0u && seen[0] < arrayLength(&seen) - 1u {
                    seen[1u + seen[0]] = t;
                    seen[0] = seen[0] + 1u;
                }
                counts[t] = c + 1u;
            }
        }
        return;
    }
    if MODE == MODE_MASK {
        if j < p.n && ((mask[j / 32u] >> (j % 32u)) & 1u) == 0u {
            logits[j] = BANNED;
        }
        return;
    }
    if MODE == MODE_BIAS {
        if j < min(bias[0], p.count) {
            let t = bias[1u + 2u * j];
            let b = bitcast<f32>(bias[2u + 2u * j]);
            if t < p.n {
                logits[t] = select(logits[t] + b, BANNED, b <= -100.0);
            }
        }
        return;
    }
    if j >= min(p.count, arrayLength(&seen) - 1u) {
        return;
    }
    if MODE == MODE_INIT {
        let t = seen[1u + j];
        if t < p.n {
            counts[t] = IN_CONTEXT;
        }
        return;
    }
    // MODE_PENALIZE
    if j >= seen[0] {
        return;
    }
    let t = seen[1u + j];
    if t >= p.n {
        return;
    }
    let c = counts[t] & ~IN_CONTEXT;
    var l = logits[t];
    if p.repetition != 1.0 {
        l = select(l * p.repetition, l / p.repetition, l > 0.0);
    }
    l -= p.frequency * f32(c) + select(0.0, p.presence, c > 0u);
    logits[t] = l;
}
