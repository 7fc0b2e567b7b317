//! A CPU twin of the whole forward pass, composed from `reference` kernels in the order of
//! `docs/model.md` §3, over the same dequantized weights the GPU reads: `layer` and `head`
//! read side by side with `model::layer`'s GPU recording. Slow; for tests on tiny models.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::format::Manifest;
use crate::model::config::ModelConfig;
use crate::model::options::KvType;
use crate::model::tensors::{self, LayerTensor as T};
use crate::quant::{DType, Packed};
use crate::reference as r;

pub struct CpuModel {
    pub config: ModelConfig,
    tensors: HashMap<String, Vec<f32>>,
}

/// What a CPU forward pass produced for every position.
pub struct CpuOutput {
    /// Residual stream after each layer: `layers[l]` is [T, H].
    pub layers: Vec<Vec<f32>>,
    /// [T, V], after the final soft-cap.
    pub logits: Vec<f32>,
}

impl CpuModel {
    /// Dequantize every tensor of a model; `shard(i)` returns shard i's bytes.
    pub fn from_manifest(manifest: &Manifest, shard: &dyn Fn(usize) -> Result<Vec<u8>>) -> Result<Self> {
        let shards: Vec<Vec<u8>> = (0..manifest.shards.len()).map(shard).collect::<Result<_>>()?;
        let mut tensors = HashMap::new();
        for t in &manifest.tensors {
            let mut values = Vec::with_capacity(t.shape[0] as usize * t.shape[1] as usize);
            for p in &t.parts {
                let bytes = shards
                    .get(p.shard as usize)
                    .and_then(|s| s.get(p.offset as usize..(p.offset + p.length) as usize))
                    .ok_or_else(|| Error::Format(format!("{}: part outside its shard", t.name)))?;
                let words = bytemuck::pod_collect_to_vec::<u8, u32>(bytes);
                values.extend(Packed { dtype: DType::from(t.dtype), rows: p.rows as usize, cols: t.shape[1] as usize, words }.unpack());
            }
            tensors.insert(t.name.clone(), values);
        }
        for (name, _) in tensors::table(&manifest.config) {
            if !tensors.contains_key(&name) {
                return Err(Error::Format(format!("the model has no tensor '{name}'")));
            }
        }
        Ok(Self { config: manifest.config.clone(), tensors })
    }

    fn w(&self, name: &str) -> &[f32] {
        self.tensors.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Full forward pass over `tokens` (positions 0..T), no cache; K and V are rounded as a
    /// `kv` cache stores them.
    pub fn forward(&self, tokens: &[u32], kv: KvType) -> CpuOutput {
        let c = &self.config;
        let mut x = r::embedding(self.w(tensors::EMBED), c.hidden_size as usize, tokens, c.embed_scale());
        let mut layers = Vec::new();
        for l in 0..c.num_hidden_layers {
            self.layer(l, &mut x, kv);
            layers.push(x.clone());
        }
        CpuOutput { layers, logits: self.head(&x) }
    }

    /// Layer `l` on the residual stream `x` [T, H]: the same steps, in the same order and
    /// under the same names, as `LayerBindings::record` on the GPU (`docs/model.md` §3.3).
    fn layer(&self, l: u32, x: &mut [f32], kv: KvType) {
        let c = &self.config;
        let (hs, is, qw, kvw, d) = (c.hidden_size as usize, c.intermediate_size as usize, c.q_width() as usize, c.kv_width() as usize, c.head_dim as usize);
        let (nh, nkv, eps) = (c.num_attention_heads as usize, c.num_key_value_heads as usize, c.rms_norm_eps);
        let w = |t: T| self.w(&t.name(l));
        let add = |x: &mut [f32], y: Vec<f32>| x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
        let h = r::rmsnorm(x, w(T::InputNorm), eps); // input_norm
        let q = r::linear(&h, w(T::QProj), hs, qw); // q_proj
        let k = r::linear(&h, w(T::KProj), hs, kvw); // k_proj
        let v = r::linear(&h, w(T::VProj), hs, kvw); // v_proj
        let (q, k) = if c.qk_norm { (r::rmsnorm(&q, w(T::QNorm), eps), r::rmsnorm(&k, w(T::KNorm), eps)) } else { (q, k) }; // qk_norm
        let (theta, factor) = c.rope(l as usize);
        let q = r::rope_scaled(&q, nh, d, theta, factor, 0); // rope_q
        let k = r::rope_scaled(&k, nkv, d, theta, factor, 0); // rope_k
        let (k, v): (Vec<f32>, Vec<f32>) = (k.iter().map(|a| kv.round(*a)).collect(), v.iter().map(|a| kv.round(*a)).collect()); // kv_write
        let attn = r::attention(&q, &k, &v, nh, nkv, d, 0, c.window(l as usize) as usize, c.attn_scale(), c.attn_logit_softcapping); // attention
        let o = r::linear(&attn, w(T::OProj), qw, hs); // o_proj
        add(x, r::rmsnorm(&o, w(T::PostAttentionNorm), eps)); // post_attention_norm
        let h = r::rmsnorm(x, w(T::PreFeedforwardNorm), eps); // pre_feedforward_norm
        let gate = r::linear(&h, w(T::GateProj), hs, is); // gate_proj
        let up = r::linear(&h, w(T::UpProj), hs, is); // up_proj
        let act = r::geglu(&gate, &up); // geglu
        let o = r::linear(&act, w(T::DownProj), is, hs); // down_proj
        add(x, r::rmsnorm(&o, w(T::PostFeedforwardNorm), eps)); // post_feedforward_norm
    }

    /// Final norm, LM head (the tied embedding) and final soft-cap over every row of `x`, as
    /// `HeadBindings::record` does for one row.
    fn head(&self, x: &[f32]) -> Vec<f32> {
        let c = &self.config;
        let h = r::rmsnorm(x, self.w(tensors::FINAL_NORM), c.rms_norm_eps); // final_norm
        let mut logits = r::linear(&h, self.w(tensors::EMBED), c.hidden_size as usize, c.vocab_size as usize); // lm_head
        if c.final_logit_softcapping > 0.0 {
            logits.iter_mut().for_each(|v| *v = r::softcap(*v, c.final_logit_softcapping));
            // final_softcap
        }
        logits
    }
}
