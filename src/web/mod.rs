//! JavaScript bindings (wasm32 only). Errors cross into JS here and only here, as `Error`
//! objects whose `name` says which kind of failure it was.

use wasm_bindgen::prelude::*;

use crate::error::Error;
use crate::gpu::{ContextOptions, GpuContext};

mod api;
mod cache;
mod js;
mod loader;
mod lock;

pub use api::Gemma;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// Turn a crate error into a JS `Error` with a `name` a caller can branch on.
pub(crate) fn js_error(e: Error) -> JsValue {
    let name = match &e {
        Error::NoAdapter { .. } => "NoWebGPUError",
        Error::LimitTooSmall { .. } => "AdapterLimitsError",
        Error::DeviceRequest { .. } | Error::Gpu { .. } | Error::Readback(_) => "GPUError",
        Error::ShaderCompile { .. } => "ShaderCompileError",
        Error::Shape { .. } | Error::InvalidArgument { .. } => "InvalidArgumentError",
        Error::Config { .. } => "ModelConfigError",
        Error::Format(_) => "ModelFormatError",
        Error::ContextOverflow { .. } => "ContextOverflowError",
        Error::Download { .. } => "DownloadError",
        Error::Corrupt(_) => "ShardCorruptError",
        Error::Aborted(_) => "AbortError",
        Error::Disposed => "DisposedError",
        Error::DeviceLost { .. } => "DeviceLostError",
        Error::OutOfMemory { .. } => "OutOfMemoryError",
    };
    let err = js_sys::Error::new(&e.to_string());
    err.set_name(name);
    err.into()
}

/// Describe the WebGPU adapter this browser gives us (name, limits, optional features).
#[wasm_bindgen(js_name = adapterReport)]
pub async fn adapter_report() -> Result<String, JsValue> {
    let ctx = GpuContext::new(&ContextOptions::default()).await.map_err(js_error)?;
    Ok(ctx.report.to_string())
}

/// Run the int4 matrix-vector kernel on random data and compare it with its CPU twin
/// (`selftest::run`); returns the adapter report and one result line (the demo page's
/// adapter check).
#[wasm_bindgen(js_name = kernelSelfTest)]
pub async fn kernel_self_test() -> Result<String, JsValue> {
    crate::selftest::run().await.map_err(js_error)
}
