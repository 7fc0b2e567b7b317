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
    let result = pollster::block_on(async {
        let ctx = common::context().await?;
        case(ctx).await
    });
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

kernel_tests!(embedding, rmsnorm, rope, matmul, matvec, geglu, fused, softcap, kv_cache, attention, sample, errors);

#[test]
fn adapter_report() {
    let ctx = pollster::block_on(common::context()).unwrap_or_else(|e| panic!("{e}"));
    println!("adapter: {}", ctx.report);
    assert!(ctx.report.max_storage_binding >= 128 << 20, "{}", ctx.report);
    assert!(!ctx.device.features().contains(wgpu::Features::SHADER_F16), "the device was created with shader-f16");
}
