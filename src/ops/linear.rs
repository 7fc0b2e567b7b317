//! Products with a packed weight `W [N, K]` (PyTorch `nn.Linear` orientation):
//! `y[m, n] = sum_k x[m, k] * W[n, k]`. `MatMul` is the tiled kernel for a block of rows
//! (prefill), `MatVec` the one-row kernel (decode). A weight split into parts is handled by
//! one dispatch per part writing its own column range of `y`.

use super::{check_fits, check_groups, uniform, words};
use crate::error::{Error, Result};
use crate::gpu::weights::GpuWeight;
use crate::gpu::{grid, Bound, GpuContext, Kernel, Recorder};
use crate::quant::DType;
use crate::shaders::{self, consts};

uniform! {
    pub struct MatMulParams {
        pub m: u32,
        pub k: u32,
        pub n: u32,
        pub scales_offset: u32,
        pub out_offset: u32,
        pub out_stride: u32,
        pub _pad0: u32,
        pub _pad1: u32,
    }
}

uniform! {
    pub struct MatVecParams {
        pub k: u32,
        pub n: u32,
        pub scales_offset: u32,
        pub out_offset: u32,
    }
}

/// Output tile of the matmul kernel: columns per workgroup, and rows for the large-tile
/// variant; calls with at most `MATMUL_SMALL_M` rows use 16-row tiles instead.
pub const MATMUL_TILE: u32 = consts::MATMUL_TILE;
pub const MATMUL_SMALL_M: u32 = 32;
/// Matvec shape: lanes per team (`T`, which splits a row's K) for a row of `k` weights, chosen
/// so each lane reads a handful of 32-weight chunks (at most 16), and rows per team (`NR`).
pub const MATVEC_TEAMS: [u32; 3] = [4, 16, 64];
pub const MATVEC_ROWS_PER_TEAM: u32 = consts::MV_MAX_NR;

/// The team size (one of `MATVEC_TEAMS`) the matvec kernel uses for rows of `k` weights.
pub fn matvec_team(k: u32) -> u32 {
    let chunks = k.div_ceil(32);
    MATVEC_TEAMS.into_iter().find(|t| chunks <= 16 * t).unwrap_or(consts::MV_WG)
}

#[derive(Debug)]
pub struct LinearBinding<P> {
    parts: Vec<(Bound<P>, u32, u32, u32)>, // (bound, row_start, rows, scales_offset)
    k: u32,
    n: u32,
    max_m: u64,
    /// Rows of `W` per workgroup (matvec only).
    rows_per_group: u32,
}

impl<P> LinearBinding<P> {
    /// Number of weight parts (one dispatch each).
    pub fn parts(&self) -> usize {
        self.parts.len()
    }
}

fn bind_parts<P: bytemuck::Pod + PartialEq>(
    op: &'static str,
    kernel: &Kernel,
    dtype: DType,
    ctx: &GpuContext,
    x: &wgpu::Buffer,
    w: &GpuWeight,
    y: &wgpu::Buffer,
    vec4_views: bool,
) -> Result<LinearBinding<P>> {
    if w.dtype != dtype {
        return Err(Error::shape(op, format!("weight is {} but the kernel was built for {}", w.dtype.name(), dtype.name())));
    }
    let max_m = (words(x) / w.cols.max(1) as u64).min(words(y) / w.rows.max(1) as u64);
    let bind = |part: &wgpu::Buffer| if vec4_views { kernel.bind(ctx, &[x, part, y, x, part]) } else { kernel.bind(ctx, &[x, part, y]) };
    let parts = w.parts.iter().map(|p| (bind(&p.buffer), p.row_start, p.rows, p.scales_offset)).collect();
    Ok(LinearBinding { parts, k: w.cols, n: w.rows, max_m, rows_per_group: 0 })
}

#[derive(Debug)]
pub struct MatMul {
    large: Kernel,
    small: Kernel,
    dtype: DType,
}

/// A weight bound to both matmul variants.
#[derive(Debug)]
pub struct MatMulBinding {
    large: LinearBinding<MatMulParams>,
    small: LinearBinding<MatMulParams>,
}

impl MatMulBinding {
    pub fn parts(&self) -> usize {
        self.large.parts()
    }

    /// `m` rows of `x` times the weight: one dispatch per weight part.
    pub fn dispatch(&self, rec: &mut Recorder<'_>, m: u32) -> Result<()> {
        let (b, tile_m) = if m <= MATMUL_SMALL_M { (&self.small, 16) } else { (&self.large, MATMUL_TILE) };
        check_fits("matmul", "rows of x/y", m as u64, b.max_m)?;
        let gy = check_groups("matmul", "row tiles", m.div_ceil(tile_m) as u64)?;
        for (bound, row_start, rows, scales_offset) in &b.parts {
            let gx = check_groups("matmul", "column tiles", rows.div_ceil(MATMUL_TILE) as u64)?;
            let params = MatMulParams { m, k: b.k, n: *rows, scales_offset: *scales_offset, out_offset: *row_start, out_stride: b.n, ..Default::default() };
            bound.dispatch(rec, &params, [gx, gy.max(1), 1]);
        }
        Ok(())
    }
}

/// A weight bound to the matrix-vector kernel.
pub type MatVecBinding = LinearBinding<MatVecParams>;

impl MatVecBinding {
    /// One row of `x` times the weight: one dispatch per weight part.
    pub fn dispatch(&self, rec: &mut Recorder<'_>) -> Result<()> {
        check_fits("matvec", "x/y", 1, self.max_m)?;
        for (bound, row_start, rows, scales_offset) in &self.parts {
            let params = MatVecParams { k: self.k, n: *rows, scales_offset: *scales_offset, out_offset: *row_start };
            bound.dispatch(rec, &params, grid(rows.div_ceil(self.rows_per_group)));
        }
        Ok(())
    }
}

impl MatMul {
    pub async fn new(ctx: &GpuContext, dtype: DType) -> Result<Self> {
        let w = ("WTYPE", dtype.wgsl_id());
        Ok(Self {
            large: Kernel::new(ctx, &shaders::MATMUL, &[w, ("TM", 4.0)]).await?,
            small: Kernel::new(ctx, &shaders::MATMUL, &[w, ("TM", 1.0)]).await?,
            dtype,
        })
    }

    /// `x`: f32 [M, K]; `y`: f32 [M, N].
    pub fn bind(&self, ctx: &GpuContext, x: &wgpu::Buffer, w: &GpuWeight, y: &wgpu::Buffer) -> Result<MatMulBinding> {
        Ok(MatMulBinding {
            large: bind_parts("matmul", &self.large, self.dtype, ctx, x, w, y, false)?,
            small: bind_parts("matmul", &self.small, self.dtype, ctx, x, w, y, false)?,
        })
    }
}

#[derive(Debug)]
pub struct MatVec {
    /// One pipeline per team size of `MATVEC_TEAMS`.
    kernels: Vec<(u32, Kernel)>,
    dtype: DType,
}

impl MatVec {
    pub async fn new(ctx: &GpuContext, dtype: DType) -> Result<Self> {
        let mut kernels = Vec::new();
        for t in MATVEC_TEAMS {
            let constants = [("WTYPE", dtype.wgsl_id()), ("T", t as f64), ("NR", MATVEC_ROWS_PER_TEAM as f64)];
            kernels.push((t, Kernel::new(ctx, &shaders::MATVEC, &constants).await?));
        }
        Ok(Self { kernels, dtype })
    }

    /// `x`: f32 [K]; `y`: f32 [N].
    pub fn bind(&self, ctx: &GpuContext, x: &wgpu::Buffer, w: &GpuWeight, y: &wgpu::Buffer) -> Result<MatVecBinding> {
        self.bind_team(ctx, x, w, y, matvec_team(w.cols))
    }

    /// `bind` with the team size chosen by the caller (tests reach every variant, and the
    /// folded grid of a many-row weight, this way).
    pub fn bind_team(&self, ctx: &GpuContext, x: &wgpu::Buffer, w: &GpuWeight, y: &wgpu::Buffer, team: u32) -> Result<MatVecBinding> {
        let Some((_, kernel)) = self.kernels.iter().find(|(t, _)| *t == team) else {
            return Err(Error::shape("matvec", format!("no kernel with {team} lanes per row (have {MATVEC_TEAMS:?})")));
        };
        // x and the weight are bound twice: as scalars and as vec4 (the chunked path).
        let mut b = bind_parts("matvec", kernel, self.dtype, ctx, x, w, y, true)?;
        b.rows_per_group = (consts::MV_WG / team) * MATVEC_ROWS_PER_TEAM;
        Ok(b)
    }
}
