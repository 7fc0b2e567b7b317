//! Soft-capped, optionally sliding-window, grouped-query attention over a `KvCache`.
//!
//! Three kernels compute it. A block of queries (prefill) takes `attention_prefill.wgsl`: one
//! workgroup per KV head and `AP_ROWS` (query, head) rows that share it, so each key and value
//! is read once for those rows. `attention.wgsl`, one workgroup per (query head, query) walking
//! the keys in tiles, serves what the others do not (and `gemma bench --attention blocked`, for
//! comparison). One query (decode) takes the split
//! kernels when a KV head serves at most `ATTN_MAX_GROUP` query heads: `attention_split.wgsl`
//! gives each workgroup one KV head and one stretch of the keys (so a long context fills the
//! GPU with workgroups, and each key is read once for all the query heads that share it), and
//! `attention_combine.wgsl` merges the stretches' partial softmaxes per query head.

use super::kv_cache::{kv_name, KvCache};
use super::{check_fits, check_groups, uniform, words};
use crate::error::{Error, Result};
use crate::gpu::{Bound, GpuContext, Kernel, Recorder, Traffic};
use crate::shaders;

/// Largest head dimension the kernel supports (Gemma 2 and Gemma 3 use 256, their 27B
/// models 128).
pub const MAX_HEAD_DIM: u32 = crate::shaders::consts::MAX_HEAD_DIM;
use crate::shaders::consts::{AP_ROWS, ATTN_KEYS, ATTN_MAX_GROUP, ATTN_MAX_SPLITS};

/// f32 elements of the split kernel's partial results per query head (the `part` buffer holds
/// `n_heads` of these): one record of `head_dim + 2` (the unnormalised output, its running
/// maximum and sum) per split.
pub fn part_len_per_head(head_dim: u32) -> u64 {
    ATTN_MAX_SPLITS as u64 * (head_dim as u64 + 2)
}

/// `(keys per split, splits)` for `visible` keys: as many splits of whole tiles as the keys
/// fill, at most `ATTN_MAX_SPLITS` (longer contexts give each split more tiles).
pub fn split_plan(visible: u32) -> (u32, u32) {
    let tiles = visible.div_ceil(ATTN_KEYS).max(1);
    let chunk = tiles.div_ceil(ATTN_MAX_SPLITS) * ATTN_KEYS;
    (chunk, visible.div_ceil(chunk).max(1))
}

uniform! {
    /// The uniform of both attention.wgsl and attention_split.wgsl (attention_common.wgsl);
    /// `chunk` (keys per split) and `n_splits` are the split kernel's.
    pub struct AttentionParams {
        pub n_queries: u32,
        pub q_pos_start: u32,
        pub n_heads: u32,
        pub n_kv_heads: u32,
        pub head_dim: u32,
        pub window: u32,
        pub capacity: u32,
        pub chunk: u32,
        pub scale: f32,
        pub softcap: f32,
        pub n_splits: u32,
        pub _pad0: u32,
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

uniform! {
    pub struct CombineParams {
        pub n_heads: u32,
        pub head_dim: u32,
        pub window: u32,
        pub _pad0: u32,
    }
}

/// The attention kernels, compiled for one cache type (fp16, or f32).
#[derive(Debug)]
pub struct Attention {
    blocked: Kernel,
    prefill: Kernel,
    split: Kernel,
    combine: Kernel,
    f32: bool,
}

#[derive(Debug)]
pub struct AttentionBinding {
    bound: Bound<AttentionParams>,
    prefill: Bound<AttentionParams>,
    split: Bound<AttentionParams>,
    combine: Bound<CombineParams>,
    q_len: u64,
    out_len: u64,
    part_len: u64,
    capacity: u32,
    width: u32,
    /// Bytes per cached value (4 or 2).
    elem: u64,
    /// Whether one query takes the split kernels (default) and a block of queries the prefill
    /// kernel (default), or either takes one workgroup per (query head, query): `gemma bench
    /// --attention blocked` compares them.
    pub split_decode: bool,
    pub tiled_prefill: bool,
}

impl Attention {
    /// For caches of f32 (`f32`) or fp16 values.
    pub async fn for_cache(ctx: &GpuContext, f32: bool) -> Result<Self> {
        let kv = [("KV_F32", if f32 { 1.0 } else { 0.0 })];
        Ok(Self {
            blocked: Kernel::new(ctx, &shaders::ATTENTION, &kv).await?,
            prefill: Kernel::new(ctx, &shaders::ATTENTION_PREFILL, &kv).await?,
            split: Kernel::new(ctx, &shaders::ATTENTION_SPLIT, &kv).await?,
            combine: Kernel::new(ctx, &shaders::ATTENTION_COMBINE, &[]).await?,
            f32,
        })
    }

    /// `q`, `out`: f32 [T, n_heads * head_dim] (q after RoPE); `part`: scratch for one decode
    /// query's split results, `n_heads * part_len_per_head(head_dim)` f32 (one buffer may serve
    /// every layer); `step`: the per-step uniform (`ops::StepParams`), whose `pos` must be the
    /// decode query's position when a single query is dispatched (the split kernels read it).
    pub fn bind(
        &self,
        ctx: &GpuContext,
        q: &wgpu::Buffer,
        cache: &KvCache,
        out: &wgpu::Buffer,
        part: &wgpu::Buffer,
        step: &wgpu::Buffer,
    ) -> Result<AttentionBinding> {
        if cache.f32 != self.f32 {
            return Err(Error::shape("attention", format!("compiled for {} caches, given {}", kv_name(self.f32), kv_name(cache.f32))));
        }
        Ok(AttentionBinding {
            bound: self.blocked.bind(ctx, &[q, &cache.k, &cache.v, out]),
            prefill: self.prefill.bind(ctx, &[q, &cache.k, &cache.v, out]),
            split: self.split.bind_with(ctx, &[q, &cache.k, &cache.v, part], &[step]),
            combine: self.combine.bind_with(ctx, &[part, out], &[step]),
            q_len: words(q),
            out_len: words(out),
            part_len: words(part),
            capacity: cache.capacity,
            width: cache.width,
            elem: if cache.f32 { 4 } else { 2 },
            split_decode: true,
            tiled_prefill: true,
        })
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
        if self.split_decode && s.n_queries == 1 && s.n_heads / s.n_kv_heads <= ATTN_MAX_GROUP {
            return self.dispatch_split(rec, params, first_needed as u32);
        }
        // The K and V rows that any query of the block sees (read once per workgroup, which
        // a cache may serve after the first).
        let kv = 2 * (end - first_needed) * s.n_kv_heads as u64 * s.head_dim as u64 * self.elem;
        let traffic = Traffic::new(kv + 4 * q_elems, 4 * q_elems);
        if self.tiled_prefill && s.n_queries > 1 {
            // One workgroup per KV head and AP_ROWS of its (query, head) rows.
            let rows = s.n_queries as u64 * (s.n_heads / s.n_kv_heads) as u64;
            let blocks = check_groups(op, "query rows", rows.div_ceil(AP_ROWS as u64))?;
            self.prefill.dispatch(rec, &params, [s.n_kv_heads, blocks, 1], traffic);
            return Ok(());
        }
        let gy = check_groups(op, "queries", s.n_queries as u64)?;
        self.bound.dispatch(rec, &params, [s.n_heads, gy, 1], traffic);
        Ok(())
    }

    /// One query: the split kernel over `first..=q_pos_start`, then the combine.
    fn dispatch_split(&self, rec: &mut Recorder<'_>, params: AttentionParams, first: u32) -> Result<()> {
        let (_, n_splits) = split_plan(params.q_pos_start - first + 1);
        let need = params.n_heads as u64 * n_splits as u64 * (params.head_dim as u64 + 2);
        check_fits("attention", "part", need, self.part_len)?;
        // Each KV head's K and V rows are read once for all its query heads.
        let (heads, d) = (params.n_heads as u64, params.head_dim as u64);
        let kv = 2 * (params.q_pos_start - first + 1) as u64 * params.n_kv_heads as u64 * d * self.elem;
        let split = Traffic::new(kv + 4 * heads * d, 4 * need);
        // The kernels take the position from the step uniform and plan the splits as
        // `split_plan` did here: their own uniforms do not change from token to token.
        self.split.dispatch(rec, &AttentionParams { q_pos_start: 0, ..params }, [params.n_kv_heads, n_splits, 1], split);
        let combine = CombineParams { n_heads: params.n_heads, head_dim: params.head_dim, window: params.window, ..Default::default() };
        self.combine.dispatch(rec, &combine, [params.n_heads, 1, 1], Traffic::words(need, heads * d));
        Ok(())
    }
}
