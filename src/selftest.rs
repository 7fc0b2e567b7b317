//! A quick check that a kernel computes what its CPU twin does on this adapter: an int4
//! matrix-vector product of 1024 rows with K = 2304 (Gemma 2 2B's hidden size), against
//! `reference::linear`. Used by the demo page's adapter check (`kernelSelfTest` in `web`);
//! the thorough tests live in `tests/`.

use crate::error::Result;
use crate::gpu::weights::GpuWeight;
use crate::gpu::{run_pass, ContextOptions, GpuContext};
use crate::ops::linear::MatVec;
use crate::quant::{DType, Packed};
use crate::reference;

pub async fn run() -> Result<String> {
    let ctx = GpuContext::new(&ContextOptions::default()).await?;
    let (k, n) = (2304usize, 1024usize);
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let w: Vec<f32> = (0..n * k).map(|_| next() * 0.1).collect();
    let x: Vec<f32> = (0..k).map(|_| next()).collect();
    let packed = Packed::pack(DType::Int4, n, k, &w)?;
    let weight = GpuWeight::upload(&ctx, "selftest.w", &packed, 0)?;
    let xb = ctx.storage_from("selftest.x", bytemuck::cast_slice(&x))?;
    let yb = ctx.storage_zeroed("selftest.y", (n * 4) as u64)?;
    let op = MatVec::new(&ctx, DType::Int4).await?;
    let bound = op.bind(&ctx, &xb, &weight, &yb)?;
    let mut dispatched = Ok(());
    run_pass(&ctx, "selftest", |rec| dispatched = bound.dispatch(rec)).await?;
    dispatched?;
    let got = ctx.read_back::<f32>(&yb, 0, n as u64).await?;
    let want = reference::linear(&x, &packed.unpack(), k, n);
    let max_err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let max_ref = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
    Ok(format!(
        "adapter: {}\nint4 matvec {n}x{k}: max |GPU - CPU| = {max_err:.2e} (outputs up to {max_ref:.2}) {}",
        ctx.report,
        if max_err <= 1e-4 * max_ref.max(1.0) { "OK" } else { "MISMATCH" }
    ))
}
