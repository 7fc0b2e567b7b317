//! Token sampling on the GPU: greedy, or temperature + top-k + top-p with a seeded PCG draw.
//! Only the chosen id (4 bytes) is read back. The exact rule is documented in `sample.wgsl`.

use super::{check_fits, uniform, words};
use crate::error::{Error, Result};
use crate::gpu::{Bound, GpuContext, Kernel, Recorder};
use crate::shaders;

uniform! {
    pub struct SampleParams {
        pub n: u32,
        pub top_k: u32,
        pub seed: u32,
        pub counter: u32,
        pub temperature: f32,
        pub top_p: f32,
        pub _pad0: u32,
        pub _pad1: u32,
    }
}

/// Sampling settings. `temperature <= 0` or `top_k == 1` is greedy; `top_k == 0` and
/// `top_p >= 1` disable those filters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub seed: u32,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 };

    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::invalid("temperature", format!("must be a finite number >= 0, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid("top_p", format!("must be in (0, 1], got {}", self.top_p)));
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Sampler {
    kernel: Kernel,
}

#[derive(Debug)]
pub struct SamplerBinding {
    bound: Bound<SampleParams>,
    len: u64,
}

impl Sampler {
    pub async fn new(ctx: &GpuContext) -> Result<Self> {
        Ok(Self { kernel: Kernel::new(ctx, &shaders::SAMPLE, &[]).await? })
    }

    /// `logits`: f32 [n]; `result`: u32, the chosen id is written to element 0.
    pub fn bind(&self, ctx: &GpuContext, logits: &wgpu::Buffer, result: &wgpu::Buffer) -> SamplerBinding {
        SamplerBinding { bound: self.kernel.bind(ctx, &[logits, result]), len: words(logits) }
    }
}

impl SamplerBinding {
    /// `counter` distinguishes successive draws with one seed (e.g. the decode step).
    pub fn dispatch(&self, rec: &mut Recorder<'_>, n: u32, s: &Sampling, counter: u32) -> Result<()> {
        s.validate()?;
        if n == 0 {
            return Err(Error::shape("sample", "no logits to sample from"));
        }
        check_fits("sample", "logits", n as u64, self.len)?;
        let params = SampleParams { n, top_k: s.top_k, seed: s.seed, counter, temperature: s.temperature, top_p: s.top_p, ..Default::default() };
        self.bound.dispatch(rec, &params, [1, 1, 1]);
        Ok(())
    }
}
