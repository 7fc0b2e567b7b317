//! Kernel tests on the native adapter (Mesa lavapipe in CI). The cases live in `common` and
//! run unchanged in headless Chromium (`tests/web.rs`). No adapter is a failure, not a skip.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::future::Future;

fn run<F, Fut>(case: F)
where
    F: FnOnce(gemma_webgpu::gpu::GpuContext) -> Fut,
    Fut: Future<Output = common::TestResult>,
{
    finish(pollster::block_on(async {
        let ctx = common::context().await?;
        case(ctx).await.map(|r| r.to_string())
    }));
}

/// Print a case's report, or fail the test with its error.
fn finish(result: Result<String, String>) {
    match result {
        Ok(report) => println!("{report}"),
        Err(e) => panic!("{e}"),
    }
}

macro_rules! kernel_tests {
    ($($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                run(|ctx| async move { common::$name(&ctx).await });
            }
        )*
    };
}

kernel_tests!(embedding, rmsnorm, rope, matmul, geglu, softcap, kv_cache, attention, sample, logit_rules, errors);

/// The matrix-vector kernels (plain and fused) reduce through subgroups where the adapter has
/// them (lavapipe and SwiftShader do; the browser never, through wgpu): their cases run on the
/// default device, then again on one with subgroups turned off. With `GEMMA_EXPECT_SUBGROUPS=1`
/// (the test script sets it) a default device that does not use subgroups is a failure, so CI
/// cannot silently test the plain path twice.
fn run_both_paths<F, Fut>(case: F)
where
    F: Fn(gemma_webgpu::gpu::GpuContext) -> Fut,
    Fut: Future<Output = common::TestResult>,
{
    finish(pollster::block_on(async {
        let fast = common::context().await?;
        let expected = std::env::var("GEMMA_EXPECT_SUBGROUPS").is_ok_and(|v| v == "1");
        if expected && !fast.report.uses_subgroups {
            return Err(format!("GEMMA_EXPECT_SUBGROUPS=1 but the device does not use subgroups: {}", fast.report));
        }
        let opts = gemma_webgpu::gpu::ContextOptions { no_subgroups: true, ..Default::default() };
        let plain = gemma_webgpu::gpu::GpuContext::new(&opts).await.map_err(|e| e.to_string())?;
        if plain.report.uses_subgroups {
            return Err(format!("no_subgroups was ignored: {}", plain.report));
        }
        let mut out = Vec::new();
        for ctx in [fast, plain] {
            let path = if ctx.report.uses_subgroups { "subgroup reduction" } else { "workgroup-memory reduction" };
            out.push(format!("[{path}]\n{}", case(ctx).await?));
        }
        Ok(out.join("\n"))
    }));
}

#[test]
fn matvec() {
    run_both_paths(|ctx| async move { common::matvec(&ctx).await });
}

#[test]
fn fused() {
    run_both_paths(|ctx| async move { common::fused(&ctx).await });
}

#[test]
fn adapter_report() {
    let ctx = pollster::block_on(common::context()).unwrap_or_else(|e| panic!("{e}"));
    println!("adapter: {}", ctx.report);
    assert!(ctx.report.max_storage_binding >= 128 << 20, "{}", ctx.report);
    assert!(!ctx.device.features().contains(wgpu::Features::SHADER_F16), "the device was created with shader-f16");
}
