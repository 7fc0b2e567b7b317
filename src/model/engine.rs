//! The forward pass on the GPU (`docs/model.md` §3), for a block of prompt tokens (prefill,
//! tiled matmuls) or one token (decode, matrix-vector kernels), with a KV cache allocated once
//! and a sampler that leaves only the token id to read back.
//!
//! Everything a step needs — buffers, bind groups, uniform buffers, pipelines — is created at
//! load (`new`: compile the kernels, allocate activations and caches, bind each layer and the
//! head); a decode step writes a few uniforms, records one command buffer and submits it once.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, KernelTime, Profiler, Recorder, Traffic};
use crate::model::activations::Activations;
use crate::model::config::ModelConfig;
use crate::model::layer::{allocate_caches, rope_tables, EvalHead, HeadBindings, LayerBindings};
pub use crate::model::options::{EngineOptions, KvType};
use crate::model::weights::Weights;
use crate::ops::kv_cache::KvCache;
use crate::ops::logits::{LogitOps, LogitRules, LogitState, Logprobs, LOGPROB_WORDS};
use crate::ops::rope::RopeTable;
use crate::ops::sample::{Sampler, Sampling};
use crate::ops::{Ops, StepParams, WeightUse};
use crate::quant::DType;

/// What the last step cost, for benchmarks (dispatches are counted as they are recorded).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepStats {
    pub submits: u32,
    pub dispatches: u32,
    /// Kernel uniforms rewritten (`queue.write_buffer` before a dispatch whose params changed).
    pub uniform_writes: u32,
    /// Bytes the dispatches must move at least (`Traffic`).
    pub traffic: Traffic,
    /// Times a kernel read or wrote the whole row of logits (`HeadBindings::logit_passes`).
    pub logit_passes: u32,
    pub readback_bytes: u64,
}

impl StepStats {
    fn add(&mut self, rec: &Recorder<'_>) {
        self.dispatches += rec.dispatches;
        self.uniform_writes += rec.uniform_writes;
        self.traffic.add(rec.traffic);
    }
}

/// The most bytes `Engine::logits` returns from one call.
pub const MAX_LOGITS_BYTES: u64 = 512 << 20;

/// A model on the GPU, with its KV cache: Gemma 2 or Gemma 3 (text), as its config says.
static NEXT_ENGINE: AtomicU64 = AtomicU64::new(1);
static LIVE_ENGINES: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());

/// Keeps its engine's number among the live ones while it exists.
struct Live(u64);

impl Live {
    fn new() -> Self {
        let id = NEXT_ENGINE.fetch_add(1, Ordering::Relaxed);
        LIVE_ENGINES.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
        Live(id)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        LIVE_ENGINES.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.0);
    }
}

/// What `Engine::allocate_state` allocates: the activations and the KV caches.
pub struct State {
    acts: Activations,
    caches: Vec<KvCache>,
    /// The resolved options they were allocated for.
    options: EngineOptions,
}

pub struct Engine {
    _live: Live,
    pub ctx: GpuContext,
    pub config: ModelConfig,
    /// Resolved options (`max_context` is always set).
    pub options: EngineOptions,
    weights: Weights,
    /// The compiled kernels (kept: `logits` binds its multi-row head with them).
    ops: Ops,
    _ropes: Vec<RopeTable>,
    caches: Vec<KvCache>,
    acts: Activations,
    layers: Vec<LayerBindings>,
    head: HeadBindings,
    /// The head for many rows at once, built by the first `logits` call.
    eval_head: Option<EvalHead>,
    /// 4 bytes each, MAP_READ: where sampled tokens are copied for reading back, used in turn
    /// so that one step can be submitted while the previous one's token is read.
    token_staging: [wgpu::Buffer; 2],
    /// Submitted steps whose tokens have not been read: their staging buffers, oldest first,
    /// and how many top log-probabilities each copied beside its token (None: none).
    pending: std::collections::VecDeque<(usize, Option<u32>)>,
    /// Penalties, bias and log-probabilities (`set_logit_rules`): built on first use, with a
    /// read-back buffer per staging slot for the log-probabilities.
    rules: Option<(LogitState, [wgpu::Buffer; 2])>,
    /// The last submitted pass computed logits that no draw has used yet (`submit_forward`).
    logits_ready: bool,
    /// The staging buffer the next step copies its token into.
    next_staging: usize,
    /// Whether `ids[0]` holds the token the last step sampled (what `submit(None, ..)` decodes).
    sampled_on_gpu: bool,
    /// The per-step uniform (`StepParams`), written once per recorded piece.
    step: wgpu::Buffer,
    /// Decode through the fused products where the layers have them (the default).
    fused_decode: bool,
    /// Tokens in the KV cache.
    pos: u32,
    pub last_step: StepStats,
    /// GPU time per kernel, when profiling (`set_profiling`).
    profiler: Option<Profiler>,
}

impl Engine {
    /// Build the engine for `weights` (uploaded by `model::load`): compile the kernels,
    /// allocate the activations and KV caches, and bind every layer and the head.
    pub async fn new(ctx: GpuContext, config: ModelConfig, weights: Weights, options: EngineOptions) -> Result<Self> {
        let state = Self::allocate_state(&ctx, &config, options).await?;
        Self::with_state(ctx, config, weights, options, state).await
    }

    /// The activations and KV caches for `options`: the memory that grows with the context.
    /// `model::load` allocates them before the weights, so that a context the GPU has no room
    /// for is refused (`Error::OutOfMemory`) before anything is downloaded.
    pub async fn allocate_state(ctx: &GpuContext, config: &ModelConfig, options: EngineOptions) -> Result<State> {
        let options = options.resolve(config)?;
        let (max_context, chunk) = (options.context(), options.prefill_chunk);
        ctx.allocating(
            || {
                Ok(State {
                    acts: Activations::allocate(ctx, config, chunk)?,
                    caches: allocate_caches(ctx, config, max_context, chunk, options.kv == KvType::F32)?,
                    options,
                })
            },
            |st| {
                (format!("the KV cache and activations for a {max_context}-token context"), st.acts.bytes() + st.caches.iter().map(KvCache::bytes).sum::<u64>())
            },
        )
        .await
    }

    /// `new` with the activations and caches already allocated (for `options`).
    pub async fn with_state(ctx: GpuContext, config: ModelConfig, weights: Weights, options: EngineOptions, state: State) -> Result<Self> {
        let options = options.resolve(&config)?;
        let max_context = options.context();
        let c = &config;
        let embed = WeightUse { dtype: weights.embed_tokens.dtype, cols: weights.embed_tokens.cols, prefill: false };
        let matrices = weights.layers.iter().flat_map(|l| l.matrices().map(|m| WeightUse { dtype: m.dtype, cols: m.cols, prefill: true }));
        let uses: Vec<WeightUse> = std::iter::once(embed).chain(matrices).collect();
        // The fused decode products, for each (type, width) of joined weights whose rows are
        // whole 32-weight chunks (other layers decode through the separate kernels).
        let mut fused: Vec<(DType, u32)> = Vec::new();
        for w in weights.layers.iter().flat_map(|l| [&l.qkv, &l.gate_up]).flatten() {
            if w.cols.is_multiple_of(32) && !fused.contains(&(w.dtype, w.cols)) {
                fused.push((w.dtype, w.cols));
            }
        }
        let ops = Ops::new(&ctx, &uses, options.kv == KvType::F32, &fused, c.qk_norm).await?;
        let State { acts, caches, options: allocated_for } = state;
        if allocated_for != options {
            return Err(Error::invalid("engine", "the activations and caches were allocated for other options"));
        }
        let (ropes, rope_of) = rope_tables(&ctx, c, max_context)?;
        let step = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step"),
            size: std::mem::size_of::<StepParams>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let layers = (0..weights.layers.len())
            .map(|l| LayerBindings::bind(&ctx, &ops, c, l, &acts, &weights, &caches[l], &ropes[rope_of[l]], &step))
            .collect::<Result<Vec<_>>>()?;
        let head = HeadBindings::bind(&ctx, &ops, &config, &acts, &weights)?;
        let staging = |label| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 4,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let token_staging = [staging("token read-back 0"), staging("token read-back 1")];
        Ok(Self {
            _live: Live::new(),
            options,
            config,
            weights,
            ops,
            _ropes: ropes,
            caches,
            acts,
            layers,
            head,
            eval_head: None,
            token_staging,
            pending: Default::default(),
            rules: None,
            logits_ready: false,
            next_staging: 0,
            sampled_on_gpu: false,
            step,
            fused_decode: true,
            pos: 0,
            last_step: StepStats::default(),
            profiler: None,
            ctx,
        })
    }

    /// The KV cache's length in tokens.
    pub fn max_context(&self) -> u32 {
        self.options.context()
    }

    /// Tokens currently in the KV cache.
    pub fn position(&self) -> u32 {
        self.pos
    }

    /// Benchmarks only: take the first `n` positions as already cached without computing them
    /// (the cache keeps whatever it holds), so that the next steps cost what they would at
    /// that depth of a conversation. What the model computes afterwards is meaningless until
    /// [`reset`](Self::reset).
    pub fn assume_cached_for_benchmark(&mut self, n: u32) -> Result<()> {
        if n >= self.max_context() {
            return Err(Error::invalid("depth", format!("{n} positions leave no room in a {}-token context", self.max_context())));
        }
        self.pos = n;
        Ok(())
    }

    /// Attention through the split kernels (decode) and the prefill kernel (a prompt chunk),
    /// `true`, the default, or one workgroup per (query head, query) for both: for comparing
    /// them in one run.
    pub fn set_split_decode_attention(&mut self, on: bool) {
        for layer in &mut self.layers {
            layer.attention.split_decode = on;
            layer.attention.tiled_prefill = on;
        }
    }

    /// Decode through the fused q/k/v and gate/up products (`true`, the default) or the
    /// separate kernels a prompt chunk takes: for comparing the two in one run.
    pub fn set_fused_decode(&mut self, on: bool) {
        self.fused_decode = on;
    }

    /// Forget the conversation (the cache is overwritten as new tokens arrive).
    pub fn reset(&mut self) {
        self.pos = 0;
        // Unread steps are forgotten (their staging buffers were never mapped).
        self.pending.clear();
        self.sampled_on_gpu = false;
        self.logits_ready = false;
    }

    /// Keep only the first `n` cached tokens (to reuse a shared prefix). Check
    /// [`can_truncate`](Self::can_truncate) first: a sliding layer's ring may have overwritten
    /// what position `n` needs.
    pub fn truncate(&mut self, n: u32) {
        self.pos = self.pos.min(n);
    }

    /// Whether `truncate(n)` leaves a correct cache. A sliding layer keeps a ring of
    /// `window + prefill_chunk - 1` positions, so once it has wrapped it can step back at most
    /// `prefill_chunk - 1` positions and still hold the window that position `n` attends to.
    pub fn can_truncate(&self, n: u32) -> bool {
        let c = &self.config;
        let chunk = self.options.prefill_chunk;
        n >= self.pos
            || (0..c.num_hidden_layers as usize).all(|l| {
                let w = c.window(l);
                w == 0 || self.pos <= self.max_context().min(w + chunk - 1) || self.pos - n < chunk
            })
    }

    pub fn weight_bytes(&self) -> u64 {
        self.weights.bytes
    }

    pub fn kv_cache_bytes(&self) -> u64 {
        self.caches.iter().map(KvCache::bytes).sum()
    }

    pub fn activation_bytes(&self) -> u64 {
        self.acts.bytes() + self.eval_head.as_ref().map_or(0, EvalHead::bytes)
    }

    /// All GPU memory the engine allocated.
    pub fn gpu_bytes(&self) -> u64 {
        self.weight_bytes() + self.kv_cache_bytes() + self.activation_bytes()
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::invalid("tokens", "at least one token is needed"));
        }
        if let Some(t) = tokens.iter().find(|t| **t >= self.config.vocab_size) {
            return Err(Error::invalid("tokens", format!("token id {t} is not below the vocabulary size {}", self.config.vocab_size)));
        }
        let end = self.pos as u64 + tokens.len() as u64;
        if end > self.max_context() as u64 {
            return Err(Error::ContextOverflow { needed: end, max_context: self.max_context(), cached: self.pos });
        }
        Ok(())
    }

    /// Record the embedding and every layer for `piece` (at most one prefill chunk) at
    /// positions `pos..`, and advance `pos`. `None`: one token, the one the last step sampled
    /// into `ids[0]` (nothing is uploaded).
    fn record_layers(&mut self, enc: &mut wgpu::CommandEncoder, piece: Option<&[u32]>, stats: &mut StepStats) -> Result<()> {
        let t = match piece {
            Some(piece) => {
                self.ctx.queue.write_buffer(&self.acts.ids, 0, bytemuck::cast_slice(piece));
                self.sampled_on_gpu = false;
                piece.len() as u32
            }
            None => 1,
        };
        self.ctx.queue.write_buffer(&self.step, 0, bytemuck::bytes_of(&StepParams { pos: self.pos, n_tokens: t, ..Default::default() }));
        let mut rec = Recorder::begin(&self.ctx, enc, "layers").profiled(self.profiler.as_mut());
        rec.uniform_writes += 1; // the step uniform
        self.head.record_embed(&mut rec, &self.config, t)?;
        for layer in &self.layers {
            layer.record(&mut rec, &self.config, t, self.pos, self.fused_decode)?;
        }
        stats.add(&rec);
        self.pos += t;
        Ok(())
    }

    /// Submit `enc`, reading the profiler's timestamps back when profiling.
    async fn submit(&mut self, during: &str, mut enc: wgpu::CommandEncoder) -> Result<wgpu::SubmissionIndex> {
        if let Some(p) = &self.profiler {
            p.resolve(&mut enc);
        }
        let index = self.ctx.submit_checked(during, enc).await?;
        if let Some(p) = &mut self.profiler {
            p.collect(&self.ctx).await?;
        }
        Ok(index)
    }

    /// Time every kernel from now on (each dispatch in its own timed pass, which itself costs
    /// time), or stop. Returns whether the adapter can: profiling needs timestamp queries.
    pub fn set_profiling(&mut self, on: bool) -> bool {
        self.profiler = if on { Profiler::new(&self.ctx) } else { None };
        self.profiler.is_some() || !on
    }

    /// GPU time per kernel since profiling started or was last reset, slowest first, and the
    /// dispatches that could not be timed.
    pub fn profile(&self) -> Option<(Vec<KernelTime>, u64)> {
        self.profiler.as_ref().map(|p| (p.report(), p.untimed))
    }

    pub fn reset_profile(&mut self) {
        if let Some(p) = &mut self.profiler {
            p.reset();
        }
    }

    /// Record the head on row `row` of the last recorded piece, sampling when asked.
    fn record_head(&mut self, enc: &mut wgpu::CommandEncoder, row: u32, sample: Option<(&Sampling, u32)>, stats: &mut StepStats) -> Result<()> {
        let bytes = self.config.hidden_size as u64 * 4;
        enc.copy_buffer_to_buffer(&self.acts.h, row as u64 * bytes, &self.acts.h_last, 0, bytes);
        let mut rec = Recorder::begin(&self.ctx, enc, "head").profiled(self.profiler.as_mut());
        let rules = self.rules.as_mut().map(|(r, _)| r).filter(|r| r.is_active());
        self.head.record(&mut rec, &self.config, sample, rules)?;
        stats.add(&rec);
        stats.logit_passes += HeadBindings::logit_passes(sample.map(|(s, _)| s));
        Ok(())
    }

    /// Run `tokens` through the model (prefill in chunks, or one decode step for a single
    /// token), then sample the next token on the GPU. Returns the sampled id; 4 bytes are read.
    /// Fails while pipelined steps are pending (read them with `read_token` first).
    pub async fn step(&mut self, tokens: &[u32], sampling: &Sampling) -> Result<u32> {
        if !self.pending.is_empty() {
            return Err(Error::invalid("step", format!("{} submitted step(s) have not been read: call read_token first", self.pending.len())));
        }
        self.submit_step(Some(tokens), sampling).await?;
        self.read_token().await
    }

    /// Submit a step without waiting for its token (pipelined decode): `tokens` as `step`
    /// takes them, or `None` to decode the token the previous step sampled, which is still in
    /// GPU memory, so the next step can be on its way while the previous token is read back.
    /// Tokens are read with `read_token`, oldest first; at most two steps may be pending. A
    /// step whose token is not wanted after all (generation ended at the token before it) is
    /// dropped with `discard_pending`.
    pub async fn submit_step(&mut self, tokens: Option<&[u32]>, sampling: &Sampling) -> Result<()> {
        if self.pending.len() >= self.token_staging.len() {
            return Err(Error::invalid("step", "two submitted steps are pending: read a token first"));
        }
        match tokens {
            Some(tokens) => self.check_tokens(tokens)?,
            None if !self.sampled_on_gpu => return Err(Error::invalid("step", "no sampled token to decode on the GPU: the last step did not sample")),
            None => self.check_tokens(&[0])?,
        }
        sampling.validate()?;
        self.submit_pieces(tokens, Some(sampling)).await
    }

    /// The forward pass of `tokens` up to the logits, without a draw: `submit_draw` follows,
    /// once the CPU knows which tokens may be drawn (a grammar's mask, computed while this
    /// runs). Fails while steps are pending.
    pub async fn submit_forward(&mut self, tokens: &[u32]) -> Result<()> {
        if !self.pending.is_empty() {
            return Err(Error::invalid("step", "a submitted step has not been read: read its token first"));
        }
        self.check_tokens(tokens)?;
        self.submit_pieces(Some(tokens), None).await
    }

    /// Draw the next token from the logits of the last `submit_forward`, only among the tokens
    /// whose bits are set in `allowed` (`ceil(vocab / 32)` words; `None`: any), after the logit
    /// rules; read it with `read_step` as a step's.
    pub async fn submit_draw(&mut self, sampling: &Sampling, allowed: Option<&[u32]>) -> Result<()> {
        if !self.logits_ready {
            return Err(Error::invalid("step", "no logits to draw from: submit_forward first"));
        }
        sampling.validate()?;
        if allowed.is_some() {
            self.ensure_rules().await?;
        }
        if let Some((state, _)) = &mut self.rules {
            state.set_mask(&self.ctx, allowed)?;
        }
        let mut stats = StepStats::default();
        let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("gemma draw") });
        let mut rec = Recorder::begin(&self.ctx, &mut enc, "draw").profiled(self.profiler.as_mut());
        let rules = self.rules.as_mut().map(|(r, _)| r).filter(|r| r.is_active());
        self.head.record_draw(&mut rec, &self.config, sampling, self.pos, rules)?;
        stats.add(&rec);
        drop(rec);
        stats.logit_passes += Sampler::passes(sampling);
        let staging = self.record_readback(&mut enc, &mut stats);
        self.submit("draw", enc).await?;
        stats.submits += 1;
        if let Some((state, _)) = &mut self.rules {
            state.set_mask(&self.ctx, None)?;
        }
        self.finish_draw(staging, stats);
        Ok(())
    }

    /// Copy the drawn token (and its log-probabilities, when asked) to the next staging slot.
    fn record_readback(&mut self, enc: &mut wgpu::CommandEncoder, stats: &mut StepStats) -> usize {
        let staging = self.next_staging;
        enc.copy_buffer_to_buffer(&self.acts.ids, 0, &self.token_staging[staging], 0, 4);
        if let Some((k, (state, read))) = self.logprobs_asked().zip(self.rules.as_ref()) {
            let bytes = 4 * (2 + 2 * k as u64);
            enc.copy_buffer_to_buffer(&state.out, 0, &read[staging], 0, bytes);
            stats.readback_bytes += bytes;
        }
        staging
    }

    fn finish_draw(&mut self, staging: usize, mut stats: StepStats) {
        self.sampled_on_gpu = true;
        self.logits_ready = false;
        self.pending.push_back((staging, self.logprobs_asked()));
        self.next_staging = (staging + 1) % self.token_staging.len();
        stats.readback_bytes += 4;
        self.last_step = stats;
    }

    /// Prefill chunks of `tokens` (or the one token on the GPU), the head on the last row,
    /// and with `sampling` the draw.
    async fn submit_pieces(&mut self, tokens: Option<&[u32]>, sampling: Option<&Sampling>) -> Result<()> {
        let mut stats = StepStats::default();
        // Prompt chunks, or the one token already on the GPU (None).
        let chunk = self.options.prefill_chunk as usize;
        let n_pieces = tokens.map_or(1, |t| t.len().div_ceil(chunk));
        let mut staging = None;
        for i in 0..n_pieces {
            let piece = tokens.map(|t| &t[i * chunk..t.len().min((i + 1) * chunk)]);
            let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("gemma step") });
            self.record_layers(&mut enc, piece, &mut stats)?;
            if i + 1 == n_pieces {
                // The draw's counter is the position of the token being drawn.
                let last_row = piece.map_or(1, |p| p.len() as u32) - 1;
                self.record_head(&mut enc, last_row, sampling.map(|s| (s, self.pos)), &mut stats)?;
                if sampling.is_some() {
                    staging = Some(self.record_readback(&mut enc, &mut stats));
                }
            }
            self.submit("forward pass", enc).await?;
            stats.submits += 1;
        }
        match staging {
            Some(staging) => self.finish_draw(staging, stats),
            None => {
                self.logits_ready = true;
                self.last_step = stats;
            }
        }
        Ok(())
    }

    /// Run `tokens` through the layers in prefill chunks, without the head (a prompt's leading
    /// whole chunks; `submit_step` then takes the rest and samples). `aborted` is polled before
    /// each chunk, and each chunk is recorded while the one before it runs, after waiting for
    /// the one before that: the GPU always has the next chunk queued, and an abort is answered
    /// within one chunk's time instead of after the whole prompt. On an abort, the chunks
    /// already submitted stay in the cache (`position`) and `Error::Aborted` is returned.
    pub async fn prefill(&mut self, tokens: &[u32], aborted: &dyn Fn() -> bool) -> Result<()> {
        if !self.pending.is_empty() {
            return Err(Error::invalid("prefill", format!("{} submitted step(s) have not been read: call read_token first", self.pending.len())));
        }
        self.check_tokens(tokens)?;
        let mut stats = StepStats::default();
        let mut running = None;
        for piece in tokens.chunks(self.options.prefill_chunk as usize) {
            if aborted() {
                return Err(Error::Aborted("prefill"));
            }
            let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("gemma prefill") });
            self.record_layers(&mut enc, Some(piece), &mut stats)?;
            let index = self.submit("prefill", enc).await?;
            stats.submits += 1;
            if let Some(previous) = running.replace(self.ctx.done_signal(index)) {
                self.ctx.wait_for(previous).await?;
            }
        }
        self.last_step = stats;
        Ok(())
    }

    /// The numbers of the engines in this process (or page) that still exist, holding their GPU
    /// memory, each engine numbered when made: for tests that a model's memory is freed (a
    /// garbage collector may free other engines meanwhile, so a test follows its own).
    pub fn live() -> Vec<u64> {
        LIVE_ENGINES.lock().map(|l| l.iter().copied().collect()).unwrap_or_default()
    }

    /// Tokens a prefill chunk holds.
    pub fn prefill_chunk(&self) -> u32 {
        self.options.prefill_chunk
    }

    /// The token of the oldest submitted step (waits for it).
    pub async fn read_token(&mut self) -> Result<u32> {
        Ok(self.read_step().await?.0)
    }

    /// The token of the oldest submitted step, and its log-probabilities where the rules asked
    /// for them when it was submitted.
    pub async fn read_step(&mut self) -> Result<(u32, Option<Logprobs>)> {
        let Some((staging, logprobs)) = self.pending.pop_front() else {
            return Err(Error::invalid("read_token", "no step has been submitted"));
        };
        let id = self.ctx.read_mapped_u32(&self.token_staging[staging]).await?;
        let logprobs = match (logprobs, &self.rules) {
            (Some(k), Some((_, read))) => {
                let bytes = self.ctx.map_read(&read[staging], 4 * (2 + 2 * k as u64)).await?;
                Some(Logprobs::from_words(bytemuck::cast_slice(&bytes), k as usize)?)
            }
            _ => None,
        };
        Ok((id, logprobs))
    }

    /// How many top log-probabilities the rules in force ask of each draw.
    fn logprobs_asked(&self) -> Option<u32> {
        self.rules.as_ref().and_then(|(r, _)| r.rules.top_logprobs)
    }

    /// Apply `rules` to the draws from now on (until called again), for a generation whose
    /// context is `context` (every token in front of the first draw: the repetition penalty
    /// covers them). Default rules cost nothing; the first active ones compile their kernels.
    pub async fn set_logit_rules(&mut self, rules: &LogitRules, context: &[u32]) -> Result<()> {
        rules.validate(self.config.vocab_size)?;
        if !rules.is_active() {
            if let Some((state, _)) = &mut self.rules {
                state.rules = LogitRules::default();
            }
            return Ok(());
        }
        self.ensure_rules().await?;
        let Some((state, _)) = &mut self.rules else { return Ok(()) };
        let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("logit rules") });
        state.begin(&mut enc, &self.ctx, rules, context)?;
        let mut rec = Recorder::begin(&self.ctx, &mut enc, "logit rules");
        state.record_begin(&mut rec)?;
        drop(rec);
        self.ctx.submit_checked("logit rules", enc).await?;
        Ok(())
    }

    /// Build the logit rules' state on first use (compiling their kernels).
    async fn ensure_rules(&mut self) -> Result<()> {
        if self.rules.is_none() {
            let ops = LogitOps::new(&self.ctx).await?;
            let state = ops.bind(&self.ctx, &self.acts.logits, &self.acts.ids, self.config.vocab_size, self.max_context().saturating_add(1))?;
            let read = |label| {
                self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: 4 * LOGPROB_WORDS,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            };
            self.rules = Some((state, [read("logprobs read-back 0"), read("logprobs read-back 1")]));
        }
        Ok(())
    }

    /// Drop the newest submitted single-token step unread: its position leaves the cache (the
    /// slot it wrote is overwritten by the next token there) and its sampled token is
    /// forgotten. Nothing waits for the GPU.
    pub fn discard_pending(&mut self) {
        if self.pending.pop_back().is_some() {
            // (With penalties on, the step recorded its draw; the next generation starts the
            // record afresh, and nothing draws after a discard within one.)
            self.pos = self.pos.saturating_sub(1);
            self.sampled_on_gpu = false;
            // The step's staging buffer is free again (it was never mapped).
            self.next_staging = (self.next_staging + self.token_staging.len() - 1) % self.token_staging.len();
        }
    }

    /// Submitted steps whose tokens have not been read.
    pub fn pending_steps(&self) -> usize {
        self.pending.len()
    }

    /// Logits (after the final soft-cap) for every position of `tokens`, appended to the cache:
    /// `[tokens.len() * vocab]`. Runs one token at a time when `decode` is true (through the
    /// decode kernels and the cache), else in prefill chunks. Reads the logits back, so it is
    /// for evaluation and tests, not for generation.
    pub async fn logits(&mut self, tokens: &[u32], decode: bool) -> Result<Vec<f32>> {
        if !self.pending.is_empty() {
            return Err(Error::invalid("logits", "submitted steps have not been read: call read_token first"));
        }
        // The result is one f32 per (position, vocabulary entry): refuse what no browser can
        // allocate (2048 positions of a 262k vocabulary would be 2 GiB) before computing it.
        let bytes = tokens.len() as u64 * self.config.vocab_size as u64 * 4;
        if bytes > MAX_LOGITS_BYTES {
            let most = MAX_LOGITS_BYTES / (self.config.vocab_size as u64 * 4);
            return Err(Error::invalid(
                "logits",
                format!(
                    "{} positions of a {}-token vocabulary take {} MiB; ask for at most {most} positions per call",
                    tokens.len(),
                    self.config.vocab_size,
                    bytes >> 20
                ),
            ));
        }
        self.check_tokens(tokens)?;
        let head = match self.eval_head.take() {
            Some(head) => head,
            None => EvalHead::new(&self.ctx, &self.ops, &self.config, &self.weights, self.options.prefill_chunk).await?,
        };
        let out = self.logits_with(&head, tokens, decode).await;
        self.eval_head = Some(head);
        out
    }

    async fn logits_with(&mut self, head: &EvalHead, tokens: &[u32], decode: bool) -> Result<Vec<f32>> {
        let v = self.config.vocab_size as u64;
        let too_many = || Error::invalid("tokens", format!("the logits of {} tokens do not fit in memory: ask for fewer at a time", tokens.len()));
        let mut out = Vec::new();
        out.try_reserve_exact(tokens.len().checked_mul(v as usize).ok_or_else(too_many)?).map_err(|_| too_many())?;
        let bytes_per_row = self.config.hidden_size as u64 * 4;
        let chunk = if decode { 1 } else { self.options.prefill_chunk as usize };
        let mut stats = StepStats::default();
        for piece in tokens.chunks(chunk) {
            let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("logits") });
            self.record_layers(&mut enc, Some(piece), &mut stats)?;
            self.submit("forward pass", enc).await?;
            // The head runs on a few rows at a time (the logits of a whole chunk would not
            // fit one binding for a 256k vocabulary).
            for first in (0..piece.len() as u32).step_by(head.rows as usize) {
                let n = (piece.len() as u32 - first).min(head.rows);
                let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("logits head") });
                enc.copy_buffer_to_buffer(&self.acts.h, first as u64 * bytes_per_row, &head.h_rows, 0, n as u64 * bytes_per_row);
                let mut rec = Recorder::begin(&self.ctx, &mut enc, "eval head").profiled(self.profiler.as_mut());
                head.record(&mut rec, n)?;
                stats.add(&rec);
                drop(rec);
                self.submit("LM head", enc).await?;
                out.extend(self.ctx.read_back::<f32>(&head.logits_rows, 0, n as u64 * v).await?);
            }
        }
        Ok(out)
    }

    /// The residual stream `x` of the last `rows` processed tokens (for layer-by-layer tests:
    /// run with a model truncated to n layers to see layer n's output).
    pub async fn residual(&self, rows: u32) -> Result<Vec<f32>> {
        self.ctx.read_back::<f32>(&self.acts.x, 0, rows as u64 * self.config.hidden_size as u64).await
    }
}
