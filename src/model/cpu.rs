//! A CPU twin of the whole forward pass, composed from `reference` kernels in spec order (§3),
//! over the same dequantized weights the GPU reads. Slow; for tests on tiny models.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::format::Manifest;
use crate::model::config::ModelConfig;
use crate::model::tensors;
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

    /// Full forward pass over `tokens` (positions 0..T), no cache. With `kv_f16`, K and V are
    /// rounded to fp16 as the GPU's default cache stores them.
    pub fn forward(&self, tokens: &[u32], kv_f16: bool) -> CpuOutput {
        let c = &self.config;
        let (h, i, qw, kvw, d) = (c.hidden_size as usize, c.intermediate_size as usize, c.q_width() as usize, c.kv_width() as usize, c.head_dim as usize);
        let (nh, nkv) = (c.num_attention_heads as usize, c.num_key_value_heads as usize);
        let mut x = r::embedding(self.w("model.embed_tokens.weight"), h, tokens, c.embed_scale());
        let mut layers = Vec::new();
        for l in 0..c.num_hidden_layers as usize {
            let p = |n: &str| format!("model.layers.{l}.{n}");
            let hn = r::rmsnorm(&x, self.w(&p("input_layernorm.weight")), c.rms_norm_eps);
            let mut q = r::linear(&hn, self.w(&p("self_attn.q_proj.weight")), h, qw);
            let mut k = r::linear(&hn, self.w(&p("self_attn.k_proj.weight")), h, kvw);
            if c.qk_norm {
                q = r::rmsnorm(&q, self.w(&p("self_attn.q_norm.weight")), c.rms_norm_eps);
                k = r::rmsnorm(&k, self.w(&p("self_attn.k_norm.weight")), c.rms_norm_eps);
            }
            let (theta, factor) = c.rope(l);
            let q = r::rope_scaled(&q, nh, d, theta, factor, 0);
            let k = r::rope_scaled(&k, nkv, d, theta, factor, 0);
            let v = r::linear(&hn, self.w(&p("self_attn.v_proj.weight")), h, kvw);
            let round = |a: Vec<f32>| if kv_f16 { a.into_iter().map(|v| half::f16::from_f32(v).to_f32()).collect() } else { a };
            let attn = r::attention(&q, &round(k), &round(v), nh, nkv, d, 0, c.window(l) as usize, c.attn_scale(), c.attn_logit_softcapping);
            let o = r::linear(&attn, self.w(&p("self_attn.o_proj.weight")), qw, h);
            let o = r::rmsnorm(&o, self.w(&p("post_attention_layernorm.weight")), c.rms_norm_eps);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let hn = r::rmsnorm(&x, self.w(&p("pre_feedforward_layernorm.weight")), c.rms_norm_eps);
            let gate = r::linear(&hn, self.w(&p("mlp.gate_proj.weight")), h, i);
            let up = r::linear(&hn, self.w(&p("mlp.up_proj.weight")), h, i);
            let down = r::linear(&r::geglu(&gate, &up), self.w(&p("mlp.down_proj.weight")), i, h);
            let down = r::rmsnorm(&down, self.w(&p("post_feedforward_layernorm.weight")), c.rms_norm_eps);
            x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
            layers.push(x.clone());
        }
        let xn = r::rmsnorm(&x, self.w("model.norm.weight"), c.rms_norm_eps);
        let mut logits = r::linear(&xn, self.w("model.embed_tokens.weight"), h, c.vocab_size as usize);
        if c.final_logit_softcapping > 0.0 {
            logits.iter_mut().for_each(|v| *v = r::softcap(*v, c.final_logit_softcapping));
        }
        CpuOutput { layers, logits }
    }
}
