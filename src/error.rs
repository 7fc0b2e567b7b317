//! The one error type of the crate. Every variant carries the values a user needs to act on it;
//! the JS bindings turn these into `Error` objects in exactly one place.

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    #[error(
        "no GPU adapter was found ({backend}). In a browser, use one with WebGPU enabled \
         (Chrome/Edge 113+, or chrome://flags/#enable-unsafe-webgpu); natively, install a \
         Vulkan, Metal or DX12 driver (on Linux without a GPU: mesa-vulkan-drivers for lavapipe)"
    )]
    NoAdapter { backend: String },

    #[error(
        "the GPU adapter '{adapter}' allows {available} for {limit}, but {needed} is needed; \
         use a GPU with higher limits or a smaller model"
    )]
    LimitTooSmall { adapter: String, limit: &'static str, needed: u64, available: u64 },

    #[error("the GPU device could not be created on '{adapter}': {reason}")]
    DeviceRequest { adapter: String, reason: String },

    #[error("shader '{kernel}' failed to compile: {reason}")]
    ShaderCompile { kernel: String, reason: String },

    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },

    #[error("model config: field '{field}' {detail}")]
    Config { field: &'static str, detail: String },

    #[error("model files: {0}")]
    Format(String),

    #[error(
        "the context is full: {needed} tokens are needed but the engine was loaded with a \
         {max_context}-token context ({cached} already cached); shorten the prompt, reset the \
         conversation, or load with a larger max context"
    )]
    ContextOverflow { needed: u64, max_context: u32, cached: u32 },

    #[error("{what}: {detail}")]
    InvalidArgument { what: &'static str, detail: String },

    #[error("reading a result back from the GPU failed: {0}")]
    Readback(String),

    #[error("the GPU reported an error during '{during}': {reason}")]
    Gpu { during: String, reason: String },

    #[error("could not download {url}: {detail}; check the model URL and your connection, then try again")]
    Download { url: String, detail: String },

    #[error("{0}")]
    Corrupt(String),

    #[error("{0} was aborted")]
    Aborted(&'static str),

    #[error(
        "the GPU device was lost ({reason}); load the model again (it loads from the browser's \
         cache, without downloading). A GPU reset, a driver update or other pages using too much \
         GPU memory can cause this"
    )]
    DeviceLost { reason: String },

    #[error(
        "the GPU ran out of memory allocating {what} ({:.1} MiB); close other tabs or programs \
         that use the GPU, load with a smaller maxContext (the KV cache grows with it), or use \
         a smaller model",
        *bytes as f64 / 1048576.0
    )]
    OutOfMemory { what: String, bytes: u64 },

    #[error("this model was disposed; load it again with Gemma.load")]
    Disposed,
}

impl Error {
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape { op, detail: detail.into() }
    }
    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        Error::InvalidArgument { what, detail: detail.into() }
    }
}
