//! Slow, obvious CPU twins of every kernel, written from the model spec (`docs/model.md` §3,
//! §5) rather than from the shaders. Tests compare GPU results with these; accumulation is f64.

/// `out[t] = table[ids[t]] * scale`; `table` is [V, cols] (already widened to f32).
pub fn embedding(table: &[f32], cols: usize, ids: &[u32], scale: f32) -> Vec<f32> {
    ids.iter().flat_map(|&id| table[id as usize * cols..][..cols].iter().map(move |v| v * scale)).collect()
}

/// Gemma RMSNorm of each row: `x / sqrt(mean(x^2) + eps) * (1 + w)`.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let cols = w.len();
    x.chunks(cols)
        .flat_map(|row| {
            let ms = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / cols as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            row.iter().zip(w).map(move |(v, g)| (*v as f64 * inv * (1.0 + *g as f64)) as f32)
        })
        .collect()
}

/// Rotate-half RoPE of `x` [T, n_heads * head_dim], token t at position `pos_start + t`;
/// angles in f64 from the same f32 `p * inv_freq` the GPU table uses.
pub fn rope(x: &[f32], n_heads: usize, head_dim: usize, theta: f32, pos_start: usize) -> Vec<f32> {
    rope_scaled(x, n_heads, head_dim, theta, 1.0, pos_start)
}

/// RoPE with linear position scaling (`inv_freq / factor`, as Hugging Face's "linear" type).
pub fn rope_scaled(x: &[f32], n_heads: usize, head_dim: usize, theta: f32, factor: f32, pos_start: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = x.to_vec();
    for (t, row) in out.chunks_mut(n_heads * head_dim).enumerate() {
        let pos = (pos_start + t) as f32;
        for head in row.chunks_mut(head_dim) {
            for j in 0..half {
                let inv_freq = 1.0 / theta.powf((2 * j) as f32 / head_dim as f32) / factor;
                let a = (pos * inv_freq) as f64;
                let (s, c) = a.sin_cos();
                let (x1, x2) = (head[j] as f64, head[j + half] as f64);
                head[j] = (x1 * c - x2 * s) as f32;
                head[j + half] = (x2 * c + x1 * s) as f32;
            }
        }
    }
    out
}

/// `y[m, n] = sum_k x[m, k] * w[n, k]`, `w` [n, k] already widened to f32.
pub fn linear(x: &[f32], w: &[f32], k: usize, n: usize) -> Vec<f32> {
    x.chunks(k).flat_map(|row| (0..n).map(move |j| row.iter().zip(&w[j * k..(j + 1) * k]).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32)).collect()
}

/// PyTorch `gelu(approximate='tanh')`.
pub fn gelu_tanh(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())) as f32
}

pub fn geglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(g, u)| (gelu_tanh(*g) as f64 * *u as f64) as f32).collect()
}

pub fn softcap(x: f32, cap: f32) -> f32 {
    (cap as f64 * (x as f64 / cap as f64).tanh()) as f32
}

/// Attention straight from `docs/model.md` §3.3 ("Attention") with an explicit mask matrix. `k`, `v` hold every
/// position `0..kv_len` ([kv_len, n_kv_heads * head_dim], not a ring); `q` holds queries at
/// positions `q_pos_start..`. Scores are soft-capped, then masked (-inf), then softmaxed.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    q_pos_start: usize,
    window: usize,
    scale: f32,
    cap: f32,
) -> Vec<f32> {
    let (qw, kw) = (n_heads * head_dim, n_kv_heads * head_dim);
    let n_q = q.len() / qw;
    let kv_len = k.len() / kw;
    let group = n_heads / n_kv_heads;
    let mut out = vec![0f32; q.len()];
    for t in 0..n_q {
        let i = q_pos_start + t;
        for n in 0..n_heads {
            let g = n / group;
            let qv = &q[t * qw + n * head_dim..][..head_dim];
            let mut z = vec![f64::NEG_INFINITY; kv_len];
            for (j, zj) in z.iter_mut().enumerate() {
                let kv = &k[j * kw + g * head_dim..][..head_dim];
                let mut s = qv.iter().zip(kv).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale as f64;
                if cap > 0.0 {
                    s = cap as f64 * (s / cap as f64).tanh();
                }
                let visible = j <= i && (window == 0 || i - j < window);
                *zj = if visible { s } else { f64::NEG_INFINITY };
            }
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = z.iter().map(|x| (x - m).exp()).collect();
            let l: f64 = p.iter().sum();
            for d in 0..head_dim {
                let o: f64 = p.iter().enumerate().map(|(j, pj)| pj * v[j * kw + g * head_dim + d] as f64).sum();
                out[t * qw + n * head_dim + d] = (o / l) as f32;
            }
        }
    }
    out
}

/// The PCG hash the sampler uses.
pub fn pcg(v: u32) -> u32 {
    let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// The sampler's uniform draw in [0, 1).
pub fn sample_uniform(seed: u32, counter: u32) -> f32 {
    (pcg(seed ^ pcg(counter)) >> 8) as f32 * (1.0 / 16777216.0)
}

/// What the sampler should do, in f64: the kept ids (in index order) with their masses, and
/// the target mass `u * kept_total`. Greedy settings give the arg-max alone.
#[derive(Debug, Clone)]
pub struct SampleTrace {
    pub kept: Vec<(u32, f64)>,
    pub target: f64,
    pub chosen: u32,
}

pub fn sample(logits: &[f32], temperature: f32, top_k: u32, top_p: f32, seed: u32, counter: u32) -> SampleTrace {
    let argmax = logits.iter().enumerate().fold(0usize, |b, (i, v)| if *v > logits[b] { i } else { b }) as u32;
    if temperature <= 0.0 || top_k == 1 {
        return SampleTrace { kept: vec![(argmax, 1.0)], target: 0.0, chosen: argmax };
    }
    let m = logits[argmax as usize] as f64;
    let mut sorted: Vec<f32> = logits.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let kth = if top_k > 0 && (top_k as usize) < logits.len() { sorted[top_k as usize - 1] } else { f32::NEG_INFINITY };
    let mass = |l: f32| ((l as f64 - m) / temperature as f64).exp();
    let total: f64 = logits.iter().filter(|l| **l >= kth).map(|l| mass(*l)).sum();
    // top-p: walk distinct values downwards until the mass at or above reaches top_p * total.
    let mut threshold = kth;
    if top_p < 1.0 {
        let mut i = 0;
        let mut acc = 0.0;
        while i < sorted.len() && sorted[i] >= kth {
            let value = sorted[i];
            while i < sorted.len() && sorted[i] == value {
                acc += mass(value);
                i += 1;
            }
            if acc >= top_p as f64 * total {
                threshold = value;
                break;
            }
        }
    }
    let kept: Vec<(u32, f64)> = logits.iter().enumerate().filter(|(_, l)| **l >= threshold).map(|(i, l)| (i as u32, mass(*l))).collect();
    let kept_total: f64 = kept.iter().map(|(_, p)| p).sum();
    let target = sample_uniform(seed, counter) as f64 * kept_total;
    let mut acc = 0.0;
    let mut chosen = kept.last().map(|(i, _)| *i).unwrap_or(argmax);
    for (i, p) in &kept {
        acc += p;
        if acc > target {
            chosen = *i;
            break;
        }
    }
    SampleTrace { kept, target, chosen }
}

/// The logit rules before a draw (`logit_penalty.wgsl`), written from their definitions: the
/// repetition penalty (Hugging Face's) on every token of `context` or `generated`, OpenAI's
/// frequency and presence penalties on the tokens of `generated` (by how many times each
/// occurs), then each bias added, a bias of -100 or less banning its token (-3.4e38).
pub fn penalize(logits: &mut [f32], rules: &crate::ops::logits::LogitRules, context: &[u32], generated: &[u32]) {
    let mut seen = std::collections::BTreeMap::<u32, u32>::new();
    for &t in context {
        seen.entry(t).or_insert(0);
    }
    for &t in generated {
        *seen.entry(t).or_insert(0) += 1;
    }
    if rules.penalizes() {
        for (&t, &count) in &seen {
            let Some(l) = logits.get_mut(t as usize) else { continue };
            let r = rules.repetition_penalty;
            if r != 1.0 {
                *l = if *l > 0.0 { *l / r } else { *l * r };
            }
            *l -= rules.frequency_penalty * count as f32 + if count > 0 { rules.presence_penalty } else { 0.0 };
        }
    }
    for &(t, b) in &rules.logit_bias {
        if let Some(l) = logits.get_mut(t as usize) {
            *l = if b <= -100.0 { -3.4e38 } else { *l + b };
        }
    }
}

/// Log-softmax of `logits` (in f64) at `id`, and the `k` largest logits' ids (ties to the
/// lower id) with theirs.
pub fn logprobs(logits: &[f32], id: u32, k: usize) -> (f64, Vec<(u32, f64)>) {
    let m = logits.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
    let lse = m + logits.iter().map(|&l| (l as f64 - m).exp()).sum::<f64>().ln();
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    let top = order.iter().take(k).map(|&i| (i, logits[i as usize] as f64 - lse)).collect();
    (logits.get(id as usize).map_or(f64::NEG_INFINITY, |&l| l as f64 - lse), top)
}
