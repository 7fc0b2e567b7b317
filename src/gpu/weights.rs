//! A packed weight on the GPU, split by rows into parts that each fit one storage binding.
//!
//! Gemma 2 2B's int4 embedding is ~316 MiB; lavapipe and many phones bind at most 128 MiB.
//! Every op that reads a weight takes one part and the row range it covers; the caller loops
//! over `parts` (one dispatch per part, all in the same pass).
//!
//! Weights that one kernel reads together (a layer's q, k and v; gate and up) are joined by
//! rows into one buffer at load (`join`), and each stays usable on its own as a `view` of it.

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::quant::{row_bytes, DType, Packed, INT4_GROUP};

#[derive(Debug, Clone)]
pub struct WeightPart {
    pub buffer: wgpu::Buffer,
    /// First row of the whole tensor held by this part.
    pub row_start: u32,
    pub rows: u32,
    /// Word offset of the group parameters inside `buffer`: int4 (scale, min) words or int8
    /// fp16 scales (0 for f32, f16 and bf16).
    pub scales_offset: u32,
    /// Rows of `buffer` before this part's first row: 0, except in a view of a joined weight
    /// (the kernels' `w_row0`).
    pub row_offset: u32,
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
                row_offset: 0,
            });
            start = end;
        }
        Ok(Self { dtype: packed.dtype, rows: packed.rows as u32, cols: packed.cols as u32, parts })
    }

    /// Bytes of the weight (of its rows only, for a view).
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| self.part_bytes(p)).sum()
    }

    /// Bytes of one part's rows, scales included.
    pub fn part_bytes(&self, part: &WeightPart) -> u64 {
        4 * self.dtype.words(part.rows as usize, self.cols as usize) as u64
    }

    /// Rows `first..first + rows` of a one-part weight, sharing its buffer: the kernels read
    /// them as a weight of their own (`WeightPart::row_offset`).
    pub fn view(&self, first: u32, rows: u32) -> Result<Self> {
        let (Some(part), 1) = (self.parts.first(), self.parts.len()) else {
            return Err(Error::shape("weight view", format!("a view needs a weight in one part, this one has {}", self.parts.len())));
        };
        if first.checked_add(rows).is_none_or(|end| end > part.rows) {
            return Err(Error::shape("weight view", format!("rows {first}..+{rows} of a weight of {} rows", part.rows)));
        }
        let row_offset = part.row_offset + first;
        Ok(Self { dtype: self.dtype, rows, cols: self.cols, parts: vec![WeightPart { rows, row_start: 0, row_offset, ..part.clone() }] })
    }

    /// Free this weight's GPU memory now. Dropping a buffer does not do that in a browser
    /// (wgpu leaves it to the page's garbage collector, which may run long after a load: the
    /// 2B's joined originals, 1.16 GiB, stayed allocated beside their copies). Work already
    /// submitted that reads the buffers still runs first (WebGPU and wgpu defer the release).
    /// Only for weights whose buffers nothing else shares.
    pub fn destroy(self) {
        for part in self.parts {
            part.buffer.destroy();
        }
    }

    /// The same weight with runs of consecutive parts joined (`join`) into as few parts as one
    /// storage binding allows: one dispatch per part is what reading it costs, and a file
    /// stores a large tensor in shard-sized parts (the 2B's int4 embedding: 11 parts of at
    /// most 32 MiB become 3 under a 128 MiB binding limit). Parts that cannot be joined stay.
    pub fn regroup(self, ctx: &GpuContext, label: &str) -> Result<Self> {
        let limit = ctx.max_storage_binding();
        self.regroup_within(ctx, label, limit)
    }

    /// `regroup` into parts of at most `limit` bytes (at most the binding limit). The parts
    /// that were joined are destroyed (`destroy`): `self` must not share its buffers.
    pub fn regroup_within(self, ctx: &GpuContext, label: &str, limit: u64) -> Result<Self> {
        if self.parts.len() < 2 {
            return Ok(self);
        }
        let limit = limit.min(ctx.max_storage_binding());
        let (dtype, rows, cols) = (self.dtype, self.rows, self.cols);
        // Runs of parts that follow one another in rows and fit one binding together.
        let mut runs: Vec<(Vec<WeightPart>, u64)> = Vec::new();
        for part in self.parts {
            let bytes = 4 * dtype.words(part.rows as usize, cols as usize) as u64;
            match runs.last_mut() {
                Some((run, total)) if run.last().is_some_and(|p| p.row_start.checked_add(p.rows) == Some(part.row_start)) && *total + bytes <= limit => {
                    run.push(part);
                    *total += bytes;
                }
                _ => runs.push((vec![part], bytes)),
            }
        }
        let mut parts = Vec::new();
        for (run, _) in runs {
            let Some(row_start) = run.first().map(|p| p.row_start) else { continue };
            if run.len() == 1 {
                parts.extend(run);
                continue;
            }
            let end = run.iter().map(|p| p.rows).fold(row_start, u32::saturating_add);
            let alone: Vec<GpuWeight> = run.into_iter().map(|p| GpuWeight { dtype, rows: p.rows, cols, parts: vec![p] }).collect();
            match Self::join(ctx, &format!("{label}[{row_start}..{end}]"), &alone.iter().collect::<Vec<_>>())? {
                Some(joined) => {
                    parts.extend(joined.parts.into_iter().map(|p| WeightPart { row_start, ..p }));
                    alone.into_iter().for_each(GpuWeight::destroy);
                }
                None => parts.extend(alone.into_iter().flat_map(|w| w.parts)),
            }
        }
        Ok(Self { dtype, rows, cols, parts })
    }

    /// `weights` joined by rows into one buffer (theirs in order), with GPU copies recorded and
    /// submitted here: codes after codes, then group parameters after group parameters, so the
    /// result is laid out exactly as one tensor of all their rows would be. `None` when they
    /// cannot be: different types or widths, a weight in several parts or a view, a plane
    /// that does not end on a word (odd fp16 or int8-scale counts), or more bytes than one
    /// storage binding holds. The caller keeps using the originals then.
    pub fn join(ctx: &GpuContext, label: &str, weights: &[&GpuWeight]) -> Result<Option<Self>> {
        let Some(first) = weights.first() else { return Ok(None) };
        let (dtype, cols) = (first.dtype, first.cols as usize);
        let mut rows = 0usize;
        // (buffer, words of each plane) of each weight.
        let mut planes = Vec::new();
        for w in weights {
            let part = match w.parts.as_slice() {
                [part] if part.row_offset == 0 && w.dtype == dtype && w.cols as usize == cols => part,
                _ => return Ok(None),
            };
            let n = (part.rows as usize).saturating_mul(cols);
            // Words of each plane (one for the float types); each must end on a word.
            let sizes: Vec<u64> = match dtype {
                DType::F32 => vec![n as u64],
                DType::F16 | DType::Bf16 if n.is_multiple_of(2) => vec![n as u64 / 2],
                DType::F16 | DType::Bf16 => return Ok(None),
                _ => {
                    let bits: Vec<u64> = dtype.planes().iter().map(|&b| (n / INT4_GROUP) as u64 * b as u64).collect();
                    if bits.iter().any(|b| b % 32 != 0) {
                        return Ok(None);
                    }
                    bits.iter().map(|b| b / 32).collect()
                }
            };
            planes.push((&part.buffer, sizes));
            rows = rows.saturating_add(part.rows as usize);
        }
        let bytes = 4 * dtype.words(rows, cols) as u64;
        if bytes > ctx.max_storage_binding() || u32::try_from(rows).is_err() {
            return Ok(None);
        }
        let buffer = ctx.storage_zeroed(label, bytes)?;
        let scales_offset = dtype.scales_offset(rows, cols) as u64;
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        // Plane k of the result starts after plane k of every weight before it and after
        // every earlier plane of all of them.
        let count = planes.first().map_or(0, |(_, s)| s.len());
        let mut dst_at: Vec<u64> = (0..count).map(|k| planes.iter().map(|(_, s)| s.iter().take(k).sum::<u64>()).sum()).collect();
        for (src, sizes) in &planes {
            let mut src_at = 0u64;
            for (k, &size) in sizes.iter().enumerate() {
                if size > 0 {
                    enc.copy_buffer_to_buffer(src, 4 * src_at, &buffer, 4 * dst_at[k], 4 * size);
                }
                src_at += size;
                dst_at[k] += size;
            }
        }
        ctx.queue.submit([enc.finish()]);
        let rows = rows as u32;
        Ok(Some(Self {
            dtype,
            rows,
            cols: cols as u32,
            parts: vec![WeightPart { buffer, row_start: 0, rows, scales_offset: scales_offset as u32, row_offset: 0 }],
        }))
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
