//! One decoder layer and the head on the GPU: the kernels bound to a layer's weights, its KV
//! cache and the activations once at load (`bind`), and recorded per step (`record`) in the
//! order of `docs/model.md` §3, under the same step names as the CPU twin's
//! `CpuModel::layer` / `CpuModel::head`.

use crate::error::{Error, Result};
use crate::gpu::weights::GpuWeight;
use crate::gpu::{GpuContext, Recorder};
use crate::model::activations::Activations;
use crate::model::config::ModelConfig;
use crate::model::weights::{LayerWeights, Weights};
use crate::ops::attention::{AttentionBinding, AttentionShape};
use crate::ops::embedding::EmbeddingBinding;
use crate::ops::fused::{GeGluMatVec, QkNormRopeBinding, QkvMatVec, QkvShape};
use crate::ops::geglu::GeGluBinding;
use crate::ops::kv_cache::{KvCache, KvWriteBinding};
use crate::ops::linear::{MatMul, MatMulBinding, MatVecBinding};
use crate::ops::logits::LogitState;
use crate::ops::rmsnorm::{AddNormBinding, RmsNormBinding};
use crate::ops::rope::{RopeBinding, RopeTable};
use crate::ops::sample::{Sampler, SamplerBinding, Sampling};
use crate::ops::Ops;

/// A weight bound both ways: tiled matmul for a block of rows (prefill), matrix-vector for
/// one row (decode).
#[derive(Debug)]
pub struct Linear {
    prefill: MatMulBinding,
    decode: MatVecBinding,
}

impl Linear {
    fn bind(ctx: &GpuContext, ops: &Ops, x: &wgpu::Buffer, w: &GpuWeight, y: &wgpu::Buffer) -> Result<Self> {
        let k = ops.for_weight(w.dtype)?;
        Ok(Self { prefill: k.matmul()?.bind(ctx, x, w, y)?, decode: k.matvec.bind(ctx, x, w, y)? })
    }

    /// `t` rows of the input through the weight.
    fn dispatch(&self, rec: &mut Recorder<'_>, t: u32) -> Result<()> {
        if t == 1 {
            self.decode.dispatch(rec)
        } else {
            self.prefill.dispatch(rec, t)
        }
    }
}

/// One decoder layer's kernels, bound; fields in forward-pass order. Each sub-block ends with
/// one `add_rmsnorm` dispatch that adds its normed output into the residual stream and norms
/// the stream for what comes next: the MLP, the next layer's attention, or (after the last
/// layer) the LM head, whose final norm it applies. Only the first layer norms its own input.
#[derive(Debug)]
pub struct LayerBindings {
    /// The first layer only: h = norm(x) of the embedding.
    input_norm: Option<RmsNormBinding>,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    /// Gemma 3: q and k normed per head, from `q_pre`/`k_pre` into `q`/`k`.
    qk_norm: Option<(RmsNormBinding, RmsNormBinding)>,
    rope_q: RopeBinding,
    rope_k: RopeBinding,
    kv_write: KvWriteBinding,
    pub(crate) attention: AttentionBinding,
    o_proj: Linear,
    /// x += post_attention_norm(o); h = pre_feedforward_norm(x).
    post_attention: AddNormBinding,
    gate_proj: Linear,
    up_proj: Linear,
    geglu: GeGluBinding,
    down_proj: Linear,
    /// x += post_feedforward_norm(o); h = the next layer's input norm of x (the final norm
    /// after the last layer).
    post_feedforward: AddNormBinding,
    /// Decode (one token) through the fused products, where this layer's weights are joined:
    /// q/k/v with RoPE and the cache write (not with per-head q/k norms), gate/up with GeGLU.
    fused_qkv: Option<QkvMatVec>,
    /// Gemma 3's: the plain product over the joined q/k/v weight into `qkv_pre`, then the
    /// per-head norms, RoPE and the cache write in one kernel.
    fused_qk_norm: Option<(MatVecBinding, QkNormRopeBinding)>,
    fused_geglu: Option<GeGluMatVec>,
    /// This layer's attention window (0 = global), from the config.
    window: u32,
}

impl LayerBindings {
    /// Bind layer `l`'s weights (and the norm that follows it: the next layer's input norm or
    /// the final norm), cache and RoPE table to the activations; `step` is the engine's
    /// per-step uniform (`ops::StepParams`).
    #[allow(clippy::too_many_arguments)] // each is a different thing a layer binds; a struct would only rename them
    pub fn bind(
        ctx: &GpuContext,
        ops: &Ops,
        c: &ModelConfig,
        l: usize,
        a: &Activations,
        weights: &Weights,
        cache: &KvCache,
        rope: &RopeTable,
        step: &wgpu::Buffer,
    ) -> Result<Self> {
        let w: &LayerWeights = weights.layers.get(l).ok_or_else(|| Error::Format(format!("layer {l} has no weights")))?;
        let next_norm = weights.layers.get(l + 1).map_or(&weights.norm, |next| &next.input_layernorm);
        // With per-head q/k norms the projections write q_pre/k_pre and the norms q/k.
        let (q_out, k_out) = if c.qk_norm { (&a.q_pre, &a.k_pre) } else { (&a.q, &a.k) };
        let qk_norm = match &w.qk_norm {
            Some((qn, kn)) if c.qk_norm => Some((ops.rmsnorm.bind(ctx, &a.q_pre, qn, &a.q, false), ops.rmsnorm.bind(ctx, &a.k_pre, kn, &a.k, false))),
            None if !c.qk_norm => None,
            _ => return Err(Error::Format(format!("layer {l}: q/k norm weights do not match the config's qk_norm"))),
        };
        let linear = |x: &wgpu::Buffer, w: &GpuWeight, y: &wgpu::Buffer| Linear::bind(ctx, ops, x, w, y);
        let shape = QkvShape { n_heads: c.num_attention_heads, n_kv_heads: c.num_key_value_heads, head_dim: c.head_dim };
        // Fused where the weights are joined, the kernels were compiled for them (rows of whole
        // chunks) and the shapes suit them: no per-head q/k norm, heads of a multiple of 8 (RoPE
        // pairs by fours), an intermediate size of a multiple of 4 (outputs by fours).
        let fused_qkv = match (&w.qkv, ops.fused_for(w.q_proj.dtype, w.q_proj.cols)) {
            (Some(qkv), Some(f)) if !c.qk_norm && c.head_dim.is_multiple_of(8) => Some(f.bind_qkv(ctx, &a.h, qkv, &a.q, cache, rope, step, shape)?),
            _ => None,
        };
        let fused_qk_norm = match (&w.qkv, &w.qk_norm, &ops.qk_norm_rope) {
            (Some(qkv), Some(norms), Some(op)) if c.qk_norm && c.head_dim.is_multiple_of(4) => {
                let product = ops.for_weight(qkv.dtype)?.matvec.bind(ctx, &a.h, qkv, &a.qkv_pre)?;
                let (qn, kn) = norms;
                Some((product, op.bind(ctx, &a.qkv_pre, (qn, kn), &a.q, cache, rope, step, (shape, c.rms_norm_eps))?))
            }
            _ => None,
        };
        let fused_geglu = match (&w.gate_up, ops.fused_for(w.gate_proj.dtype, w.gate_proj.cols)) {
            (Some(gate_up), Some(f)) if c.intermediate_size.is_multiple_of(4) => Some(f.bind_geglu(ctx, &a.h, gate_up, &a.act)?),
            _ => None,
        };
        Ok(Self {
            input_norm: (l == 0).then(|| ops.rmsnorm.bind(ctx, &a.x, &w.input_layernorm, &a.h, false)),
            q_proj: linear(&a.h, &w.q_proj, q_out)?,
            k_proj: linear(&a.h, &w.k_proj, k_out)?,
            v_proj: linear(&a.h, &w.v_proj, &a.v)?,
            qk_norm,
            rope_q: ops.rope.bind(ctx, &a.q, rope),
            rope_k: ops.rope.bind(ctx, &a.k, rope),
            kv_write: ops.kv_write.bind(ctx, &a.k, &a.v, cache)?,
            attention: ops.attention.bind(ctx, &a.q, cache, &a.attn, &a.attn_part, step)?,
            o_proj: linear(&a.attn, &w.o_proj, &a.o)?,
            post_attention: ops.rmsnorm.bind_add_norm(ctx, &a.o, &w.post_attention_layernorm, &a.x, &w.pre_feedforward_layernorm, &a.h),
            gate_proj: linear(&a.h, &w.gate_proj, &a.gate)?,
            up_proj: linear(&a.h, &w.up_proj, &a.up)?,
            geglu: ops.geglu.bind(ctx, &a.gate, &a.up, &a.act),
            down_proj: linear(&a.act, &w.down_proj, &a.o)?,
            post_feedforward: ops.rmsnorm.bind_add_norm(ctx, &a.o, &w.post_feedforward_layernorm, &a.x, next_norm, &a.h),
            fused_qkv,
            fused_qk_norm,
            fused_geglu,
            window: c.window(l),
        })
    }

    /// Record this layer for `t` rows at positions `pos..pos + t` (`docs/model.md` §3.3):
    /// pre-norm, attention, post-norm added to the residual; the same around the MLP. Leaves
    /// the next layer's normed input (or the final norm's output) in `h`. One token takes the
    /// fused products when the layer has them and `fused` is set.
    pub fn record(&self, rec: &mut Recorder<'_>, c: &ModelConfig, t: u32, pos: u32, fused: bool) -> Result<()> {
        let (h, d, eps) = (c.hidden_size, c.head_dim, c.rms_norm_eps);
        let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
        if let Some(input_norm) = &self.input_norm {
            input_norm.dispatch(rec, t, h, eps)?; // h = norm(x)
        }
        match (&self.fused_qkv, &self.fused_qk_norm) {
            (Some(qkv), _) if t == 1 && fused => qkv.dispatch(rec, pos)?, // q, k, v, RoPE, KV write
            (_, Some((product, norm_rope))) if t == 1 && fused => {
                product.dispatch(rec)?; // q, k, v
                norm_rope.dispatch(rec, pos)?; // q/k norms, RoPE, KV write
            }
            _ => {
                self.q_proj.dispatch(rec, t)?;
                self.k_proj.dispatch(rec, t)?;
                self.v_proj.dispatch(rec, t)?;
                if let Some((q_norm, k_norm)) = &self.qk_norm {
                    q_norm.dispatch(rec, t * nh, d, eps)?;
                    k_norm.dispatch(rec, t * nkv, d, eps)?;
                }
                self.rope_q.dispatch(rec, t, nh, pos)?;
                self.rope_k.dispatch(rec, t, nkv, pos)?;
                self.kv_write.dispatch(rec, t, pos)?;
            }
        }
        let shape = AttentionShape {
            n_queries: t,
            q_pos_start: pos,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: d,
            window: self.window,
            scale: c.attn_scale(),
            softcap: c.attn_logit_softcapping,
        };
        self.attention.dispatch(rec, &shape)?;
        self.o_proj.dispatch(rec, t)?;
        self.post_attention.dispatch(rec, t, h, eps)?; // x += norm(o); h = norm(x)
        match &self.fused_geglu {
            Some(geglu) if t == 1 && fused => geglu.dispatch(rec, pos)?, // gate, up, GeGLU
            _ => {
                self.gate_proj.dispatch(rec, t)?;
                self.up_proj.dispatch(rec, t)?;
                self.geglu.dispatch(rec, t * c.intermediate_size)?;
            }
        }
        self.down_proj.dispatch(rec, t)?;
        self.post_feedforward.dispatch(rec, t, h, eps) // x += norm(o); h = next norm(x)
    }
}

/// The embedding before the layers, and the head after them: LM head (the tied embedding;
/// Gemma 2's final soft-cap applied as it writes each logit) on a row of `h` that the last
/// layer left final-normed, and the sampler.
#[derive(Debug)]
pub struct HeadBindings {
    embed: EmbeddingBinding,
    lm_head: MatVecBinding,
    sampler: SamplerBinding,
}

impl HeadBindings {
    pub fn bind(ctx: &GpuContext, ops: &Ops, c: &ModelConfig, a: &Activations, w: &Weights) -> Result<Self> {
        let k = ops.for_weight(w.embed_tokens.dtype)?;
        Ok(Self {
            embed: k.embedding.bind(ctx, &a.ids, &w.embed_tokens, &a.x)?,
            lm_head: k.matvec.bind(ctx, &a.h_last, &w.embed_tokens, &a.logits)?.with_softcap(c.final_logit_softcapping.max(0.0))?,
            sampler: ops.sample.bind(ctx, &a.logits, &a.ids)?,
        })
    }

    /// Times the head reads or writes the whole row of logits: the LM head writes it (already
    /// soft-capped), the sampler reads it (`Sampler::passes`).
    pub fn logit_passes(sample: Option<&Sampling>) -> u32 {
        1 + sample.map_or(0, Sampler::passes)
    }

    /// x = embedding(ids) * sqrt(H) for `t` tokens.
    pub fn record_embed(&self, rec: &mut Recorder<'_>, c: &ModelConfig, t: u32) -> Result<()> {
        self.embed.dispatch(rec, t, c.embed_scale())
    }

    /// Logits of `h_last` (LM head with the final soft-cap), then, with `sample`,
    /// the next token drawn into `ids[0]` (`counter` tells successive draws of one seed apart).
    /// With `rules`, the penalties and bias go between the two, and the draw is recorded (and
    /// its log-probabilities computed) after it.
    pub fn record(&self, rec: &mut Recorder<'_>, c: &ModelConfig, sample: Option<(&Sampling, u32)>, rules: Option<&mut LogitState>) -> Result<()> {
        self.lm_head.dispatch(rec)?;
        match sample {
            Some((sampling, counter)) => self.record_draw(rec, c, sampling, counter, rules),
            None => Ok(()),
        }
    }

    /// The draw from the logits the LM head wrote (with the rules around it).
    pub fn record_draw(&self, rec: &mut Recorder<'_>, c: &ModelConfig, sampling: &Sampling, counter: u32, rules: Option<&mut LogitState>) -> Result<()> {
        match rules {
            Some(rules) => {
                rules.record_adjust(rec)?;
                self.sampler.dispatch(rec, c.vocab_size, sampling, counter)?;
                rules.record_after(rec)
            }
            None => self.sampler.dispatch(rec, c.vocab_size, sampling, counter),
        }
    }
}

/// The head for every row of a prompt chunk at once, for `Engine::logits` (evaluation and
/// tests): up to `rows` rows of `h` (final-normed by the last layer) are copied to `h_rows`,
/// multiplied by the LM head
/// as a prompt chunk's rows are by a layer's weights (`MatMulBinding`: blocks of `MV_MB` rows
/// through the matrix-vector kernel up to 32 rows, 64-row tiles beyond, so the embedding is
/// read once per block or tile rather than once per row), soft-capped as they are written into
/// `logits_rows`.
/// Built on the first `logits` call, so generation never allocates it.
#[derive(Debug)]
pub struct EvalHead {
    pub rows: u32,
    pub h_rows: wgpu::Buffer,
    pub logits_rows: wgpu::Buffer,
    lm_head: MatMulBinding,
}

impl EvalHead {
    /// Rows per batch: at most 64 (one matmul tile; 64 MiB of logits for a 256k vocabulary),
    /// and no more than one storage binding holds.
    pub const MAX_ROWS: u32 = 64;

    pub async fn new(ctx: &GpuContext, ops: &Ops, c: &ModelConfig, w: &Weights, chunk: u32) -> Result<Self> {
        let per_row = 4 * c.vocab_size as u64;
        let fit = (ctx.max_storage_binding() / per_row.max(1)).min(Self::MAX_ROWS as u64) as u32;
        let rows = chunk.min(fit).max(1);
        let h = c.hidden_size as u64;
        let h_rows = ctx.storage_zeroed("eval h rows", 4 * rows as u64 * h)?;
        let logits_rows = ctx.storage_zeroed("eval logits", rows as u64 * per_row)?;
        let embed = &w.embed_tokens;
        // The prefill kernels of the embedding's type, when the layers share it; else its own.
        let shared = ops.for_weight(embed.dtype).ok().and_then(|k| k.matmul().ok()).and_then(|m| m.bind(ctx, &h_rows, embed, &logits_rows).ok());
        let lm_head = match shared {
            Some(bound) => bound,
            None => MatMul::for_cols(ctx, embed.dtype, &[embed.cols]).await?.bind(ctx, &h_rows, embed, &logits_rows)?,
        };
        Ok(Self { rows, lm_head: lm_head.with_softcap(c.final_logit_softcapping.max(0.0))?, h_rows, logits_rows })
    }

    /// Logits of the first `n` rows of `h_rows` into `logits_rows` (LM head with the final
    /// soft-cap), as `HeadBindings::record` does for one row.
    pub fn record(&self, rec: &mut Recorder<'_>, n: u32) -> Result<()> {
        if n > self.rows {
            return Err(Error::shape("eval head", format!("{n} rows, but it was built for {}", self.rows)));
        }
        self.lm_head.dispatch(rec, n)
    }

    pub fn bytes(&self) -> u64 {
        self.h_rows.size() + self.logits_rows.size()
    }
}

/// One KV cache per layer. A sliding layer keeps a ring of `window + chunk - 1` positions:
/// enough for the oldest key the first query of a prefill chunk still sees.
pub fn allocate_caches(ctx: &GpuContext, c: &ModelConfig, max_context: u32, chunk: u32, kv_f32: bool) -> Result<Vec<KvCache>> {
    (0..c.num_hidden_layers as usize)
        .map(|l| {
            let window = c.window(l);
            let capacity = if window > 0 { max_context.min(window + chunk - 1) } else { max_context };
            KvCache::with_type(ctx, &format!("kv{l}"), capacity, c.kv_width(), kv_f32)
        })
        .collect()
}

/// One RoPE table per distinct (base, factor) among the layers (Gemma 3 has two), and which
/// table each layer uses.
pub fn rope_tables(ctx: &GpuContext, c: &ModelConfig, max_context: u32) -> Result<(Vec<RopeTable>, Vec<usize>)> {
    let mut keys: Vec<(f32, f32)> = Vec::new();
    let mut of_layer = Vec::new();
    for l in 0..c.num_hidden_layers as usize {
        let key = c.rope(l);
        let i = match keys.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                keys.push(key);
                keys.len() - 1
            }
        };
        of_layer.push(i);
    }
    let tables = keys.iter().map(|&(theta, factor)| RopeTable::scaled(ctx, c.head_dim, theta, factor, max_context)).collect::<Result<Vec<_>>>()?;
    Ok((tables, of_layer))
}
