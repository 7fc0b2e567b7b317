//! What a generation asks of the logits besides the draw: penalties and bias applied before
//! the sampler (`logit_penalty.wgsl`), and the log-probabilities of each draw
//! (`logprobs.wgsl`), read back only when asked. All on the GPU, so pipelined decoding keeps
//! running: the token a step samples is recorded for the penalties by the step itself.
//!
//! Cost per token, where used: the penalties touch only the tokens seen so far and the biased
//! ones (one dispatch each, a thread per token, plus one single-thread dispatch recording the
//! draw), never the whole vocabulary; log-probabilities read the logits once (plus `k` more
//! scans within each workgroup's chunk, from cache) in one dispatch per 4,096 logits, then one
//! merging workgroup, and add `8 + 8k` bytes to the read-back.

use super::uniform;
use crate::error::{Error, Result};
use crate::gpu::{Bound, GpuContext, Kernel, Recorder, Traffic};
use crate::shaders::{self, consts};

uniform! {
    pub struct PenaltyParams {
        pub n: u32,
        pub count: u32,
        pub repetition: f32,
        pub frequency: f32,
        pub presence: f32,
        pub _pad0: u32,
        pub _pad1: u32,
        pub _pad2: u32,
    }
}

uniform! {
    pub struct LogprobParams {
        pub n: u32,
        pub k: u32,
        pub _pad0: u32,
        pub _pad1: u32,
    }
}

/// The most `logit_bias` entries one generation may give.
pub const MAX_BIAS: usize = 1024;

/// What a generation asks of the logits before each draw, and of each draw. The default asks
/// nothing (and costs nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct LogitRules {
    /// Hugging Face's (CTRL's) repetition penalty over the context and the generated tokens:
    /// a logit `l > 0` becomes `l / r`, else `l * r`. 1 is off.
    pub repetition_penalty: f32,
    /// OpenAI's penalties over the generated tokens: `l -= frequency * count + presence` for a
    /// token generated `count > 0` times. 0 is off; each from -2 to 2.
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// (token id, bias) pairs, added to the logits after the penalties; a bias of -100 bans
    /// the token. Each from -100 to 100.
    pub logit_bias: Vec<(u32, f32)>,
    /// Report the log-probability of each drawn token and of the `k` most likely (0..=20).
    pub top_logprobs: Option<u32>,
}

impl Default for LogitRules {
    fn default() -> Self {
        Self { repetition_penalty: 1.0, frequency_penalty: 0.0, presence_penalty: 0.0, logit_bias: Vec::new(), top_logprobs: None }
    }
}

impl LogitRules {
    pub fn validate(&self, vocab: u32) -> Result<()> {
        let r = self.repetition_penalty;
        if !(r.is_finite() && r > 0.0 && r <= 100.0) {
            return Err(Error::invalid("repetition_penalty", format!("must be above 0 and at most 100 (1 is off), got {r}")));
        }
        for (what, v) in [("frequency_penalty", self.frequency_penalty), ("presence_penalty", self.presence_penalty)] {
            if !(v.is_finite() && (-2.0..=2.0).contains(&v)) {
                return Err(Error::invalid(what, format!("must be from -2 to 2, got {v}")));
            }
        }
        if self.logit_bias.len() > MAX_BIAS {
            return Err(Error::invalid("logit_bias", format!("at most {MAX_BIAS} tokens, got {}", self.logit_bias.len())));
        }
        for &(id, b) in &self.logit_bias {
            if id >= vocab {
                return Err(Error::invalid("logit_bias", format!("token id {id} is not below the vocabulary size {vocab}")));
            }
            if !(b.is_finite() && (-100.0..=100.0).contains(&b)) {
                return Err(Error::invalid("logit_bias", format!("the bias of token {id} must be from -100 to 100, got {b}")));
            }
        }
        if let Some(k) = self.top_logprobs.filter(|k| *k > consts::LOGPROB_K) {
            return Err(Error::invalid("top_logprobs", format!("must be from 0 to {}, got {k}", consts::LOGPROB_K)));
        }
        Ok(())
    }

    /// Whether any penalty is on (then each draw is recorded).
    pub fn penalizes(&self) -> bool {
        self.repetition_penalty != 1.0 || self.frequency_penalty != 0.0 || self.presence_penalty != 0.0
    }

    /// Whether the rules ask for anything at all.
    pub fn is_active(&self) -> bool {
        self.penalizes() || !self.logit_bias.is_empty() || self.top_logprobs.is_some()
    }
}

/// The log-probabilities of one draw: the drawn token's, and the `k` most likely tokens' (by
/// logit, ties in id order), all under the distribution after penalties and bias, before
/// temperature, top-k and top-p.
#[derive(Debug, Clone, PartialEq)]
pub struct Logprobs {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

impl Logprobs {
    /// Read from `logprobs.wgsl`'s output words, `k` of the top.
    pub fn from_words(words: &[u32], k: usize) -> Result<Self> {
        let need = 2 + 2 * k;
        if words.len() < need {
            return Err(Error::Readback(format!("{} words of log-probabilities, {need} expected", words.len())));
        }
        let top = (0..k).map(|i| (words[2 + 2 * i], f32::from_bits(words[3 + 2 * i]))).collect();
        Ok(Self { id: words[0], logprob: f32::from_bits(words[1]), top })
    }
}

/// Output words of `logprobs.wgsl`.
pub const LOGPROB_WORDS: u64 = 2 + 2 * consts::LOGPROB_K as u64;

#[derive(Debug)]
pub struct LogitOps {
    init: Kernel,
    record: Kernel,
    penalize: Kernel,
    bias: Kernel,
    mask: Kernel,
    lp_chunks: Kernel,
    lp_merge: Kernel,
}

impl LogitOps {
    pub async fn new(ctx: &GpuContext) -> Result<Self> {
        let mode = |m: f64| [("MODE", m)];
        Ok(Self {
            init: Kernel::new(ctx, &shaders::LOGIT_PENALTY, &mode(0.0)).await?,
            record: Kernel::new(ctx, &shaders::LOGIT_PENALTY, &mode(1.0)).await?,
            penalize: Kernel::new(ctx, &shaders::LOGIT_PENALTY, &mode(2.0)).await?,
            bias: Kernel::new(ctx, &shaders::LOGIT_PENALTY, &mode(3.0)).await?,
            mask: Kernel::new(ctx, &shaders::LOGIT_PENALTY, &mode(4.0)).await?,
            lp_chunks: Kernel::new(ctx, &shaders::LOGPROBS, &[("MERGE", 0.0)]).await?,
            lp_merge: Kernel::new(ctx, &shaders::LOGPROBS, &[("MERGE", 1.0)]).await?,
        })
    }

    /// The state for one row of `n` logits in `logits`, whose draws land in `ids[0]`, for
    /// generations of at most `capacity` tokens of context.
    pub fn bind(&self, ctx: &GpuContext, logits: &wgpu::Buffer, ids: &wgpu::Buffer, n: u32, capacity: u32) -> Result<LogitState> {
        let counts = ctx.storage_zeroed("logit rules: counts", 4 * n as u64)?;
        let seen = ctx.storage_zeroed("logit rules: seen", 4 * (1 + capacity as u64))?;
        let bias = ctx.storage_zeroed("logit rules: bias", 4 * (1 + 2 * MAX_BIAS as u64))?;
        let chunks = (n as u64).div_ceil(consts::SAMPLE_CHUNK as u64).max(1);
        let part = ctx.storage_zeroed("logprobs: chunks", 4 * chunks * (2 + 2 * consts::LOGPROB_K as u64))?;
        let out = ctx.storage_zeroed("logprobs", 4 * LOGPROB_WORDS)?;
        let mask = ctx.storage_zeroed("allowed tokens", 4 * (n as u64).div_ceil(32))?;
        let penalty = [logits, &counts, &seen, &bias, ids, &mask];
        Ok(LogitState {
            init: self.init.bind(ctx, &penalty),
            record: self.record.bind(ctx, &penalty),
            penalize: self.penalize.bind(ctx, &penalty),
            bias_bound: self.bias.bind(ctx, &penalty),
            mask_bound: self.mask.bind(ctx, &penalty),
            lp_chunks: self.lp_chunks.bind(ctx, &[logits, &part, ids, &out]),
            lp_merge: self.lp_merge.bind(ctx, &[logits, &part, ids, &out]),
            counts,
            seen,
            bias,
            mask,
            masked: false,
            out,
            n,
            capacity,
            rules: LogitRules::default(),
            seen_bound: 0,
        })
    }
}

/// The GPU state of the logit rules for one row of logits.
#[derive(Debug)]
pub struct LogitState {
    init: Bound<PenaltyParams>,
    record: Bound<PenaltyParams>,
    penalize: Bound<PenaltyParams>,
    bias_bound: Bound<PenaltyParams>,
    mask_bound: Bound<PenaltyParams>,
    lp_chunks: Bound<LogprobParams>,
    lp_merge: Bound<LogprobParams>,
    counts: wgpu::Buffer,
    seen: wgpu::Buffer,
    bias: wgpu::Buffer,
    /// Allowed tokens of the next draw (`set_mask`), one bit each.
    mask: wgpu::Buffer,
    masked: bool,
    /// `logprobs.wgsl`'s output (`LOGPROB_WORDS`).
    pub out: wgpu::Buffer,
    n: u32,
    capacity: u32,
    /// The rules of the generation in progress.
    pub rules: LogitRules,
    /// At least as many entries as `seen` holds: the context's distinct tokens, plus one per
    /// recorded draw.
    seen_bound: u32,
}

impl LogitState {
    /// Start a generation under `rules` with `context` (the prompt, every token in the cache
    /// included) in front of it: its distinct tokens are written for the repetition penalty
    /// and the counts cleared (`enc`, before `rec`'s passes), the bias uploaded.
    pub fn begin(&mut self, enc: &mut wgpu::CommandEncoder, ctx: &GpuContext, rules: &LogitRules, context: &[u32]) -> Result<()> {
        rules.validate(self.n)?;
        self.rules = rules.clone();
        self.seen_bound = 0;
        if rules.penalizes() {
            let mut distinct: Vec<u32> = context.iter().copied().filter(|t| *t < self.n).collect();
            distinct.sort_unstable();
            distinct.dedup();
            distinct.truncate(self.capacity as usize);
            let mut words = Vec::with_capacity(1 + distinct.len());
            words.push(distinct.len() as u32);
            words.extend_from_slice(&distinct);
            enc.clear_buffer(&self.counts, 0, None);
            ctx.queue.write_buffer(&self.seen, 0, bytemuck::cast_slice(&words));
            self.seen_bound = distinct.len() as u32;
        }
        let mut bias = Vec::with_capacity(1 + 2 * rules.logit_bias.len());
        bias.push(rules.logit_bias.len() as u32);
        for &(id, b) in &rules.logit_bias {
            bias.extend([id, b.to_bits()]);
        }
        ctx.queue.write_buffer(&self.bias, 0, bytemuck::cast_slice(&bias));
        Ok(())
    }

    /// The dispatches `begin` needs after its writes (marking the context's tokens).
    pub fn record_begin(&self, rec: &mut Recorder<'_>) -> Result<()> {
        if self.rules.penalizes() && self.seen_bound > 0 {
            let params = self.params(self.seen_bound);
            self.init.dispatch(rec, &params, groups(self.seen_bound)?, Traffic::words(self.seen_bound as u64, self.seen_bound as u64));
        }
        Ok(())
    }

    fn params(&self, count: u32) -> PenaltyParams {
        let r = &self.rules;
        PenaltyParams { n: self.n, count, repetition: r.repetition_penalty, frequency: r.frequency_penalty, presence: r.presence_penalty, ..Default::default() }
    }

    /// Only the tokens whose bits are set in `words` (`ceil(n / 32)` words, bit `t % 32` of
    /// word `t / 32`) may be drawn next (`None`: any). Written now; applies to the draws
    /// recorded until the next call.
    pub fn set_mask(&mut self, ctx: &GpuContext, words: Option<&[u32]>) -> Result<()> {
        match words {
            Some(w) => {
                let need = (self.n as usize).div_ceil(32);
                if w.len() != need {
                    return Err(Error::shape("allowed tokens", format!("{} words for {} tokens; {need} expected", w.len(), self.n)));
                }
                ctx.queue.write_buffer(&self.mask, 0, bytemuck::cast_slice(w));
                self.masked = true;
            }
            None => self.masked = false,
        }
        Ok(())
    }

    /// Whether the draws recorded now do anything besides the sampler's.
    pub fn is_active(&self) -> bool {
        self.masked || self.rules.is_active()
    }

    /// Before the draw: the penalties, then the bias, then the mask of allowed tokens.
    pub fn record_adjust(&self, rec: &mut Recorder<'_>) -> Result<()> {
        if self.rules.penalizes() && self.seen_bound > 0 {
            let count = self.seen_bound.min(self.capacity);
            self.penalize.dispatch(rec, &self.params(count), groups(count)?, Traffic::words(3 * count as u64, count as u64));
        }
        let pairs = self.rules.logit_bias.len() as u32;
        if pairs > 0 {
            self.bias_bound.dispatch(rec, &self.params(pairs), groups(pairs)?, Traffic::words(3 * pairs as u64, pairs as u64));
        }
        if self.masked {
            let n = self.n as u64;
            self.mask_bound.dispatch(rec, &self.params(0), groups(self.n)?, Traffic::words(n + n.div_ceil(32), n));
        }
        Ok(())
    }

    /// After the draw: record it for the penalties, and its log-probabilities when asked.
    pub fn record_after(&mut self, rec: &mut Recorder<'_>) -> Result<()> {
        if self.rules.penalizes() {
            self.record.dispatch(rec, &self.params(0), [1, 1, 1], Traffic::words(3, 3));
            self.seen_bound = self.seen_bound.saturating_add(1).min(self.capacity);
        }
        if let Some(k) = self.rules.top_logprobs {
            let params = LogprobParams { n: self.n, k, ..Default::default() };
            let chunks = (self.n as u64).div_ceil(consts::SAMPLE_CHUNK as u64);
            let words = chunks * (2 + 2 * k as u64);
            self.lp_chunks.dispatch(rec, &params, [super::check_groups("logprobs", "logit chunks", chunks)?, 1, 1], Traffic::words(self.n as u64, words));
            self.lp_merge.dispatch(rec, &params, [1, 1, 1], Traffic::words(words + 2, 2 + 2 * k as u64));
        }
        Ok(())
    }
}

/// Workgroups for one thread per item.
fn groups(items: u32) -> Result<[u32; 3]> {
    Ok([super::check_groups("logit rules", "tokens", (items as u64).div_ceil(consts::WG as u64))?, 1, 1])
}
