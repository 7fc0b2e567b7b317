//! Products with a packed weight `W [N, K]` (PyTorch `nn.Linear` orientation):
//! `y[m, n] = sum_k x[m, k] * W[n, k]`. `MatVec` is the one-row kernel (decode); `MatMul` takes
//! a block of rows (prefill): up to `MATVEC_BATCH_MAX_M` rows through the same matrix-vector
//! kernel, `MV_MB` rows of x per workgroup (each weight chunk read once per block), longer
//! blocks through the tiled kernel. A weight split into parts is handled by one dispatch per
//! part writing its own column range of `y`.

use super::{check_fits, check_groups, uniform, words};
use crate::error::{Error, Result};
use crate::gpu::weights::GpuWeight;
use crate::gpu::{grid, Bound, GpuContext, Kernel, Recorder, Traffic};
use crate::quant::DType;
use crate::shaders::{self, consts};

uniform! {
    /// The uniform of both the tiled and the matrix-vector kernel.
    pub struct MatMulParams {
        pub m: u32,
        pub k: u32,
        pub n: u32,
        pub scales_offset: u32,
        pub out_offset: u32,
        pub out_stride: u32,
        pub softcap: f32,
        pub w_row0: u32,
    }
}

/// Output tile of the matmul kernel: rows of x and rows of W per workgroup.
pub const MATMUL_TILE: u32 = consts::MATMUL_TILE;
/// Blocks of at most this many rows go through the matrix-vector kernel instead of tiles.
pub const MATVEC_BATCH_MAX_M: u32 = 32;
/// Matvec shape: lanes per team (`T`, which splits a row's K) for a row of `k` weights, chosen
/// so each lane reads a handful of 32-weight chunks (at most 16), and rows per team (`MV_NR`).
pub const MATVEC_TEAMS: [u32; 3] = [4, 16, 64];
pub const MATVEC_ROWS_PER_TEAM: u32 = consts::MV_NR;

/// The team size (one of `MATVEC_TEAMS`) the matvec kernel uses for rows of `k` weights.
pub fn matvec_team(k: u32) -> u32 {
    let chunks = k.div_ceil(32);
    MATVEC_TEAMS.into_iter().find(|t| chunks <= 16 * t).unwrap_or(consts::MV_WG)
}

/// The distinct team sizes rows of `cols` weights take.
fn teams_for(cols: &[u32]) -> Vec<u32> {
    MATVEC_TEAMS.into_iter().filter(|t| cols.iter().any(|k| matvec_team(*k) == *t)).collect()
}

/// One part of a weight bound: the rows it covers and where they sit in its buffer.
#[derive(Debug)]
struct PartBinding {
    bound: Bound<MatMulParams>,
    /// First output row (of the whole weight) and rows of this part.
    row_start: u32,
    rows: u32,
    scales_offset: u32,
    /// First row of the part inside its buffer (`WeightPart::row_offset`).
    w_row0: u32,
    bytes: u64,
}

impl PartBinding {
    /// The uniform for `m` rows of x, a row length `k` and `n` outputs per row of y.
    fn params(&self, m: u32, k: u32, n: u32, softcap: f32) -> MatMulParams {
        MatMulParams { m, k, n: self.rows, scales_offset: self.scales_offset, out_offset: self.row_start, out_stride: n, softcap, w_row0: self.w_row0 }
    }
}

#[derive(Debug)]
pub struct LinearBinding {
    parts: Vec<PartBinding>,
    k: u32,
    n: u32,
    max_m: u64,
    /// Rows of `W` and of `x` per workgroup (matrix-vector kernel only).
    rows_per_group: u32,
    x_rows_per_group: u32,
    /// > 0: outputs are soft-capped as they are written (`with_softcap`).
    softcap: f32,
}

impl LinearBinding {
    /// Soft-cap every output as it is written: `y = cap * tanh(y / cap)` (0: none).
    pub fn with_softcap(mut self, cap: f32) -> Result<Self> {
        if !(cap.is_finite() && cap >= 0.0) {
            return Err(Error::shape("linear", format!("the soft-cap must be a finite number >= 0, got {cap}")));
        }
        self.softcap = cap;
        Ok(self)
    }

    /// Number of weight parts (one dispatch each).
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// `m` rows of `x` times the weight through the matrix-vector kernel.
    fn dispatch_matvec(&self, rec: &mut Recorder<'_>, m: u32) -> Result<()> {
        check_fits("matvec", "rows of x/y", m as u64, self.max_m)?;
        let gz = check_groups("matvec", "row blocks", m.div_ceil(self.x_rows_per_group) as u64)?;
        for part in &self.parts {
            let [gx, gy, _] = grid(part.rows.div_ceil(self.rows_per_group));
            // Each block of rows of x reads the part's weights again (from L2 at best).
            let traffic = Traffic::new(part.bytes * gz.max(1) as u64 + 4 * m as u64 * self.k as u64, 4 * m as u64 * part.rows as u64);
            part.bound.dispatch(rec, &part.params(m, self.k, self.n, self.softcap), [gx, gy, gz.max(1)], traffic);
        }
        Ok(())
    }
}

fn bind_parts(
    op: &'static str,
    kernel: &Kernel,
    dtype: DType,
    ctx: &GpuContext,
    (x, w, y): (&wgpu::Buffer, &GpuWeight, &wgpu::Buffer),
    vec4_views: bool,
) -> Result<LinearBinding> {
    if w.dtype != dtype {
        return Err(Error::shape(op, format!("weight is {} but the kernel was built for {}", w.dtype.name(), dtype.name())));
    }
    let max_m = (words(x) / w.cols.max(1) as u64).min(words(y) / w.rows.max(1) as u64);
    let bind = |part: &wgpu::Buffer| if vec4_views { kernel.bind(ctx, &[x, part, y, x, part]) } else { kernel.bind(ctx, &[x, part, y]) };
    let parts = w
        .parts
        .iter()
        .map(|p| PartBinding {
            bound: bind(&p.buffer),
            row_start: p.row_start,
            rows: p.rows,
            scales_offset: p.scales_offset,
            w_row0: p.row_offset,
            bytes: w.part_bytes(p),
        })
        .collect();
    Ok(LinearBinding { parts, k: w.cols, n: w.rows, max_m, rows_per_group: 0, x_rows_per_group: 1, softcap: 0.0 })
}

/// The matrix-vector kernel compiled for each team size, for blocks of `mb` rows of x.
#[derive(Debug)]
struct MatVecKernels {
    kernels: Vec<(u32, Kernel)>,
    mb: u32,
    dtype: DType,
}

impl MatVecKernels {
    async fn new(ctx: &GpuContext, dtype: DType, mb: u32, teams: &[u32]) -> Result<Self> {
        let mut kernels = Vec::new();
        for &t in teams {
            if !MATVEC_TEAMS.contains(&t) {
                return Err(Error::shape("matvec", format!("no kernel with {t} lanes per row (have {MATVEC_TEAMS:?})")));
            }
            let constants = [("WTYPE", dtype.wgsl_id()), ("T", t as f64), ("MB", mb as f64)];
            kernels.push((t, Kernel::new(ctx, &shaders::MATVEC, &constants).await?));
        }
        Ok(Self { kernels, mb, dtype })
    }

    fn bind(&self, ctx: &GpuContext, x: &wgpu::Buffer, w: &GpuWeight, y: &wgpu::Buffer, team: u32) -> Result<LinearBinding> {
        let Some((_, kernel)) = self.kernels.iter().find(|(t, _)| *t == team) else {
            let have: Vec<u32> = self.kernels.iter().map(|(t, _)| *t).collect();
            return Err(Error::shape("matvec", format!("no kernel with {team} lanes per row was compiled (have {have:?})")));
        };
        // x and the weight are bound twice: as scalars and as vec4 (the chunked path).
        let mut b = bind_parts("matvec", kernel, self.dtype, ctx, (x, w, y), true)?;
        b.rows_per_group = (consts::MV_WG / team) * MATVEC_ROWS_PER_TEAM;
        b.x_rows_per_group = self.mb;
        Ok(b)
    }
}

#[derive(Debug)]
pub struct MatMul {
    tiles: Kernel,
    batched: MatVecKernels,
    dtype: DType,
}

/// A weight bound to the matmul variants.
#[derive(Debug)]
pub struct MatMulBinding {
    tiles: LinearBinding,
    batched: LinearBinding,
}

/// Which kernel a block of rows takes (`MatMulBinding::dispatch_with` lets tests pick).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatMulPath {
    /// The launcher's choice for the number of rows.
    Auto,
    Tiles,
    MatVec,
}

impl MatMulBinding {
    /// Soft-cap every output as it is written, on both paths (`LinearBinding::with_softcap`).
    pub fn with_softcap(self, cap: f32) -> Result<Self> {
        Ok(Self { tiles: self.tiles.with_softcap(cap)?, batched: self.batched.with_softcap(cap)? })
    }

    pub fn parts(&self) -> usize {
        self.tiles.parts()
    }

    /// `m` rows of `x` times the weight: one dispatch per weight part.
    pub fn dispatch(&self, rec: &mut Recorder<'_>, m: u32) -> Result<()> {
        self.dispatch_with(rec, m, MatMulPath::Auto)
    }

    pub fn dispatch_with(&self, rec: &mut Recorder<'_>, m: u32, path: MatMulPath) -> Result<()> {
        if path == MatMulPath::MatVec || (path == MatMulPath::Auto && m <= MATVEC_BATCH_MAX_M) {
            return self.batched.dispatch_matvec(rec, m);
        }
        let b = &self.tiles;
        check_fits("matmul", "rows of x/y", m as u64, b.max_m)?;
        if m == 0 {
            return Ok(());
        }
        let gy = check_groups("matmul", "row tiles", m.div_ceil(MATMUL_TILE) as u64)?;
        for part in &b.parts {
            let gx = check_groups("matmul", "column tiles", part.rows.div_ceil(MATMUL_TILE) as u64)?;
            // Each row tile reads the part's weights again.
            let traffic = Traffic::new(part.bytes * gy as u64 + 4 * m as u64 * b.k as u64, 4 * m as u64 * part.rows as u64);
            part.bound.dispatch(rec, &part.params(m, b.k, b.n, b.softcap), [gx, gy, 1], traffic);
        }
        Ok(())
    }
}

impl MatMul {
    /// Every variant (tests); `for_cols` compiles only what weights of given widths use.
    pub async fn new(ctx: &GpuContext, dtype: DType) -> Result<Self> {
        Self::for_teams(ctx, dtype, &MATVEC_TEAMS).await
    }

    /// The variants that weights with rows of `cols` weights use.
    pub async fn for_cols(ctx: &GpuContext, dtype: DType, cols: &[u32]) -> Result<Self> {
        Self::for_teams(ctx, dtype, &teams_for(cols)).await
    }

    async fn for_teams(ctx: &GpuContext, dtype: DType, teams: &[u32]) -> Result<Self> {
        let w = ("WTYPE", dtype.wgsl_id());
        Ok(Self { tiles: Kernel::new(ctx, &shaders::MATMUL, &[w]).await?, batched: MatVecKernels::new(ctx, dtype, consts::MV_MB, teams).await?, dtype })
    }

    /// `x`: f32 [M, K]; `y`: f32 [M, N].
    pub fn bind(&self, ctx: &GpuContext, x: &wgpu::Buffer, w: &GpuWeight, y: &wgpu::Buffer) -> Result<MatMulBinding> {
        Ok(MatMulBinding {
            tiles: bind_parts("matmul", &self.tiles, self.dtype, ctx, (x, w, y), false)?,
            batched: self.batched.bind(ctx, x, w, y, matvec_team(w.cols))?,
        })
    }
}

/// A weight bound to the matrix-vector kernel.
pub type MatVecBinding = LinearBinding;

impl MatVecBinding {
    /// One row of `x` times the weight: one dispatch per weight part.
    pub fn dispatch(&self, rec: &mut Recorder<'_>) -> Result<()> {
        self.dispatch_matvec(rec, 1)
    }
}

#[derive(Debug)]
pub struct MatVec(MatVecKernels);

impl MatVec {
    /// Every team size (tests); `for_cols` compiles only what weights of given widths use.
    pub async fn new(ctx: &GpuContext, dtype: DType) -> Result<Self> {
        Ok(Self(MatVecKernels::new(ctx, dtype, 1, &MATVEC_TEAMS).await?))
    }

    /// The team sizes that weights with rows of `cols` weights use.
    pub async fn for_cols(ctx: &GpuContext, dtype: DType, cols: &[u32]) -> Result<Self> {
        Ok(Self(MatVecKernels::new(ctx, dtype, 1, &teams_for(cols)).await?))
    }

    /// `x`: f32 [K]; `y`: f32 [N].
    pub fn bind(&self, ctx: &GpuContext, x: &wgpu::Buffer, w: &GpuWeight, y: &wgpu::Buffer) -> Result<MatVecBinding> {
        self.0.bind(ctx, x, w, y, matvec_team(w.cols))
    }

    /// `bind` with the team size chosen by the caller (tests reach every variant, and the
    /// folded grid of a many-row weight, this way).
    pub fn bind_team(&self, ctx: &GpuContext, x: &wgpu::Buffer, w: &GpuWeight, y: &wgpu::Buffer, team: u32) -> Result<MatVecBinding> {
        self.0.bind(ctx, x, w, y, team)
    }
}
