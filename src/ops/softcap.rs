//! Soft-cap in place: `x = cap * tanh(x / cap)` (Gemma 2's final logits use cap 30; Gemma 3
//! has no final cap and skips this op).

use super::{check_fits, uniform, words};
use crate::error::{Error, Result};
use crate::gpu::{grid, Bound, GpuContext, Kernel, Recorder, Traffic};
use crate::shaders::{self, consts};

uniform! {
    pub struct SoftCapParams {
        pub n: u32,
        pub cap: f32,
        pub _pad0: u32,
        pub _pad1: u32,
    }
}

#[derive(Debug)]
pub struct SoftCap {
    kernel: Kernel,
}

#[derive(Debug)]
pub struct SoftCapBinding {
    bound: Bound<SoftCapParams>,
    len: u64,
}

impl SoftCap {
    pub async fn new(ctx: &GpuContext) -> Result<Self> {
        Ok(Self { kernel: Kernel::new(ctx, &shaders::SOFTCAP, &[]).await? })
    }

    pub fn bind(&self, ctx: &GpuContext, x: &wgpu::Buffer) -> SoftCapBinding {
        SoftCapBinding { bound: self.kernel.bind(ctx, &[x]), len: words(x) }
    }
}

impl SoftCapBinding {
    pub fn dispatch(&self, rec: &mut Recorder<'_>, n: u32, cap: f32) -> Result<()> {
        check_fits("softcap", "x", n as u64, self.len)?;
        if !(cap > 0.0) {
            return Err(Error::shape("softcap", format!("cap must be positive, got {cap}")));
        }
        self.bound.dispatch(rec, &SoftCapParams { n, cap, ..Default::default() }, grid(n.div_ceil(consts::WG)), Traffic::words(n as u64, n as u64));
        Ok(())
    }
}
