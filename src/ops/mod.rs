//! Per-op launchers. Each op compiles its kernel once (`new`), binds tensors once (`bind`,
//! which checks buffer sizes) and records dispatches into a compute pass (`dispatch`, which
//! checks the call's shape against what was bound). None of them knows about Gemma.
//! Each op's CPU twin lives in `crate::reference`.

pub mod attention;
pub mod embedding;
pub mod fused;
pub mod geglu;
pub mod kv_cache;
pub mod linear;
pub mod logits;
pub mod rmsnorm;
pub mod rope;
pub mod sample;

use crate::error::{Error, Result};

/// A uniform struct mirrored from WGSL. `FIELDS` lists (name, byte offset) so a test can
/// compare the Rust layout against the WGSL one that naga computes.
pub trait Uniform: bytemuck::Pod {
    const FIELDS: &'static [(&'static str, usize)];
}

macro_rules! uniform {
    ($(#[$m:meta])* pub struct $name:ident { $(pub $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name { $(pub $f: $t),* }
        impl $crate::ops::Uniform for $name {
            const FIELDS: &'static [(&'static str, usize)] = &[$((stringify!($f), std::mem::offset_of!($name, $f))),*];
        }
    };
}
pub(crate) use uniform;

uniform! {
    /// The per-step uniform (`Step` in common.wgsl): written once per forward pass, read by the
    /// kernels whose work depends on the position, so no per-layer uniform changes per token.
    pub struct StepParams {
        pub pos: u32,
        pub n_tokens: u32,
        pub _pad0: u32,
        pub _pad1: u32,
    }
}

/// Elements of 4 bytes that `buffer` can hold.
pub(crate) fn words(buffer: &wgpu::Buffer) -> u64 {
    buffer.size() / 4
}

/// Fail unless `have >= need` (both in 4-byte elements).
pub(crate) fn check_fits(op: &'static str, what: &str, need: u64, have: u64) -> Result<()> {
    if need > have {
        return Err(Error::shape(op, format!("{what} needs {need} elements but its buffer holds {have}")));
    }
    Ok(())
}

/// A (y, x) workgroup count above the per-dimension limit is a shape error, not a GPU error.
pub(crate) fn check_groups(op: &'static str, what: &str, groups: u64) -> Result<u32> {
    if groups > crate::gpu::MAX_GROUPS_PER_DIM as u64 {
        return Err(Error::shape(op, format!("{what} = {groups} exceeds {} per dispatch", crate::gpu::MAX_GROUPS_PER_DIM)));
    }
    Ok(groups as u32)
}

/// One way a model reads a weight: its storage type, its row length, and whether prompt
/// chunks (not only single tokens) go through it. The embedding is read by its gather and,
/// tied, as the LM head one row at a time (`Engine::logits` reads it several rows at a time
/// through the prefill kernels of its type when the layers share the type, else compiles that
/// variant when first called).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightUse {
    pub dtype: crate::quant::DType,
    pub cols: u32,
    pub prefill: bool,
}

/// The kernels that read a weight, for one storage type: compiled for the row lengths the
/// model has (a matrix-vector variant per team size), the tiled ones only for types that
/// prompt chunks go through.
#[derive(Debug)]
pub struct WeightKernels {
    pub dtype: crate::quant::DType,
    pub embedding: embedding::Embedding,
    matmul: Option<linear::MatMul>,
    pub matvec: linear::MatVec,
}

impl WeightKernels {
    pub async fn new(ctx: &crate::gpu::GpuContext, dtype: crate::quant::DType, uses: &[WeightUse]) -> Result<Self> {
        let cols = |prefill_only: bool| -> Vec<u32> { uses.iter().filter(|u| u.dtype == dtype && (u.prefill || !prefill_only)).map(|u| u.cols).collect() };
        let prefill_cols = cols(true);
        Ok(Self {
            dtype,
            embedding: embedding::Embedding::new(ctx, dtype).await?,
            matmul: if prefill_cols.is_empty() { None } else { Some(linear::MatMul::for_cols(ctx, dtype, &prefill_cols).await?) },
            matvec: linear::MatVec::for_cols(ctx, dtype, &cols(false)).await?,
        })
    }

    pub fn matmul(&self) -> Result<&linear::MatMul> {
        self.matmul.as_ref().ok_or_else(|| Error::shape("ops", format!("no prefill kernels were compiled for {} weights", self.dtype.name())))
    }
}

/// Every op pipeline a model needs, compiled once: the weight-reading kernels for each
/// storage type present (e.g. int4 layers and an int8 embedding), and one of each other op.
#[derive(Debug)]
pub struct Ops {
    pub weights: Vec<WeightKernels>,
    pub rmsnorm: rmsnorm::RmsNorm,
    pub rope: rope::Rope,
    pub geglu: geglu::GeGlu,
    pub kv_write: kv_cache::KvWrite,
    pub attention: attention::Attention,
    pub sample: sample::Sampler,
    /// Decode's fused q/k/v and gate/up products, one per storage type of the joined weights.
    pub fused: Vec<fused::Fused>,
    /// Gemma 3's decode q/k norms + RoPE + KV write, for models with per-head q/k norms.
    pub qk_norm_rope: Option<fused::QkNormRope>,
}

impl Ops {
    /// `kv_f32`: the KV cache's type (attention is compiled for that one only). `fused`: the
    /// (type, row length) of each kind of joined weight the fused products read; `qk_norm`:
    /// whether the model norms q and k per head (Gemma 3), whose fused decode takes its own kernel.
    pub async fn new(ctx: &crate::gpu::GpuContext, uses: &[WeightUse], kv_f32: bool, fused: &[(crate::quant::DType, u32)], qk_norm: bool) -> Result<Self> {
        let mut weights: Vec<WeightKernels> = Vec::new();
        for u in uses {
            if !weights.iter().any(|k| k.dtype == u.dtype) {
                weights.push(WeightKernels::new(ctx, u.dtype, uses).await?);
            }
        }
        Ok(Self {
            weights,
            rmsnorm: rmsnorm::RmsNorm::new(ctx).await?,
            rope: rope::Rope::new(ctx).await?,
            geglu: geglu::GeGlu::new(ctx).await?,
            kv_write: kv_cache::KvWrite::for_cache(ctx, kv_f32).await?,
            attention: attention::Attention::for_cache(ctx, kv_f32).await?,
            sample: sample::Sampler::new(ctx).await?,
            fused: {
                let mut kernels = Vec::new();
                for &(dtype, cols) in fused {
                    kernels.push(fused::Fused::new(ctx, dtype, cols, kv_f32).await?);
                }
                kernels
            },
            qk_norm_rope: if qk_norm && !fused.is_empty() { Some(fused::QkNormRope::new(ctx, kv_f32).await?) } else { None },
        })
    }

    /// The fused products for joined weights of `dtype` with rows of `cols`, if compiled.
    pub fn fused_for(&self, dtype: crate::quant::DType, cols: u32) -> Option<&fused::Fused> {
        self.fused.iter().find(|f| f.reads(dtype, cols))
    }

    /// The weight kernels for `dtype` (compiled by `new` if it was listed).
    pub fn for_weight(&self, dtype: crate::quant::DType) -> Result<&WeightKernels> {
        self.weights.iter().find(|k| k.dtype == dtype).ok_or_else(|| Error::shape("ops", format!("no kernels were compiled for {} weights", dtype.name())))
    }
}
