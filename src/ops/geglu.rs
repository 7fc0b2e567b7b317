//! GeGLU: `out = gelu_tanh(gate) * up`.

use super::{check_fits, uniform, words};
use crate::error::Result;
use crate::gpu::{grid, Bound, GpuContext, Kernel, Recorder, Traffic};
use crate::shaders::{self, consts};

uniform! {
    pub struct GeGluParams {
        pub n: u32,
        pub _pad0: u32,
        pub _pad1: u32,
        pub _pad2: u32,
    }
}

#[derive(Debug)]
pub struct GeGlu {
    kernel: Kernel,
}

#[derive(Debug)]
pub struct GeGluBinding {
    bound: Bound<GeGluParams>,
    len: u64,
}

impl GeGlu {
    pub async fn new(ctx: &GpuContext) -> Result<Self> {
        Ok(Self { kernel: Kernel::new(ctx, &shaders::GEGLU, &[]).await? })
    }

    pub fn bind(&self, ctx: &GpuContext, gate: &wgpu::Buffer, up: &wgpu::Buffer, out: &wgpu::Buffer) -> GeGluBinding {
        GeGluBinding { bound: self.kernel.bind(ctx, &[gate, up, out]), len: words(gate).min(words(up)).min(words(out)) }
    }
}

impl GeGluBinding {
    pub fn dispatch(&self, rec: &mut Recorder<'_>, n: u32) -> Result<()> {
        check_fits("geglu", "gate/up/out", n as u64, self.len)?;
        self.bound.dispatch(rec, &GeGluParams { n, ..Default::default() }, grid(n.div_ceil(consts::WG)), Traffic::words(2 * n as u64, n as u64));
        Ok(())
    }
}
