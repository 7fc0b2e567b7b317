//! Rotary position embedding (rotate-half pairing) from a cos/sin table computed on the CPU.

use super::{check_fits, uniform, words};
use crate::error::{Error, Result};
use crate::gpu::{grid, Bound, GpuContext, Kernel, Recorder, Traffic};
use crate::shaders::{self, consts};

uniform! {
    pub struct RopeParams {
        pub n_tokens: u32,
        pub n_heads: u32,
        pub head_dim: u32,
        pub pos_start: u32,
    }
}

/// `[positions, head_dim / 2, 2]` = (cos, sin) of `p * inv_freq[j]`, matching Hugging Face:
/// `inv_freq[j] = 1 / theta^(2j / D)` and `p * inv_freq[j]` are computed in f32 (as torch
/// does), then cos/sin of that f32 angle are evaluated in f64 and rounded to f32.
pub fn rope_table(head_dim: usize, theta: f32, positions: usize) -> Vec<f32> {
    rope_table_scaled(head_dim, theta, 1.0, positions)
}

/// `rope_table` with linear position scaling: `inv_freq[j] / factor` (Hugging Face "linear").
pub fn rope_table_scaled(head_dim: usize, theta: f32, factor: f32, positions: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half).map(|j| 1.0 / theta.powf((2 * j) as f32 / head_dim as f32) / factor).collect();
    let mut table = Vec::with_capacity(positions * half * 2);
    for p in 0..positions {
        for f in &inv_freq {
            let angle = (p as f32 * f) as f64;
            table.push(angle.cos() as f32);
            table.push(angle.sin() as f32);
        }
    }
    table
}

/// The table on the GPU.
#[derive(Debug)]
pub struct RopeTable {
    pub buffer: wgpu::Buffer,
    pub head_dim: u32,
    pub positions: u32,
}

impl RopeTable {
    pub fn new(ctx: &GpuContext, head_dim: u32, theta: f32, positions: u32) -> Result<Self> {
        Self::scaled(ctx, head_dim, theta, 1.0, positions)
    }

    pub fn scaled(ctx: &GpuContext, head_dim: u32, theta: f32, factor: f32, positions: u32) -> Result<Self> {
        if !head_dim.is_multiple_of(2) {
            return Err(Error::invalid("rope", format!("head_dim must be even, got {head_dim}")));
        }
        let table = rope_table_scaled(head_dim as usize, theta, factor, positions as usize);
        Ok(Self { buffer: ctx.storage_from("rope table", bytemuck::cast_slice(&table))?, head_dim, positions })
    }
}

#[derive(Debug)]
pub struct Rope {
    kernel: Kernel,
}

#[derive(Debug)]
pub struct RopeBinding {
    bound: Bound<RopeParams>,
    x_len: u64,
    head_dim: u32,
    positions: u32,
}

impl Rope {
    pub async fn new(ctx: &GpuContext) -> Result<Self> {
        Ok(Self { kernel: Kernel::new(ctx, &shaders::ROPE, &[]).await? })
    }

    /// `x`: f32 [T, n_heads * head_dim], rotated in place.
    pub fn bind(&self, ctx: &GpuContext, x: &wgpu::Buffer, table: &RopeTable) -> RopeBinding {
        RopeBinding { bound: self.kernel.bind(ctx, &[x, &table.buffer]), x_len: words(x), head_dim: table.head_dim, positions: table.positions }
    }
}

impl RopeBinding {
    pub fn dispatch(&self, rec: &mut Recorder<'_>, n_tokens: u32, n_heads: u32, pos_start: u32) -> Result<()> {
        check_fits("rope", "x", n_tokens as u64 * n_heads as u64 * self.head_dim as u64, self.x_len)?;
        if pos_start as u64 + n_tokens as u64 > self.positions as u64 {
            return Err(Error::shape("rope", format!("positions {pos_start}..{} exceed the table's {}", pos_start + n_tokens, self.positions)));
        }
        let items = n_tokens * n_heads * (self.head_dim / 2);
        // Each pair: two values read and written, and its (cos, sin) from the table.
        let traffic = Traffic::words(4 * items as u64, 2 * items as u64);
        self.bound.dispatch(rec, &RopeParams { n_tokens, n_heads, head_dim: self.head_dim, pos_start }, grid(items.div_ceil(consts::WG_ROPE)), traffic);
        Ok(())
    }
}
