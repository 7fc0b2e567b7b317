//! Decode's fused products over weights joined by rows (`GpuWeight::join`):
//! - `matvec_geglu.wgsl`: `act = gelu_tanh(W_gate x) * (W_up x)` in one pass;
//! - `matvec_qkv.wgsl`: q, k and v in one pass, q and k rotated (RoPE), q written, k and v
//!   written straight into the layer's KV cache;
//! - for Gemma 3, whose per-head q/k norms come between the product and RoPE: a plain product
//!   over the joined weight, then `qk_norm_rope.wgsl` (norms, RoPE, cache write) in one more.
//!
//! Both read the position from the engine's per-step uniform (`StepParams`) or need none, so
//! their own uniforms are written once. Each is checked against the unfused ops' CPU twins in
//! the kernel tests (`fused`).

use super::kv_cache::{kv_name, KvCache};
use super::linear::{matvec_team, MatMulParams};
use super::rope::RopeTable;
use super::{check_fits, check_groups, uniform, words};
use crate::error::{Error, Result};
use crate::gpu::weights::{GpuWeight, WeightPart};
use crate::gpu::{grid, Bound, GpuContext, Kernel, Recorder, Traffic};
use crate::quant::DType;
use crate::shaders::{self, consts};

uniform! {
    /// `matvec_qkv.wgsl`'s own uniform (static for a layer).
    pub struct QkvParams {
        pub k: u32,
        pub scales_offset: u32,
        pub w_row0: u32,
        pub n_heads: u32,
        pub n_kv_heads: u32,
        pub head_dim: u32,
        pub capacity: u32,
        pub _pad0: u32,
    }
}

/// Heads of the attention a q/k/v product feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QkvShape {
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
}

/// The two fused kernels, compiled for one weight type, one row length and one cache type.
#[derive(Debug)]
pub struct Fused {
    geglu: Kernel,
    qkv: Kernel,
    dtype: DType,
    cols: u32,
    team: u32,
    kv_f32: bool,
}

/// The one part of a joined weight, if it is one part with rows of whole 32-weight chunks.
fn one_part<'a>(op: &'static str, w: &'a GpuWeight, dtype: DType) -> Result<&'a WeightPart> {
    if w.dtype != dtype {
        return Err(Error::shape(op, format!("weight is {} but the kernel was built for {}", w.dtype.name(), dtype.name())));
    }
    if !w.cols.is_multiple_of(32) {
        return Err(Error::shape(op, format!("rows of {} weights are not whole chunks of 32", w.cols)));
    }
    match w.parts.as_slice() {
        [part] => Ok(part),
        parts => Err(Error::shape(op, format!("needs its weights joined in one part, got {}", parts.len()))),
    }
}

impl Fused {
    /// For weights of `dtype` with rows of `cols` weights, and a cache of f32 (`kv_f32`) or fp16.
    pub async fn new(ctx: &GpuContext, dtype: DType, cols: u32, kv_f32: bool) -> Result<Self> {
        let team = matvec_team(cols);
        let constants = [("WTYPE", dtype.wgsl_id()), ("T", team as f64)];
        let kv = [("WTYPE", dtype.wgsl_id()), ("T", team as f64), ("KV_F32", if kv_f32 { 1.0 } else { 0.0 })];
        Ok(Self {
            geglu: Kernel::new(ctx, &shaders::MATVEC_GEGLU, &constants).await?,
            qkv: Kernel::new(ctx, &shaders::MATVEC_QKV, &kv).await?,
            dtype,
            cols,
            team,
            kv_f32,
        })
    }

    /// Whether these kernels read joined weights of `dtype` with rows of `cols`.
    pub fn reads(&self, dtype: DType, cols: u32) -> bool {
        self.dtype == dtype && self.cols == cols
    }

    /// Outputs (GeGLU) or 8-row teams (q/k/v) per workgroup.
    fn teams_per_group(&self) -> u32 {
        consts::MV_WG / self.team
    }

    /// `act = gelu_tanh(gate x) * (up x)` for `gate_up`: gate's I rows, then up's I rows
    /// (`GpuWeight::join`). `x`: f32 [K]; `act`: f32 [I].
    pub fn bind_geglu(&self, ctx: &GpuContext, x: &wgpu::Buffer, gate_up: &GpuWeight, act: &wgpu::Buffer) -> Result<GeGluMatVec> {
        let part = one_part("matvec_geglu", gate_up, self.dtype)?;
        let n = gate_up.rows / 2;
        if !gate_up.rows.is_multiple_of(2) || !n.is_multiple_of(4) || gate_up.cols != self.cols {
            return Err(Error::shape(
                "matvec_geglu",
                format!("{} rows of {} (gate and up of a multiple of 4 rows each, for this kernel's row length)", gate_up.rows, gate_up.cols),
            ));
        }
        check_fits("matvec_geglu", "x", gate_up.cols as u64, words(x))?;
        check_fits("matvec_geglu", "act", n as u64, words(act))?;
        let params = MatMulParams { m: 1, k: gate_up.cols, n, scales_offset: part.scales_offset, w_row0: part.row_offset, out_stride: n, ..Default::default() };
        let groups = check_groups("matvec_geglu", "workgroups", (n / 4).div_ceil(self.teams_per_group()) as u64)?;
        let traffic = Traffic::new(gate_up.bytes() + 4 * gate_up.cols as u64, 4 * n as u64);
        let bound = self.geglu.bind(ctx, &[x, &part.buffer, &part.buffer, act]);
        Ok(Prepared { op: "matvec_geglu", bound, params, groups: grid(groups), traffic, positions: u32::MAX })
    }

    /// q, k and v of one token from `qkv` (q's NH*D rows, k's NKV*D, v's NKV*D), q and k rotated
    /// at the step's position (`step`: the engine's `StepParams` uniform) by `rope`, q written
    /// to `q`, k and v to `cache` at slot `pos % capacity`. `x`: f32 [K].
    #[allow(clippy::too_many_arguments)] // each is a different buffer the kernel reads or writes
    pub fn bind_qkv(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        qkv: &GpuWeight,
        q: &wgpu::Buffer,
        cache: &KvCache,
        rope: &RopeTable,
        step: &wgpu::Buffer,
        shape: QkvShape,
    ) -> Result<QkvMatVec> {
        let part = one_part("matvec_qkv", qkv, self.dtype)?;
        let QkvShape { n_heads, n_kv_heads, head_dim } = shape;
        let q_rows = n_heads as u64 * head_dim as u64;
        let kv_rows = n_kv_heads as u64 * head_dim as u64;
        if cache.f32 != self.kv_f32 {
            return Err(Error::shape("matvec_qkv", format!("compiled for {} caches, given {}", kv_name(self.kv_f32), kv_name(cache.f32))));
        }
        if head_dim == 0 || !head_dim.is_multiple_of(8) || n_kv_heads == 0 || q_rows + 2 * kv_rows != qkv.rows as u64 || kv_rows != cache.width as u64 {
            return Err(Error::shape(
                "matvec_qkv",
                format!("{} rows and a cache {} wide for {n_heads} + 2 x {n_kv_heads} heads of {head_dim} (a multiple of 8)", qkv.rows, cache.width),
            ));
        }
        if head_dim != rope.head_dim || qkv.cols != self.cols {
            return Err(Error::shape("matvec_qkv", format!("RoPE table for heads of {}, weights rows of {}", rope.head_dim, qkv.cols)));
        }
        check_fits("matvec_qkv", "x", qkv.cols as u64, words(x))?;
        check_fits("matvec_qkv", "q", q_rows, words(q))?;
        let params = QkvParams {
            k: qkv.cols,
            scales_offset: part.scales_offset,
            w_row0: part.row_offset,
            n_heads,
            n_kv_heads,
            head_dim,
            capacity: cache.capacity,
            _pad0: 0,
        };
        let teams = (qkv.rows / 8) as u64;
        let groups = check_groups("matvec_qkv", "workgroups", teams.div_ceil(self.teams_per_group() as u64))?;
        let elem = if cache.f32 { 4 } else { 2 };
        let traffic = Traffic::new(qkv.bytes() + 4 * qkv.cols as u64, 4 * q_rows + 2 * elem * kv_rows);
        Ok(Prepared {
            op: "matvec_qkv",
            bound: self.qkv.bind(ctx, &[x, &part.buffer, &part.buffer, q, &cache.k, &cache.v, &rope.buffer, step]),
            params,
            groups: grid(groups),
            traffic,
            positions: rope.positions,
        })
    }
}

/// A fused kernel bound with everything a dispatch needs, settled at load: its uniform (never
/// rewritten: what changes per token comes from the step uniform), its grid and its traffic;
/// and, for kernels that rotate, the RoPE table's length to check a position against.
#[derive(Debug)]
pub struct Prepared<P> {
    op: &'static str,
    bound: Bound<P>,
    params: P,
    groups: [u32; 3],
    traffic: Traffic,
    positions: u32,
}

impl<P: bytemuck::Pod + PartialEq> Prepared<P> {
    /// For the token at `pos`, which the step uniform bound with the kernel must hold (the
    /// engine writes it once per step); checked here against the RoPE table.
    pub fn dispatch(&self, rec: &mut Recorder<'_>, pos: u32) -> Result<()> {
        if pos >= self.positions {
            return Err(Error::shape(self.op, format!("position {pos} is past the RoPE table's {}", self.positions)));
        }
        self.bound.dispatch(rec, &self.params, self.groups, self.traffic);
        Ok(())
    }
}

/// Gate and up with GeGLU, bound (any position: it has no table).
pub type GeGluMatVec = Prepared<MatMulParams>;
/// q/k/v with RoPE and the cache write, bound.
pub type QkvMatVec = Prepared<QkvParams>;
/// Gemma 3's q/k norms, RoPE and KV write, bound.
pub type QkNormRopeBinding = Prepared<QkNormRopeParams>;

uniform! {
    /// `qk_norm_rope.wgsl`'s uniform (static for a layer).
    pub struct QkNormRopeParams {
        pub n_heads: u32,
        pub n_kv_heads: u32,
        pub head_dim: u32,
        pub capacity: u32,
        pub eps: f32,
        pub _pad0: u32,
        pub _pad1: u32,
        pub _pad2: u32,
    }
}

/// Gemma 3's decode step between the q/k/v product and attention, in one dispatch
/// (`qk_norm_rope.wgsl`): each query and key head normed with its weight, rotated, and written
/// to `q` or, with the values, into the cache. It follows a plain matrix-vector product over the
/// joined q/k/v weight, so such a layer decodes its attention input in two dispatches.
#[derive(Debug)]
pub struct QkNormRope {
    kernel: Kernel,
    kv_f32: bool,
}

impl QkNormRope {
    /// For a cache of f32 (`kv_f32`) or fp16 values.
    pub async fn new(ctx: &GpuContext, kv_f32: bool) -> Result<Self> {
        Ok(Self { kernel: Kernel::new(ctx, &shaders::QK_NORM_ROPE, &[("KV_F32", if kv_f32 { 1.0 } else { 0.0 })]).await?, kv_f32 })
    }

    /// `src`: one token's q, k and v, f32 [NH*D + 2*NKV*D]; `q_norm`, `k_norm`: f32 [D] holding
    /// w; `q`: f32 [NH*D]; `step`: the engine's `StepParams` uniform, whose position RoPE and
    /// the cache slot use.
    #[allow(clippy::too_many_arguments)] // each is a different buffer the kernel reads or writes
    pub fn bind(
        &self,
        ctx: &GpuContext,
        src: &wgpu::Buffer,
        (q_norm, k_norm): (&wgpu::Buffer, &wgpu::Buffer),
        q: &wgpu::Buffer,
        cache: &KvCache,
        rope: &RopeTable,
        step: &wgpu::Buffer,
        (shape, eps): (QkvShape, f32),
    ) -> Result<QkNormRopeBinding> {
        let op = "qk_norm_rope";
        let QkvShape { n_heads, n_kv_heads, head_dim } = shape;
        if cache.f32 != self.kv_f32 {
            return Err(Error::shape(op, format!("compiled for {} caches, given {}", kv_name(self.kv_f32), kv_name(cache.f32))));
        }
        let (q_rows, kv_rows) = (n_heads as u64 * head_dim as u64, n_kv_heads as u64 * head_dim as u64);
        if head_dim == 0 || !head_dim.is_multiple_of(4) || n_kv_heads == 0 || kv_rows != cache.width as u64 || head_dim != rope.head_dim {
            return Err(Error::shape(
                op,
                format!("{n_heads} + {n_kv_heads} heads of {head_dim} (a multiple of 4), a cache {} wide, RoPE for heads of {}", cache.width, rope.head_dim),
            ));
        }
        check_fits(op, "src", q_rows + 2 * kv_rows, words(src))?;
        check_fits(op, "q", q_rows, words(q))?;
        check_fits(op, "the norm weights", head_dim as u64, words(q_norm).min(words(k_norm)))?;
        let params = QkNormRopeParams { n_heads, n_kv_heads, head_dim, capacity: cache.capacity, eps, ..Default::default() };
        let elem = if cache.f32 { 4 } else { 2 };
        let traffic = Traffic::new(4 * (q_rows + 2 * kv_rows + 2 * head_dim as u64), 4 * q_rows + 2 * elem * kv_rows);
        Ok(Prepared {
            op: "qk_norm_rope",
            bound: self.kernel.bind_with(ctx, &[src, q_norm, k_norm, q, &cache.k, &cache.v, &rope.buffer], &[step]),
            params,
            groups: grid(n_heads + n_kv_heads),
            traffic,
            positions: rope.positions,
        })
    }
}
