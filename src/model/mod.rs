//! The model: its configuration and tensor names, weights on the GPU, the activations, one
//! decoder layer's bindings, the engine that runs the forward pass, the one load path, and the
//! CPU twin of the whole pass. `docs/model.md` is the spec they implement.

pub mod activations;
pub mod config;
pub mod cpu;
pub mod engine;
pub mod layer;
pub mod load;
pub mod options;
pub mod tensors;
pub mod weights;
