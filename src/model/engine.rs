//! The Gemma 2 forward pass on the GPU (spec §3), for a block of prompt tokens (prefill, tiled
//! matmuls) or one token (decode, matrix-vector kernels), with a KV cache allocated once and a
//! sampler that leaves only the token id to read back.
//!
//! Everything a step needs — buffers, bind groups, uniform buffers, pipelines — is created at
//! load; a decode step writes a few uniforms, records one command buffer and submits it once.

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::model::config::ModelConfig;
use crate::model::weights::Weights;
use crate::ops::attention::{AttentionBinding, AttentionShape};
use crate::ops::embedding::EmbeddingBinding;
use crate::ops::geglu::GeGluBinding;
use crate::ops::kv_cache::{KvCache, KvWriteBinding};
use crate::ops::linear::{LinearBinding, MatMulBinding, MatVecParams};
use crate::ops::rmsnorm::RmsNormBinding;
use crate::ops::rope::{RopeBinding, RopeTable};
use crate::ops::sample::{SamplerBinding, Sampling};
use crate::ops::softcap::SoftCapBinding;
use crate::ops::Ops;
use crate::quant::DType;

/// Load-time options of the engine (the model's own settings live in `ModelConfig`).
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// KV-cache length; prompts plus generated tokens must fit. Default 4096, at most the
    /// model's `max_position_embeddings`.
    pub max_context: u32,
    /// Prompt tokens per prefill pass (bounds activation memory).
    pub prefill_chunk: u32,
    /// Keep K/V in f32 instead of fp16: twice the cache memory, no rounding. For checking
    /// numerics against an f32 reference; fp16 is what users want.
    pub kv_f32: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { max_context: 4096, prefill_chunk: 128, kv_f32: false }
    }
}

/// A weight bound both ways: tiled matmul for prefill, matrix-vector for decode.
#[derive(Debug)]
struct Linear {
    prefill: MatMulBinding,
    decode: LinearBinding<MatVecParams>,
}

#[derive(Debug)]
struct LayerBindings {
    input_norm: RmsNormBinding,
    q: Linear,
    k: Linear,
    v: Linear,
    /// Gemma 3: q and k normed per head, from `q_pre`/`k_pre` into `q`/`k`.
    qk_norm: Option<(RmsNormBinding, RmsNormBinding)>,
    rope_q: RopeBinding,
    rope_k: RopeBinding,
    kv_write: KvWriteBinding,
    attention: AttentionBinding,
    o: Linear,
    post_attention_norm: RmsNormBinding,
    pre_feedforward_norm: RmsNormBinding,
    gate: Linear,
    up: Linear,
    geglu: GeGluBinding,
    down: Linear,
    post_feedforward_norm: RmsNormBinding,
}

/// Activation buffers, sized for `prefill_chunk` rows (decode uses row 0).
#[derive(Debug)]
struct Activations {
    ids: wgpu::Buffer, // [C] u32; the sampler writes the next token into element 0
    x: wgpu::Buffer,   // [C, H] residual stream
    h: wgpu::Buffer,   // [C, H] normed input of a sub-block
    q: wgpu::Buffer,   // [C, NH*D]
    k: wgpu::Buffer,   // [C, NKV*D]
    v: wgpu::Buffer,   // [C, NKV*D]
    /// Gemma 3: q and k before their per-head norms (absent otherwise).
    qk_pre: Option<(wgpu::Buffer, wgpu::Buffer)>,
    attn: wgpu::Buffer,          // [C, NH*D]
    o: wgpu::Buffer,             // [C, H] attention / MLP branch output
    gate: wgpu::Buffer,          // [C, I]
    up: wgpu::Buffer,            // [C, I]
    act: wgpu::Buffer,           // [C, I]
    x_last: wgpu::Buffer,        // [H] the last row of x
    h_last: wgpu::Buffer,        // [H]
    logits: wgpu::Buffer,        // [V]
    token_staging: wgpu::Buffer, // 4 bytes, MAP_READ
}

/// Weight-reading kernels for a matrix type other than the layers' (their bindings carry their
/// pipelines, so dispatching goes through the main `Ops`).
struct WeightKernels {
    dtype: DType,
    embedding: crate::ops::embedding::Embedding,
    matmul: crate::ops::linear::MatMul,
    matvec: crate::ops::linear::MatVec,
}

/// Per-call statistics of the last step, for benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepStats {
    pub submits: u32,
    pub dispatches: u32,
    pub readback_bytes: u64,
}

pub struct Engine {
    pub ctx: GpuContext,
    pub config: ModelConfig,
    pub options: EngineOptions,
    ops: Ops,
    weights: Weights,
    _ropes: Vec<RopeTable>,
    caches: Vec<KvCache>,
    acts: Activations,
    layers: Vec<LayerBindings>,
    embed: EmbeddingBinding,
    final_norm: RmsNormBinding,
    lm_head: LinearBinding<MatVecParams>,
    final_softcap: SoftCapBinding,
    sampler: SamplerBinding,
    /// Tokens in the KV cache.
    pos: u32,
    pub last_step: StepStats,
}

fn f32s(n: u32) -> u64 {
    n as u64 * 4
}

impl Engine {
    pub async fn new(ctx: GpuContext, config: ModelConfig, weights: Weights, options: EngineOptions) -> Result<Self> {
        let c = &config;
        if options.max_context == 0 || options.max_context > c.max_position_embeddings {
            return Err(Error::invalid(
                "max_context",
                format!("must be between 1 and the model's max_position_embeddings ({}), got {}", c.max_position_embeddings, options.max_context),
            ));
        }
        let chunk = options.prefill_chunk.clamp(1, options.max_context);
        let ops = Ops::new(&ctx, weights.dtype).await?;
        // Kernels for the other matrix types present (an fp16 embedding with int4 layers).
        let mut other = Vec::new();
        let all = std::iter::once(&weights.embed_tokens)
            .chain(weights.layers.iter().flat_map(|l| [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj]));
        for w in all {
            if w.dtype != weights.dtype && !other.iter().any(|k: &WeightKernels| k.dtype == w.dtype) {
                other.push(WeightKernels {
                    dtype: w.dtype,
                    embedding: crate::ops::embedding::Embedding::new(&ctx, w.dtype).await?,
                    matmul: crate::ops::linear::MatMul::new(&ctx, w.dtype).await?,
                    matvec: crate::ops::linear::MatVec::new(&ctx, w.dtype).await?,
                });
            }
        }
        let kernels = |d: DType| match other.iter().find(|k| k.dtype == d) {
            Some(k) => (&k.embedding, &k.matmul, &k.matvec),
            None => (&ops.embedding, &ops.matmul, &ops.matvec),
        };
        let (h, i, qw, kvw, v) = (c.hidden_size, c.intermediate_size, c.q_width(), c.kv_width(), c.vocab_size);
        let z = |label: &str, bytes: u64| ctx.storage_zeroed(label, bytes);
        let acts = Activations {
            ids: z("ids", f32s(chunk))?,
            x: z("x", f32s(chunk * h))?,
            h: z("h", f32s(chunk * h))?,
            q: z("q", f32s(chunk * qw))?,
            k: z("k", f32s(chunk * kvw))?,
            v: z("v", f32s(chunk * kvw))?,
            qk_pre: if c.qk_norm { Some((z("q_pre", f32s(chunk * qw))?, z("k_pre", f32s(chunk * kvw))?)) } else { None },
            attn: z("attn", f32s(chunk * qw))?,
            o: z("o", f32s(chunk * h))?,
            gate: z("gate", f32s(chunk * i))?,
            up: z("up", f32s(chunk * i))?,
            act: z("act", f32s(chunk * i))?,
            x_last: z("x_last", f32s(h))?,
            h_last: z("h_last", f32s(h))?,
            logits: z("logits", f32s(v))?,
            token_staging: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("token read-back"),
                size: 4,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        };
        // One RoPE table per distinct (base, factor) among the layers (Gemma 3 has two).
        let mut rope_keys: Vec<(f32, f32)> = Vec::new();
        for l in 0..c.num_hidden_layers as usize {
            if !rope_keys.contains(&c.rope(l)) {
                rope_keys.push(c.rope(l));
            }
        }
        let ropes =
            rope_keys.iter().map(|&(theta, factor)| RopeTable::scaled(&ctx, c.head_dim, theta, factor, options.max_context)).collect::<Result<Vec<_>>>()?;
        let rope_of = |l: usize| rope_keys.iter().position(|k| *k == c.rope(l)).map(|i| &ropes[i]);
        let mut caches = Vec::new();
        for l in 0..c.num_hidden_layers as usize {
            // A sliding layer keeps a ring of window + chunk - 1 positions: enough for the
            // oldest key the first query of a prefill chunk still sees.
            let window = c.window(l);
            let capacity = if window > 0 { options.max_context.min(window + chunk - 1) } else { options.max_context };
            caches.push(KvCache::with_type(&ctx, &format!("kv{l}"), capacity, kvw, options.kv_f32)?);
        }
        let lin = |x: &wgpu::Buffer, w: &crate::gpu::weights::GpuWeight, y: &wgpu::Buffer| -> Result<Linear> {
            let (_, matmul, matvec) = kernels(w.dtype);
            Ok(Linear { prefill: matmul.bind(&ctx, x, w, y)?, decode: matvec.bind(&ctx, x, w, y)? })
        };
        let a = &acts;
        let mut layers = Vec::new();
        for (l, w) in weights.layers.iter().enumerate() {
            let rope = rope_of(l).ok_or_else(|| Error::invalid("rope", "no table for a layer"))?;
            let (q_out, k_out) = match &a.qk_pre {
                Some((qp, kp)) => (qp, kp),
                None => (&a.q, &a.k),
            };
            let qk_norm = match (&w.qk_norm, &a.qk_pre) {
                (Some((qn, kn)), Some((qp, kp))) => Some((ops.rmsnorm.bind(&ctx, qp, qn, &a.q, false), ops.rmsnorm.bind(&ctx, kp, kn, &a.k, false))),
                (None, None) => None,
                _ => return Err(Error::Format(format!("layer {l}: q/k norm weights do not match the config's qk_norm"))),
            };
            layers.push(LayerBindings {
                input_norm: ops.rmsnorm.bind(&ctx, &a.x, &w.input_layernorm, &a.h, false),
                q: lin(&a.h, &w.q_proj, q_out)?,
                k: lin(&a.h, &w.k_proj, k_out)?,
                v: lin(&a.h, &w.v_proj, &a.v)?,
                qk_norm,
                rope_q: ops.rope.bind(&ctx, &a.q, rope),
                rope_k: ops.rope.bind(&ctx, &a.k, rope),
                kv_write: ops.kv_write.bind(&ctx, &a.k, &a.v, &caches[l]),
                attention: ops.attention.bind(&ctx, &a.q, &caches[l], &a.attn),
                o: lin(&a.attn, &w.o_proj, &a.o)?,
                post_attention_norm: ops.rmsnorm.bind(&ctx, &a.o, &w.post_attention_layernorm, &a.x, true),
                pre_feedforward_norm: ops.rmsnorm.bind(&ctx, &a.x, &w.pre_feedforward_layernorm, &a.h, false),
                gate: lin(&a.h, &w.gate_proj, &a.gate)?,
                up: lin(&a.h, &w.up_proj, &a.up)?,
                geglu: ops.geglu.bind(&ctx, &a.gate, &a.up, &a.act),
                down: lin(&a.act, &w.down_proj, &a.o)?,
                post_feedforward_norm: ops.rmsnorm.bind(&ctx, &a.o, &w.post_feedforward_layernorm, &a.x, true),
            });
        }
        let (embedding, _, matvec) = kernels(weights.embed_tokens.dtype);
        let embed = embedding.bind(&ctx, &a.ids, &weights.embed_tokens, &a.x)?;
        let final_norm = ops.rmsnorm.bind(&ctx, &a.x_last, &weights.norm, &a.h_last, false);
        let lm_head = matvec.bind(&ctx, &a.h_last, &weights.embed_tokens, &a.logits)?;
        let final_softcap = ops.softcap.bind(&ctx, &a.logits);
        let sampler = ops.sample.bind(&ctx, &a.logits, &a.ids);
        Ok(Self {
            options: EngineOptions { prefill_chunk: chunk, ..options },
            config,
            ops,
            weights,
            _ropes: ropes,
            caches,
            acts,
            layers,
            embed,
            final_norm,
            lm_head,
            final_softcap,
            sampler,
            pos: 0,
            last_step: StepStats::default(),
            ctx,
        })
    }

    /// Tokens currently in the KV cache.
    pub fn position(&self) -> u32 {
        self.pos
    }

    /// Forget the conversation (the cache is overwritten as new tokens arrive).
    pub fn reset(&mut self) {
        self.pos = 0;
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
                w == 0 || self.pos <= self.options.max_context.min(w + chunk - 1) || self.pos - n < chunk
            })
    }

    pub fn weight_bytes(&self) -> u64 {
        self.weights.bytes
    }

    pub fn kv_cache_bytes(&self) -> u64 {
        self.caches.iter().map(KvCache::bytes).sum()
    }

    pub fn activation_bytes(&self) -> u64 {
        let a = &self.acts;
        let pre = a.qk_pre.as_ref().map_or(0, |(q, k)| q.size() + k.size());
        pre + [&a.ids, &a.x, &a.h, &a.q, &a.k, &a.v, &a.attn, &a.o, &a.gate, &a.up, &a.act, &a.x_last, &a.h_last, &a.logits]
            .iter()
            .map(|b| b.size())
            .sum::<u64>()
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
        if end > self.options.max_context as u64 {
            return Err(Error::ContextOverflow { needed: end, max_context: self.options.max_context, cached: self.pos });
        }
        Ok(())
    }

    /// Record the decoder layers for `t` rows at positions `pos..pos + t`.
    fn record_layers(&self, pass: &mut wgpu::ComputePass<'_>, t: u32, stats: &mut StepStats) -> Result<()> {
        let (ctx, ops, c) = (&self.ctx, &self.ops, &self.config);
        let (h, eps) = (c.hidden_size, c.rms_norm_eps);
        let mut n = 0;
        let mut linear = |pass: &mut wgpu::ComputePass<'_>, l: &Linear| -> Result<()> {
            if t == 1 {
                ops.matvec.dispatch(ctx, pass, &l.decode)?;
                n += l.parts();
            } else {
                ops.matmul.dispatch(ctx, pass, &l.prefill, t)?;
                n += l.parts();
            }
            Ok(())
        };
        let mut fixed = 0;
        for (l, b) in self.layers.iter().enumerate() {
            // spec §3.3: pre-norm, attention, post-norm, residual; then the same around the MLP.
            ops.rmsnorm.dispatch(ctx, pass, &b.input_norm, t, h, eps)?;
            linear(pass, &b.q)?;
            linear(pass, &b.k)?;
            linear(pass, &b.v)?;
            if let Some((qn, kn)) = &b.qk_norm {
                ops.rmsnorm.dispatch(ctx, pass, qn, t * c.num_attention_heads, c.head_dim, eps)?;
                ops.rmsnorm.dispatch(ctx, pass, kn, t * c.num_key_value_heads, c.head_dim, eps)?;
                fixed += 2;
            }
            ops.rope.dispatch(ctx, pass, &b.rope_q, t, c.num_attention_heads, self.pos)?;
            ops.rope.dispatch(ctx, pass, &b.rope_k, t, c.num_key_value_heads, self.pos)?;
            ops.kv_write.dispatch(ctx, pass, &b.kv_write, t, self.pos)?;
            let shape = AttentionShape {
                n_queries: t,
                q_pos_start: self.pos,
                n_heads: c.num_attention_heads,
                n_kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
                window: c.window(l),
                scale: c.attn_scale(),
                softcap: c.attn_logit_softcapping,
            };
            ops.attention.dispatch(ctx, pass, &b.attention, &shape)?;
            linear(pass, &b.o)?;
            ops.rmsnorm.dispatch(ctx, pass, &b.post_attention_norm, t, h, eps)?;
            ops.rmsnorm.dispatch(ctx, pass, &b.pre_feedforward_norm, t, h, eps)?;
            linear(pass, &b.gate)?;
            linear(pass, &b.up)?;
            ops.geglu.dispatch(ctx, pass, &b.geglu, t * c.intermediate_size)?;
            linear(pass, &b.down)?;
            ops.rmsnorm.dispatch(ctx, pass, &b.post_feedforward_norm, t, h, eps)?;
            fixed += 9;
        }
        stats.dispatches += n + fixed;
        Ok(())
    }

    /// Run `tokens` through the model (prefill in chunks, or one decode step for a single
    /// token), then sample the next token on the GPU. Returns the sampled id; 4 bytes are read.
    pub async fn step(&mut self, tokens: &[u32], sampling: &Sampling) -> Result<u32> {
        self.check_tokens(tokens)?;
        sampling.validate()?;
        // Scalars only: no allocation per decoded token.
        let c = &self.config;
        let (embed_scale, h, eps, vocab, final_cap) = (c.embed_scale(), c.hidden_size, c.rms_norm_eps, c.vocab_size, c.final_logit_softcapping);
        let chunk = self.options.prefill_chunk as usize;
        let mut stats = StepStats::default();
        let pieces: Vec<&[u32]> = tokens.chunks(chunk).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let t = piece.len() as u32;
            let last = i + 1 == pieces.len();
            self.ctx.queue.write_buffer(&self.acts.ids, 0, bytemuck::cast_slice(piece));
            let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("gemma step") });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("layers"), timestamp_writes: None });
                self.ops.embedding.dispatch(&self.ctx, &mut pass, &self.embed, t, embed_scale)?;
                stats.dispatches += self.weights.embed_tokens.parts.len() as u32;
                self.record_layers(&mut pass, t, &mut stats)?;
            }
            if last {
                let row = h as u64 * 4;
                enc.copy_buffer_to_buffer(&self.acts.x, (t as u64 - 1) * row, &self.acts.x_last, 0, row);
                {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("head"), timestamp_writes: None });
                    self.ops.rmsnorm.dispatch(&self.ctx, &mut pass, &self.final_norm, 1, h, eps)?;
                    self.ops.matvec.dispatch(&self.ctx, &mut pass, &self.lm_head)?;
                    stats.dispatches += 1 + self.weights.embed_tokens.parts.len() as u32;
                    if final_cap > 0.0 {
                        self.ops.softcap.dispatch(&self.ctx, &mut pass, &self.final_softcap, vocab, final_cap)?;
                        stats.dispatches += 1;
                    }
                    let counter = self.pos + t;
                    self.ops.sample.dispatch(&self.ctx, &mut pass, &self.sampler, vocab, sampling, counter)?;
                    stats.dispatches += 1;
                }
                enc.copy_buffer_to_buffer(&self.acts.ids, 0, &self.acts.token_staging, 0, 4);
            }
            self.ctx.submit_checked("forward pass", enc).await?;
            stats.submits += 1;
            self.pos += t;
        }
        let token = self.ctx.read_mapped_u32(&self.acts.token_staging).await?;
        stats.readback_bytes += 4;
        self.last_step = stats;
        Ok(token)
    }

    /// Logits (after the final soft-cap) for every position of `tokens`, appended to the cache:
    /// `[tokens.len() * vocab]`. Runs one token at a time when `decode` is true (through the
    /// decode kernels and the cache), else in prefill chunks. Reads the logits back, so it is
    /// for evaluation and tests, not for generation.
    pub async fn logits(&mut self, tokens: &[u32], decode: bool) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        let c = self.config.clone();
        let v = c.vocab_size as u64;
        let mut out = Vec::with_capacity(tokens.len() * v as usize);
        let chunk = if decode { 1 } else { self.options.prefill_chunk as usize };
        for piece in tokens.chunks(chunk) {
            let t = piece.len() as u32;
            self.ctx.queue.write_buffer(&self.acts.ids, 0, bytemuck::cast_slice(piece));
            let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("logits") });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("layers"), timestamp_writes: None });
                self.ops.embedding.dispatch(&self.ctx, &mut pass, &self.embed, t, c.embed_scale())?;
                self.record_layers(&mut pass, t, &mut StepStats::default())?;
            }
            self.ctx.submit_checked("forward pass", enc).await?;
            self.pos += t;
            // The LM head runs row by row through the decode path (the logits of a whole chunk
            // would not fit one binding for a 256k vocabulary).
            for row in 0..t as u64 {
                let h = c.hidden_size as u64 * 4;
                let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("logits head") });
                enc.copy_buffer_to_buffer(&self.acts.x, row * h, &self.acts.x_last, 0, h);
                {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("head"), timestamp_writes: None });
                    self.ops.rmsnorm.dispatch(&self.ctx, &mut pass, &self.final_norm, 1, c.hidden_size, c.rms_norm_eps)?;
                    self.ops.matvec.dispatch(&self.ctx, &mut pass, &self.lm_head)?;
                    if c.final_logit_softcapping > 0.0 {
                        self.ops.softcap.dispatch(&self.ctx, &mut pass, &self.final_softcap, c.vocab_size, c.final_logit_softcapping)?;
                    }
                }
                self.ctx.submit_checked("LM head", enc).await?;
                out.extend(self.ctx.read_back::<f32>(&self.acts.logits, 0, v).await?);
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

impl Linear {
    /// Dispatches this weight costs (one per part, either kernel).
    fn parts(&self) -> u32 {
        self.decode.parts() as u32
    }
}
