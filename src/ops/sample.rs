//! Token sampling on the GPU: greedy, or temperature + top-k + top-p with a seeded PCG draw.
//! Only the chosen id (4 bytes) is read back. The exact rule is documented in `sample.wgsl`.
//!
//! Two dispatches. Greedy: `sample_argmax.wgsl`, one workgroup per `SAMPLE_CHUNK` logits, keeps
//! each chunk's arg-max, and its merge variant picks among those. Top-k up to `SAMPLE_LOCAL`:
//! `sample_select.wgsl` keeps each chunk's top-k candidates, then `sample.wgsl` (one workgroup)
//! draws from those alone. Either way the logits are read once. With top-k off or above
//! `SAMPLE_LOCAL`, only `sample.wgsl` runs and reads the logits itself (see `Sampler::passes`).

use super::{check_fits, check_groups, uniform, words};
use crate::error::{Error, Result};
use crate::gpu::{Bound, GpuContext, Kernel, Recorder, Traffic};
use crate::shaders::{self, consts};

uniform! {
    pub struct SampleParams {
        pub n: u32,
        pub top_k: u32,
        pub seed: u32,
        pub counter: u32,
        pub temperature: f32,
        pub top_p: f32,
        pub candidates: u32,
        pub _pad0: u32,
    }
}

/// Sampling settings. `temperature <= 0` or `top_k == 1` is greedy; `top_k == 0` and
/// `top_p >= 1` disable those filters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub seed: u32,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 };

    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::invalid("temperature", format!("must be a finite number >= 0, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid("top_p", format!("must be in (0, 1], got {}", self.top_p)));
        }
        Ok(())
    }

    /// Greedy: one arg-max, whatever `top_k` and `top_p` say.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }

    /// Whether the first kernel gathers candidates: greedy, or a top-k small enough
    /// that each chunk's share fits its `SAMPLE_LOCAL` slots.
    pub fn uses_candidates(&self) -> bool {
        self.is_greedy() || (1..=consts::SAMPLE_LOCAL).contains(&self.top_k)
    }
}

#[derive(Debug)]
pub struct Sampler {
    /// Greedy: `sample_argmax.wgsl` per chunk, then its merge.
    argmax: Kernel,
    argmax_merge: Kernel,
    /// Top-k: `sample_select.wgsl` per chunk, then `sample.wgsl`.
    select: Kernel,
    pick: Kernel,
}

#[derive(Debug)]
pub struct SamplerBinding {
    argmax: Bound<SampleParams>,
    argmax_merge: Bound<SampleParams>,
    select: Bound<SampleParams>,
    pick: Bound<SampleParams>,
    /// Each chunk's candidate count, then its (key, id) pairs (layout in sample_select.wgsl).
    candidates: wgpu::Buffer,
    len: u64,
}

impl Sampler {
    pub async fn new(ctx: &GpuContext) -> Result<Self> {
        Ok(Self {
            argmax: Kernel::new(ctx, &shaders::SAMPLE_ARGMAX, &[("MERGE", 0.0)]).await?,
            argmax_merge: Kernel::new(ctx, &shaders::SAMPLE_ARGMAX, &[("MERGE", 1.0)]).await?,
            select: Kernel::new(ctx, &shaders::SAMPLE_SELECT, &[]).await?,
            pick: Kernel::new(ctx, &shaders::SAMPLE, &[]).await?,
        })
    }

    /// Bytes of the candidate buffer for `n` logits: a count per chunk, then `SAMPLE_LOCAL`
    /// (key, id) pairs per chunk.
    pub fn candidate_bytes(n: u64) -> u64 {
        let chunks = n.div_ceil(consts::SAMPLE_CHUNK as u64).max(1);
        4 * chunks * (1 + 2 * consts::SAMPLE_LOCAL as u64)
    }

    /// `logits`: f32 [n]; `result`: u32, the chosen id is written to element 0. Allocates the
    /// candidate buffer for as many logits as `logits` holds.
    pub fn bind(&self, ctx: &GpuContext, logits: &wgpu::Buffer, result: &wgpu::Buffer) -> Result<SamplerBinding> {
        let len = words(logits);
        let cands = ctx.storage_zeroed("sample candidates", Self::candidate_bytes(len))?;
        Ok(SamplerBinding {
            argmax: self.argmax.bind(ctx, &[logits, &cands, result]),
            argmax_merge: self.argmax_merge.bind(ctx, &[logits, &cands, result]),
            select: self.select.bind(ctx, &[logits, &cands]),
            pick: self.pick.bind(ctx, &[logits, &cands, result]),
            candidates: cands,
            len,
        })
    }

    /// Passes over the logits one draw makes (read by a kernel from start to end), for the
    /// profile: 1 with candidates; otherwise the arg-max, then (not greedy) 4 radix rounds
    /// with top-k on, the count and compaction (2) for a top-k the workgroup compacts, or the
    /// total and 32 bisection steps (top-p below 1) and the draw. The count assumes no chunk
    /// overflows (more than `SAMPLE_LOCAL` ids tied at its boundary), which sends the second
    /// kernel back to the logits.
    pub fn passes(s: &Sampling) -> u32 {
        if s.uses_candidates() {
            return 1;
        }
        let radix = if s.top_k > 0 { 4 } else { 0 };
        let compacted = s.top_k > 0 && s.top_k <= 1024;
        let top_p = if s.top_p < 1.0 { 32 } else { 0 };
        if compacted {
            1 + radix + 2
        } else {
            1 + radix + 1 + top_p + 1
        }
    }
}

impl SamplerBinding {
    /// The candidates of the last draw that gathered them: per chunk of `SAMPLE_CHUNK` logits,
    /// how many it kept (`u32::MAX`: more tied at its boundary than `SAMPLE_LOCAL`, so the draw
    /// read the logits instead). For tests, which check which path a draw took.
    pub async fn candidate_counts(&self, ctx: &GpuContext, n: u32) -> Result<Vec<u32>> {
        ctx.read_back::<u32>(&self.candidates, 0, (n as u64).div_ceil(consts::SAMPLE_CHUNK as u64)).await
    }

    /// `counter` distinguishes successive draws with one seed (e.g. the decode step).
    pub fn dispatch(&self, rec: &mut Recorder<'_>, n: u32, s: &Sampling, counter: u32) -> Result<()> {
        s.validate()?;
        if n == 0 {
            return Err(Error::shape("sample", "no logits to sample from"));
        }
        check_fits("sample", "logits", n as u64, self.len)?;
        let candidates = s.uses_candidates();
        // Greedy draws ignore the counter: leaving it 0 keeps their uniforms unchanged from one
        // token to the next, so nothing is rewritten.
        let params = SampleParams {
            n,
            top_k: s.top_k,
            seed: s.seed,
            counter: if s.is_greedy() { 0 } else { counter },
            temperature: s.temperature,
            top_p: s.top_p,
            candidates: candidates as u32,
            ..Default::default()
        };
        let chunks = (n as u64).div_ceil(consts::SAMPLE_CHUNK as u64);
        // Candidate (key, id) pairs each chunk keeps at most (fewer only past its end).
        let kept = if s.is_greedy() { 1 } else { s.top_k.min(consts::SAMPLE_LOCAL) as u64 };
        let cand_words = chunks * (1 + 2 * kept);
        if candidates {
            let groups = check_groups("sample", "logit chunks", chunks)?;
            let first = if s.is_greedy() { &self.argmax } else { &self.select };
            first.dispatch(rec, &params, [groups, 1, 1], Traffic::words(n as u64, cand_words));
        }
        if s.is_greedy() {
            self.argmax_merge.dispatch(rec, &params, [1, 1, 1], Traffic::words(cand_words, 1));
            return Ok(());
        }
        // The candidates, or the logits (`passes` says how many times).
        let read = if candidates { cand_words } else { n as u64 };
        self.pick.dispatch(rec, &params, [1, 1, 1], Traffic::words(read, 1));
        Ok(())
    }
}
