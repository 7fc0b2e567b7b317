//! Loading a model's tensors onto the GPU from its manifest and shards, one shard at a time
//! (a browser never holds more than the shard it is uploading). Where the bytes come from —
//! files natively, `fetch` in the browser — is the caller's business.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::format::{self, Manifest};
use crate::gpu::weights::{GpuWeight, WeightPart};
use crate::gpu::GpuContext;
use crate::model::tensors::{self, LayerTensor as T};
use crate::quant::DType;

/// One decoder layer's weights (field names follow the checkpoint's module names).
#[derive(Debug)]
pub struct LayerWeights {
    pub input_layernorm: wgpu::Buffer, // [H] f32
    pub q_proj: GpuWeight,             // [NH*D, H]
    pub k_proj: GpuWeight,             // [NKV*D, H]
    pub v_proj: GpuWeight,             // [NKV*D, H]
    pub o_proj: GpuWeight,             // [H, NH*D]
    /// Gemma 3: per-head RMSNorm weights of q and k, [D] f32 each.
    pub qk_norm: Option<(wgpu::Buffer, wgpu::Buffer)>,
    pub post_attention_layernorm: wgpu::Buffer, // [H] f32
    pub pre_feedforward_layernorm: wgpu::Buffer,
    pub gate_proj: GpuWeight, // [I, H]
    pub up_proj: GpuWeight,   // [I, H]
    pub down_proj: GpuWeight, // [H, I]
    pub post_feedforward_layernorm: wgpu::Buffer,
    /// q, k and v joined by rows ([NH*D + 2*NKV*D, H]) when they could be (`GpuWeight::join`);
    /// `q_proj`, `k_proj`, `v_proj` are then views of it. Read by decode's fused product.
    pub qkv: Option<GpuWeight>,
    /// gate and up joined by rows ([2I, H]), likewise.
    pub gate_up: Option<GpuWeight>,
}

impl LayerWeights {
    /// The seven matrices, in forward-pass order (views, where they are joined).
    pub fn matrices(&self) -> impl Iterator<Item = &GpuWeight> {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj, &self.gate_proj, &self.up_proj, &self.down_proj].into_iter()
    }
}

#[derive(Debug)]
pub struct Weights {
    /// [V, H]; also the LM head (tied).
    pub embed_tokens: GpuWeight,
    pub layers: Vec<LayerWeights>,
    pub norm: wgpu::Buffer, // [H] f32
    /// Storage type of the decoder layers' matrices (the embedding may differ).
    pub dtype: DType,
    pub bytes: u64,
}

/// Check a shard's bytes against the manifest (size, then SHA-256).
pub fn verify_shard(manifest: &Manifest, index: usize, bytes: &[u8]) -> Result<()> {
    let entry = &manifest.shards[index];
    if bytes.len() as u64 != entry.size {
        return Err(Error::Format(format!(
            "shard {} is {} bytes, the manifest says {} (truncated or corrupt download; fetch it again)",
            entry.file,
            bytes.len(),
            entry.size
        )));
    }
    let hash = format::sha256_hex(bytes);
    if hash != entry.sha256 {
        return Err(Error::Format(format!("shard {} is corrupt: SHA-256 {hash}, the manifest says {} (fetch it again)", entry.file, entry.sha256)));
    }
    Ok(())
}

/// Collects GPU parts as shards arrive, then assembles the model.
pub struct WeightLoader<'a> {
    ctx: &'a GpuContext,
    manifest: &'a Manifest,
    parts: HashMap<String, Vec<Option<WeightPart>>>,
    pub bytes: u64,
}

impl<'a> WeightLoader<'a> {
    pub fn new(ctx: &'a GpuContext, manifest: &'a Manifest) -> Self {
        let parts = manifest.tensors.iter().map(|t| (t.name.clone(), (0..t.parts.len()).map(|_| None).collect())).collect();
        Self { ctx, manifest, parts, bytes: 0 }
    }

    /// Upload every part stored in shard `index` (whose bytes have been verified).
    pub fn add_shard(&mut self, index: usize, bytes: &[u8]) -> Result<()> {
        for t in &self.manifest.tensors {
            for (i, p) in t.parts.iter().enumerate() {
                if p.shard as usize != index {
                    continue;
                }
                let data = &bytes[p.offset as usize..(p.offset + p.length) as usize];
                let buffer = self.ctx.storage_from(&format!("{}[{}]", t.name, p.row_start), data)?;
                self.bytes += buffer.size();
                let dtype = DType::from(t.dtype);
                let scales_offset = dtype.scales_offset(p.rows as usize, t.shape[1] as usize) as u32;
                if let Some(slot) = self.parts.get_mut(&t.name).and_then(|v| v.get_mut(i)) {
                    *slot = Some(WeightPart { buffer, row_start: p.row_start, rows: p.rows, scales_offset, row_offset: 0 });
                }
            }
        }
        // Hand the shard's writes to the GPU now, so the copies staged for them do not pile up
        // until the first step.
        self.ctx.queue.submit([]);
        Ok(())
    }

    fn take(&mut self, name: &str) -> Result<GpuWeight> {
        let t = self.manifest.tensor(name)?;
        let parts = self.parts.remove(name).unwrap_or_default().into_iter().collect::<Option<Vec<_>>>();
        let parts = parts.ok_or_else(|| Error::Format(format!("tensor '{name}' was not loaded (a shard is missing)")))?;
        Ok(GpuWeight { dtype: t.dtype.into(), rows: t.shape[0], cols: t.shape[1], parts })
    }

    fn take_norm(&mut self, name: &str) -> Result<wgpu::Buffer> {
        let w = self.take(name)?;
        if w.dtype != DType::F32 || w.parts.len() != 1 {
            return Err(Error::Format(format!("norm '{name}' must be one f32 part")));
        }
        w.parts.into_iter().next().map(|p| p.buffer).ok_or_else(|| Error::Format(format!("norm '{name}' has no data")))
    }

    /// Assemble the model once every shard has been added.
    pub fn finish(mut self) -> Result<Weights> {
        let c = &self.manifest.config;
        let expected = tensors::table(c);
        for (name, shape) in &expected {
            let t = self.manifest.tensor(name)?;
            if t.shape != *shape {
                return Err(Error::Format(format!("tensor '{name}' has shape {:?}, the config implies {shape:?}", t.shape)));
            }
        }
        // As few parts as the binding limit allows: one gather and one LM-head dispatch each.
        let embed_tokens = self.take(tensors::EMBED)?.regroup(self.ctx, tensors::EMBED)?;
        let mut layers = Vec::new();
        for l in 0..c.num_hidden_layers {
            // Matrices may differ in type (e.g. int4 layers with an fp16 embedding).
            let qk_norm = if c.qk_norm { Some((self.take_norm(&T::QNorm.name(l))?, self.take_norm(&T::KNorm.name(l))?)) } else { None };
            // Joined where possible (the originals are freed once the copies have run).
            let (q, k, v) = (self.take(&T::QProj.name(l))?, self.take(&T::KProj.name(l))?, self.take(&T::VProj.name(l))?);
            let ([q_proj, k_proj, v_proj], qkv) = join(self.ctx, &format!("layer {l} qkv"), [q, k, v])?;
            let (gate, up) = (self.take(&T::GateProj.name(l))?, self.take(&T::UpProj.name(l))?);
            let ([gate_proj, up_proj], gate_up) = join(self.ctx, &format!("layer {l} gate_up"), [gate, up])?;
            layers.push(LayerWeights {
                input_layernorm: self.take_norm(&T::InputNorm.name(l))?,
                q_proj,
                k_proj,
                v_proj,
                qk_norm,
                o_proj: self.take(&T::OProj.name(l))?,
                post_attention_layernorm: self.take_norm(&T::PostAttentionNorm.name(l))?,
                pre_feedforward_layernorm: self.take_norm(&T::PreFeedforwardNorm.name(l))?,
                gate_proj,
                up_proj,
                down_proj: self.take(&T::DownProj.name(l))?,
                post_feedforward_layernorm: self.take_norm(&T::PostFeedforwardNorm.name(l))?,
                qkv,
                gate_up,
            });
        }
        let norm = self.take_norm(tensors::FINAL_NORM)?;
        let dtype = layers.first().map_or(embed_tokens.dtype, |l| l.q_proj.dtype);
        Ok(Weights { embed_tokens, layers, norm, dtype, bytes: self.bytes })
    }
}

/// `weights` joined by rows when they can be (`GpuWeight::join`): views of the joined weight in
/// their place (the originals destroyed), and the joined weight; else the weights unchanged
/// and `None`.
fn join<const N: usize>(ctx: &GpuContext, label: &str, weights: [GpuWeight; N]) -> Result<([GpuWeight; N], Option<GpuWeight>)> {
    let Some(joined) = GpuWeight::join(ctx, label, &weights.each_ref())? else { return Ok((weights, None)) };
    let mut first = 0;
    let mut views = Vec::with_capacity(N);
    for w in weights {
        views.push(joined.view(first, w.rows)?);
        first = first.saturating_add(w.rows);
        // Freed now, not when a browser's garbage collector gets to it (the copies run first).
        w.destroy();
    }
    let views: [GpuWeight; N] = views.try_into().map_err(|_| Error::Format(format!("{label}: joined {N} weights into a different number of views")))?;
    Ok((views, Some(joined)))
}
