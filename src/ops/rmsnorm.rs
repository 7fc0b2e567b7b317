//! RMSNorm with Gemma's `(1 + w)` weight, optionally added into the residual stream; and the
//! fused end of a sub-block, `x += norm(o); h = norm(x)` (`add_rmsnorm.wgsl`).

use super::{check_fits, uniform, words};
use crate::error::Result;
use crate::gpu::{grid, Bound, GpuContext, Kernel, Recorder, Traffic};
use crate::shaders;

uniform! {
    pub struct RmsNormParams {
        pub rows: u32,
        pub cols: u32,
        pub eps: f32,
        pub _pad: u32,
    }
}

#[derive(Debug)]
pub struct RmsNorm {
    plain: Kernel,
    add: Kernel,
    add_norm: Kernel,
}

/// `x += norm(o, w_add); h = norm(x, w_next)` bound to its five buffers.
#[derive(Debug)]
pub struct AddNormBinding {
    bound: Bound<RmsNormParams>,
    /// Elements of the smallest of o, x and h; of the smaller weight.
    rows_len: u64,
    w_len: u64,
}

#[derive(Debug)]
pub struct RmsNormBinding {
    bound: Bound<RmsNormParams>,
    x_len: u64,
    w_len: u64,
    out_len: u64,
    /// `out += norm(x)`: out is read as well as written.
    add_to_out: bool,
}

impl RmsNorm {
    pub async fn new(ctx: &GpuContext) -> Result<Self> {
        Ok(Self {
            plain: Kernel::new(ctx, &shaders::RMSNORM, &[("ADD_TO_OUT", 0.0)]).await?,
            add: Kernel::new(ctx, &shaders::RMSNORM, &[("ADD_TO_OUT", 1.0)]).await?,
            add_norm: Kernel::new(ctx, &shaders::ADD_RMSNORM, &[]).await?,
        })
    }

    /// `x`, `out`: f32 [rows, cols] (distinct buffers); `weight`: f32 [cols] holding w.
    /// With `add_to_out`, `out += norm(x)` (the fused residual add); else `out = norm(x)`.
    pub fn bind(&self, ctx: &GpuContext, x: &wgpu::Buffer, weight: &wgpu::Buffer, out: &wgpu::Buffer, add_to_out: bool) -> RmsNormBinding {
        let kernel = if add_to_out { &self.add } else { &self.plain };
        RmsNormBinding { bound: kernel.bind(ctx, &[x, weight, out]), x_len: words(x), w_len: words(weight), out_len: words(out), add_to_out }
    }

    /// `x += norm(o, w_add)`, then `h = norm(x, w_next)`, row by row, in one dispatch: `o`, `x`,
    /// `h` f32 [rows, cols] (distinct buffers), the weights f32 [cols] holding w.
    pub fn bind_add_norm(
        &self,
        ctx: &GpuContext,
        o: &wgpu::Buffer,
        w_add: &wgpu::Buffer,
        x: &wgpu::Buffer,
        w_next: &wgpu::Buffer,
        h: &wgpu::Buffer,
    ) -> AddNormBinding {
        AddNormBinding {
            bound: self.add_norm.bind(ctx, &[o, w_add, x, w_next, h]),
            rows_len: words(o).min(words(x)).min(words(h)),
            w_len: words(w_add).min(words(w_next)),
        }
    }
}

impl AddNormBinding {
    pub fn dispatch(&self, rec: &mut Recorder<'_>, rows: u32, cols: u32, eps: f32) -> Result<()> {
        let n = rows as u64 * cols as u64;
        check_fits("add_rmsnorm", "o, x and h", n, self.rows_len)?;
        check_fits("add_rmsnorm", "the weights", cols as u64, self.w_len)?;
        // o and x read, both weights; x and h written.
        let traffic = Traffic::words(2 * n + 2 * cols as u64, 2 * n);
        self.bound.dispatch(rec, &RmsNormParams { rows, cols, eps, _pad: 0 }, grid(rows), traffic);
        Ok(())
    }
}

impl RmsNormBinding {
    pub fn dispatch(&self, rec: &mut Recorder<'_>, rows: u32, cols: u32, eps: f32) -> Result<()> {
        let n = rows as u64 * cols as u64;
        check_fits("rmsnorm", "x", n, self.x_len)?;
        check_fits("rmsnorm", "out", n, self.out_len)?;
        check_fits("rmsnorm", "weight", cols as u64, self.w_len)?;
        let traffic = Traffic::words(n * (1 + self.add_to_out as u64) + cols as u64, n);
        self.bound.dispatch(rec, &RmsNormParams { rows, cols, eps, _pad: 0 }, grid(rows), traffic);
        Ok(())
    }
}
