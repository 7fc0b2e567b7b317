//! The Gemma 2 model: configuration, weights on the GPU, and the forward pass.

pub mod config;
pub mod cpu;
pub mod engine;
#[cfg(not(target_arch = "wasm32"))]
pub mod local;
pub mod tensors;
pub mod weights;
