//! Soft-capped, optionally sliding-window, grouped-query attention over a `KvCache`.

use super::kv_cache::KvCache;
use super::{check_fits, check_groups, uniform, words};
use crate::error::{Error, Result};
use crate::gpu::{Bound, GpuContext, Kernel, Recorder};
use crate::shaders;

/// Largest head dimension the kernel supports (Gemma 2 and Gemma 3 use 256, their 27B
/// models 128).
pub const MAX_HEAD_DIM: u32 = crate::shaders::consts::MAX_HEAD_DIM;

uniform! {
    pub struct AttentionParams {
        pub n_queries: u32,
        pub q_pos_start: u32,
        pub n_heads: u32,
        pub n_kv_heads: u32,
        pub head_dim: u32,
        pub window: u32,
        pub capacity: u32,
        pub _pad0: u32,
        pub scale: f32,
        pub softcap: f32,
        pub _pad1: u32,
        pub _pad2: u32,
    }
}

/// The shape of one attention call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionShape {
    /// Queries in this call (T) and the absolute position of the first.
    pub n_queries: u32,
    pub q_pos_start: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    /// Sliding window W (key j visible to query i iff j <= i and i - j < W); 0 = global.
    pub window: u32,
    /// Multiplier of q.k: `query_pre_attn_scalar^-0.5`.
    pub scale: f32,
    /// Logit soft-cap c (`c * tanh(z / c)`, applied before the mask); 0 = none.
    pub softcap: f32,
}

#[derive(Debug)]
pub struct Attention {
    f16: Kernel,
    f32: Kernel,
}

#[derive(Debug)]
pub struct AttentionBinding {
    bound: Bound<AttentionParams>,
    q_len: u64,
    out_len: u64,
    capacity: u32,
    width: u32,
}

impl Attention {
    pub async fn new(ctx: &GpuContext) -> Result<Self> {
        Ok(Self {
            f16: Kernel::new(ctx, &shaders::ATTENTION, &[("KV_F32", 0.0)]).await?,
            f32: Kernel::new(ctx, &shaders::ATTENTION, &[("KV_F32", 1.0)]).await?,
        })
    }

    /// `q`, `out`: f32 [T, n_heads * head_dim] (q after RoPE).
    pub fn bind(&self, ctx: &GpuContext, q: &wgpu::Buffer, cache: &KvCache, out: &wgpu::Buffer) -> AttentionBinding {
        AttentionBinding {
            bound: if cache.f32 { &self.f32 } else { &self.f16 }.bind(ctx, &[q, &cache.k, &cache.v, out]),
            q_len: words(q),
            out_len: words(out),
            capacity: cache.capacity,
            width: cache.width,
        }
    }
}

impl AttentionBinding {
    /// Attend queries `q_pos_start..q_pos_start + n_queries` to keys `0..=` their own position,
    /// all of which must already be in the cache.
    pub fn dispatch(&self, rec: &mut Recorder<'_>, s: &AttentionShape) -> Result<()> {
        let op = "attention";
        if s.head_dim == 0 || s.head_dim > MAX_HEAD_DIM || !s.head_dim.is_multiple_of(8) {
            return Err(Error::shape(op, format!("head_dim must be a multiple of 8 and at most {MAX_HEAD_DIM}, got {}", s.head_dim)));
        }
        if s.n_kv_heads == 0 || !s.n_heads.is_multiple_of(s.n_kv_heads) {
            return Err(Error::shape(op, format!("{} query heads do not group evenly over {} kv heads", s.n_heads, s.n_kv_heads)));
        }
        if s.n_kv_heads * s.head_dim != self.width {
            return Err(Error::shape(op, format!("cache rows hold {} values, the call needs {} kv heads x {}", self.width, s.n_kv_heads, s.head_dim)));
        }
        let q_elems = s.n_queries as u64 * s.n_heads as u64 * s.head_dim as u64;
        check_fits(op, "q", q_elems, self.q_len)?;
        check_fits(op, "out", q_elems, self.out_len)?;
        // The oldest key the first query sees must not have been overwritten in the ring by
        // the newest key of this call.
        let end = s.q_pos_start as u64 + s.n_queries as u64;
        let first_needed = if s.window > 0 { (s.q_pos_start as u64 + 1).saturating_sub(s.window as u64) } else { 0 };
        if end - first_needed > self.capacity as u64 {
            return Err(Error::shape(
                op,
                format!(
                    "keys {first_needed}..{end} are needed but the cache keeps only the last {} positions; \
                     process fewer queries per call or allocate a larger cache",
                    self.capacity
                ),
            ));
        }
        let gy = check_groups(op, "queries", s.n_queries as u64)?;
        let params = AttentionParams {
            n_queries: s.n_queries,
            q_pos_start: s.q_pos_start,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            head_dim: s.head_dim,
            window: s.window,
            capacity: self.capacity,
            scale: s.scale,
            softcap: s.softcap,
            ..Default::default()
        };
        self.bound.dispatch(rec, &params, [s.n_heads, gy, 1]);
        Ok(())
    }
}
