//! Per-op launchers. Each op compiles its kernel once (`new`), binds tensors once (`bind`,
//! which checks buffer sizes) and records dispatches into a compute pass (`dispatch`, which
//! checks the call's shape against what was bound). None of them knows about Gemma.
//! Each op's CPU twin lives in `crate::reference`.

pub mod attention;
pub mod embedding;
pub mod geglu;
pub mod kv_cache;
pub mod linear;
pub mod rmsnorm;
pub mod rope;
pub mod sample;
pub mod softcap;

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

/// The kernels that read a weight, for one storage type.
#[derive(Debug)]
pub struct WeightKernels {
    pub dtype: crate::quant::DType,
    pub embedding: embedding::Embedding,
    pub matmul: linear::MatMul,
    pub matvec: linear::MatVec,
}

impl WeightKernels {
    pub async fn new(ctx: &crate::gpu::GpuContext, dtype: crate::quant::DType) -> Result<Self> {
        Ok(Self {
            dtype,
            embedding: embedding::Embedding::new(ctx, dtype).await?,
            matmul: linear::MatMul::new(ctx, dtype).await?,
            matvec: linear::MatVec::new(ctx, dtype).await?,
        })
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
    pub softcap: softcap::SoftCap,
    pub kv_write: kv_cache::KvWrite,
    pub attention: attention::Attention,
    pub sample: sample::Sampler,
}

impl Ops {
    pub async fn new(ctx: &crate::gpu::GpuContext, dtypes: &[crate::quant::DType]) -> Result<Self> {
        let mut weights: Vec<WeightKernels> = Vec::new();
        for &d in dtypes {
            if !weights.iter().any(|k| k.dtype == d) {
                weights.push(WeightKernels::new(ctx, d).await?);
            }
        }
        Ok(Self {
            weights,
            rmsnorm: rmsnorm::RmsNorm::new(ctx).await?,
            rope: rope::Rope::new(ctx).await?,
            geglu: geglu::GeGlu::new(ctx).await?,
            softcap: softcap::SoftCap::new(ctx).await?,
            kv_write: kv_cache::KvWrite::new(ctx).await?,
            attention: attention::Attention::new(ctx).await?,
            sample: sample::Sampler::new(ctx).await?,
        })
    }

    /// The weight kernels for `dtype` (compiled by `new` if it was listed).
    pub fn for_weight(&self, dtype: crate::quant::DType) -> Result<&WeightKernels> {
        self.weights.iter().find(|k| k.dtype == dtype).ok_or_else(|| Error::shape("ops", format!("no kernels were compiled for {} weights", dtype.name())))
    }
}
