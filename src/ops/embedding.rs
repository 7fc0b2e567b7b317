//! Embedding gather from a packed, possibly split, `[V, H]` table: `out[t] = table[ids[t]] * scale`.

use super::{check_fits, uniform, words};
use crate::error::{Error, Result};
use crate::gpu::weights::GpuWeight;
use crate::gpu::{grid, Bound, GpuContext, Kernel, Recorder, Traffic};
use crate::quant::DType;
use crate::shaders;

uniform! {
    pub struct EmbeddingParams {
        pub n_tokens: u32,
        pub cols: u32,
        pub row_start: u32,
        pub rows: u32,
        pub scales_offset: u32,
        pub scale: f32,
        pub w_row0: u32,
        pub _pad1: u32,
    }
}

#[derive(Debug)]
pub struct Embedding {
    kernel: Kernel,
    dtype: DType,
}

#[derive(Debug)]
pub struct EmbeddingBinding {
    parts: Vec<(Bound<EmbeddingParams>, u32, u32, u32, u32)>, // (bound, row_start, rows, scales_offset, row_offset)
    cols: u32,
    /// Bytes of one row of the table (scales included), for the profile.
    row_bytes: u64,
    max_tokens: u64,
}

impl Embedding {
    pub async fn new(ctx: &GpuContext, dtype: DType) -> Result<Self> {
        Ok(Self { kernel: Kernel::new(ctx, &shaders::EMBEDDING, &[("WTYPE", dtype.wgsl_id())]).await?, dtype })
    }

    /// `ids`: u32 [T]; `out`: f32 [T, H].
    pub fn bind(&self, ctx: &GpuContext, ids: &wgpu::Buffer, table: &GpuWeight, out: &wgpu::Buffer) -> Result<EmbeddingBinding> {
        if table.dtype != self.dtype {
            return Err(Error::shape("embedding", format!("table is {} but the kernel was built for {}", table.dtype.name(), self.dtype.name())));
        }
        let max_tokens = words(ids).min(words(out) / table.cols.max(1) as u64);
        let parts = table.parts.iter().map(|p| (self.kernel.bind(ctx, &[ids, &p.buffer, out]), p.row_start, p.rows, p.scales_offset, p.row_offset)).collect();
        let row_bytes = table.bytes() / (table.rows.max(1) as u64);
        Ok(EmbeddingBinding { parts, cols: table.cols, max_tokens, row_bytes })
    }
}

impl EmbeddingBinding {
    /// Gather `n_tokens` rows. Ids must be < V (the caller validates them on the CPU: ids out
    /// of range leave their output row untouched).
    pub fn dispatch(&self, rec: &mut Recorder<'_>, n_tokens: u32, scale: f32) -> Result<()> {
        check_fits("embedding", "ids/out", n_tokens as u64, self.max_tokens)?;
        let n = n_tokens as u64;
        for (i, (bound, row_start, rows, scales_offset, w_row0)) in self.parts.iter().enumerate() {
            let params = EmbeddingParams {
                n_tokens,
                cols: self.cols,
                row_start: *row_start,
                rows: *rows,
                scales_offset: *scales_offset,
                scale,
                w_row0: *w_row0,
                ..Default::default()
            };
            // Every part reads the ids; each token's row is read and written by one part,
            // counted with the first (which part holds it is known only on the GPU).
            let traffic = if i == 0 { Traffic::new(4 * n + n * self.row_bytes, 4 * n * self.cols as u64) } else { Traffic::words(n, 0) };
            bound.dispatch(rec, &params, grid(n_tokens), traffic);
        }
        Ok(())
    }
}
