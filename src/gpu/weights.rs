//! A packed weight on the GPU, split by rows into parts that each fit one storage binding.
//!
//! Gemma 2 2B's int4 embedding is ~316 MiB; lavapipe and many phones bind at most 128 MiB.
//! Every op that reads a weight takes one part and the row range it covers; the caller loops
//! over `parts` (one dispatch per part, all in the same pass).

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::quant::{row_bytes, DType, Packed};

#[derive(Debug)]
pub struct WeightPart {
    pub buffer: wgpu::Buffer,
    /// First row of the whole tensor held by this part.
    pub row_start: u32,
    pub rows: u32,
    /// Word offset of the group parameters inside `buffer`: int4 (scale, min) words or int8
    /// fp16 scales (0 for f32, f16 and bf16).
    pub scales_offset: u32,
}

#[derive(Debug)]
pub struct GpuWeight {
    pub dtype: DType,
    pub rows: u32,
    pub cols: u32,
    pub parts: Vec<WeightPart>,
}

impl GpuWeight {
    /// Upload `packed`, splitting it so no part exceeds `max_part_bytes` (0: the device's
    /// storage-binding limit).
    pub fn upload(ctx: &GpuContext, label: &str, packed: &Packed, max_part_bytes: u64) -> Result<Self> {
        let limit = if max_part_bytes == 0 { ctx.max_storage_binding() } else { max_part_bytes.min(ctx.max_storage_binding()) };
        let rows_per_part = rows_per_part(packed.dtype, packed.cols, limit, packed.rows)?;
        let mut parts = Vec::new();
        let mut start = 0;
        while start < packed.rows {
            let end = (start + rows_per_part).min(packed.rows);
            let slice = if start == 0 && end == packed.rows { packed.clone() } else { packed.rows_slice(start, end) };
            parts.push(WeightPart {
                buffer: ctx.storage_from(&format!("{label}[{start}..{end}]"), bytemuck::cast_slice(&slice.words))?,
                row_start: start as u32,
                rows: (end - start) as u32,
                scales_offset: slice.scales_offset() as u32,
            });
            start = end;
        }
        Ok(Self { dtype: packed.dtype, rows: packed.rows as u32, cols: packed.cols as u32, parts })
    }

    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.buffer.size()).sum()
    }
}

/// How many rows fit one part of at most `limit` bytes.
pub fn rows_per_part(dtype: DType, cols: usize, limit: u64, rows: usize) -> Result<usize> {
    let per_row = row_bytes(dtype, cols);
    let n = (limit / per_row) as usize;
    if n == 0 {
        return Err(crate::error::Error::LimitTooSmall {
            adapter: "this device".into(),
            limit: "maxStorageBufferBindingSize",
            needed: per_row,
            available: limit,
        });
    }
    Ok(n.min(rows).max(1))
}
