//! The kernel tests in headless Chromium's WebGPU (SwiftShader in CI):
//! `cargo test --target wasm32-unknown-unknown` with wasm-bindgen-test-runner (scripts/test.sh). Same cases as `tests/kernels.rs`,
//! except the sampler's chi-squared check of its draws, which runs natively only.
#![cfg(target_arch = "wasm32")]

mod common;

use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

async fn run<Fut: std::future::Future<Output = common::TestResult>>(f: impl FnOnce(gemma_webgpu::gpu::GpuContext) -> Fut) {
    let result = async {
        let ctx = common::context().await?;
        f(ctx).await
    }
    .await;
    match result {
        Ok(report) => console_log!("{report}"),
        Err(e) => panic!("{e}"),
    }
}

macro_rules! kernel_tests {
    ($($name:ident),*) => {
        $(
            #[wasm_bindgen_test]
            async fn $name() {
                run(|ctx| async move { common::$name(&ctx).await }).await;
            }
        )*
    };
}

kernel_tests!(embedding, rmsnorm, rope, matmul, matvec, geglu, fused, softcap, kv_cache, attention, sample, logit_rules, errors);

#[wasm_bindgen_test]
async fn adapter_report() {
    let ctx = common::context().await.unwrap_or_else(|e| panic!("{e}"));
    console_log!("adapter: {}", ctx.report);
    // WebGPU's default binding limit is what the weights are split for, and nothing may need
    // shader-f16: the device is created without it even where the adapter offers it.
    assert!(ctx.report.max_storage_binding >= 128 << 20, "{}", ctx.report);
    assert!(!ctx.device.features().contains(wgpu::Features::SHADER_F16), "the device was created with shader-f16");
}
