//! gemma-webgpu: Gemma 2 and Gemma 3 (text) inference on WebGPU, in the browser (wasm32) and
//! natively (wgpu).
//!
//! Layers, bottom up:
//! - [`gpu`]: device, buffers, read-back, compiled kernels, split weights. No model knowledge.
//! - [`shaders`]: the WGSL sources (`shaders/*.wgsl`), one file per kernel family.
//! - [`ops`]: one launcher per kernel family; shape checks, binding, dispatch.
//! - [`quant`]: the packed weight codecs (f32, fp16, bf16, int4, int8) the kernels read.
//! - [`reference`]: CPU twins of every kernel, used by the tests.
//! - [`model`]: the config, tensor names, GPU weights, the forward pass (`Engine`) and its CPU
//!   twin, as `docs/model.md` describes them.
//! - [`format`](mod@format), [`convert`]: the model format (`docs/format.md`) and the
//!   converter from Hugging Face checkpoints and GGUF files.
//! - [`tokenizer`], [`session`]: text and token ids, the chat template, generation.
//! - `web` (wasm32 only): the JavaScript bindings.

// Range checks on floats are written `!(x > 0.0)` on purpose: NaN fails them too.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod constraint;
pub mod convert;
pub mod error;
pub mod format;
pub mod gpu;
pub mod model;
pub mod ops;
pub mod quant;
pub mod reference;
pub mod selftest;
pub mod session;
pub mod shaders;
pub mod tokenizer;

#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
