//! A layer's K/V cache (fp16 pairs packed in u32, or f32 for exact numerics) and the kernel
//! that appends to it.
//! Position `p` lives in slot `p % capacity`: a cache with fewer slots than the context is a
//! ring, which is how sliding-window layers keep only their window.

use super::{check_fits, uniform, words};
use crate::error::{Error, Result};
use crate::gpu::{grid, Bound, GpuContext, Kernel, Recorder, Traffic};
use crate::shaders::{self, consts};

uniform! {
    pub struct KvWriteParams {
        pub n_tokens: u32,
        pub width: u32,
        pub pos_start: u32,
        pub capacity: u32,
    }
}

/// K and V caches of one layer: `[capacity, width]` each, `width = n_kv_heads * head_dim`,
/// stored as fp16 (default) or f32 (`f32 = true`: twice the memory, no rounding).
#[derive(Debug)]
pub struct KvCache {
    pub k: wgpu::Buffer,
    pub v: wgpu::Buffer,
    pub capacity: u32,
    pub width: u32,
    pub f32: bool,
}

impl KvCache {
    pub fn new(ctx: &GpuContext, label: &str, capacity: u32, width: u32) -> Result<Self> {
        Self::with_type(ctx, label, capacity, width, false)
    }

    pub fn with_type(ctx: &GpuContext, label: &str, capacity: u32, width: u32, f32: bool) -> Result<Self> {
        if !width.is_multiple_of(2) || capacity == 0 {
            return Err(Error::invalid("kv cache", format!("width must be even and capacity positive (got {width}, {capacity})")));
        }
        let bytes = capacity as u64 * width as u64 * if f32 { 4 } else { 2 };
        Ok(Self { k: ctx.storage_zeroed(&format!("{label}.k"), bytes)?, v: ctx.storage_zeroed(&format!("{label}.v"), bytes)?, capacity, width, f32 })
    }

    pub fn bytes(&self) -> u64 {
        self.k.size() + self.v.size()
    }
}

/// The cache write, compiled for one cache type (fp16, or f32).
#[derive(Debug)]
pub struct KvWrite {
    kernel: Kernel,
    f32: bool,
}

#[derive(Debug)]
pub struct KvWriteBinding {
    bound: Bound<KvWriteParams>,
    src_len: u64,
    width: u32,
    capacity: u32,
    /// Bytes per cached value (4 or 2).
    elem: u64,
}

impl KvWrite {
    /// For caches of f32 (`f32`) or fp16 values.
    pub async fn for_cache(ctx: &GpuContext, f32: bool) -> Result<Self> {
        Ok(Self { kernel: Kernel::new(ctx, &shaders::KV_CACHE, &[("KV_F32", if f32 { 1.0 } else { 0.0 })]).await?, f32 })
    }

    /// `k`, `v`: f32 [T, width], the new rows (K after RoPE).
    pub fn bind(&self, ctx: &GpuContext, k: &wgpu::Buffer, v: &wgpu::Buffer, cache: &KvCache) -> Result<KvWriteBinding> {
        if cache.f32 != self.f32 {
            return Err(Error::shape("kv_write", format!("compiled for {} caches, given {}", kv_name(self.f32), kv_name(cache.f32))));
        }
        Ok(KvWriteBinding {
            bound: self.kernel.bind(ctx, &[k, v, &cache.k, &cache.v]),
            src_len: words(k).min(words(v)),
            width: cache.width,
            capacity: cache.capacity,
            elem: if cache.f32 { 4 } else { 2 },
        })
    }
}

/// "f32" or "fp16", the cache types as errors name them.
pub(crate) fn kv_name(f32: bool) -> &'static str {
    if f32 {
        "f32"
    } else {
        "fp16"
    }
}

impl KvWriteBinding {
    /// Write `n_tokens` rows for positions `pos_start..`. At most `capacity` rows per call, so
    /// no two rows of one call land in the same slot.
    pub fn dispatch(&self, rec: &mut Recorder<'_>, n_tokens: u32, pos_start: u32) -> Result<()> {
        check_fits("kv_write", "k/v", n_tokens as u64 * self.width as u64, self.src_len)?;
        if n_tokens > self.capacity {
            return Err(Error::shape("kv_write", format!("{n_tokens} rows would overwrite each other in a {}-slot ring", self.capacity)));
        }
        let params = KvWriteParams { n_tokens, width: self.width, pos_start, capacity: self.capacity };
        let values = 2 * n_tokens as u64 * self.width as u64; // K and V
        let traffic = Traffic::new(4 * values, self.elem * values);
        self.bound.dispatch(rec, &params, grid((n_tokens * self.width / 2).div_ceil(consts::WG)), traffic);
        Ok(())
    }
}
