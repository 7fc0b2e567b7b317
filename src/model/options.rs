//! Load-time options of the engine: every default and its validation live here, so the CLI,
//! the browser loader and the tests agree (the model's own settings are `ModelConfig`, the
//! generation settings `GenerateParams`).

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;

/// KV-cache length when none is asked for (capped at the model's `max_position_embeddings`).
pub const DEFAULT_MAX_CONTEXT: u32 = 4096;
/// Prompt tokens per prefill pass when none is asked for.
pub const DEFAULT_PREFILL_CHUNK: u32 = 128;

/// How the KV cache stores K and V.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    /// fp16 pairs packed in `u32` (half the memory; what users want).
    #[default]
    F16,
    /// f32: twice the memory, no rounding (for checking numerics against an f32 reference).
    F32,
}

impl KvType {
    /// `F32` when `exact`, else the default `F16`.
    pub fn f32_if(exact: bool) -> Self {
        if exact {
            KvType::F32
        } else {
            KvType::F16
        }
    }

    /// Round a K or V value as the cache stores it (the CPU twin's view of the cache).
    pub fn round(self, v: f32) -> f32 {
        match self {
            KvType::F16 => half::f16::from_f32(v).to_f32(),
            KvType::F32 => v,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// KV-cache length; prompts plus generated tokens must fit. `None`: `DEFAULT_MAX_CONTEXT`,
    /// or the model's `max_position_embeddings` if that is smaller.
    pub max_context: Option<u32>,
    /// Prompt tokens per prefill pass (bounds activation memory); clamped to the context.
    pub prefill_chunk: u32,
    pub kv: KvType,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { max_context: None, prefill_chunk: DEFAULT_PREFILL_CHUNK, kv: KvType::F16 }
    }
}

impl EngineOptions {
    /// Options with an explicit context length (tests and tools).
    pub fn with_context(max_context: u32, prefill_chunk: u32, kv: KvType) -> Self {
        Self { max_context: Some(max_context), prefill_chunk, kv }
    }

    /// The options made concrete for `config`: `max_context` filled in and checked against
    /// the model's positions, `prefill_chunk` clamped to `1..=max_context`.
    pub fn resolve(self, config: &ModelConfig) -> Result<Self> {
        let most = config.max_position_embeddings;
        let max_context = self.max_context.unwrap_or(DEFAULT_MAX_CONTEXT.min(most));
        if max_context == 0 || max_context > most {
            return Err(Error::invalid(
                "max_context",
                format!("the context length (maxContext in JS, --max-context in the CLI) must be from 1 to the model's max_position_embeddings ({most}), got {max_context}"),
            ));
        }
        Ok(Self { max_context: Some(max_context), prefill_chunk: self.prefill_chunk.clamp(1, max_context), kv: self.kv })
    }

    /// The context length of resolved options (`DEFAULT_MAX_CONTEXT` if unresolved).
    pub fn context(&self) -> u32 {
        self.max_context.unwrap_or(DEFAULT_MAX_CONTEXT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_context_is_capped_by_the_model_and_bad_lengths_are_named() {
        let mut c = crate::convert::preset("2b").expect("preset");
        let o = EngineOptions::default().resolve(&c).expect("default");
        assert_eq!((o.context(), o.prefill_chunk, o.kv), (4096, 128, KvType::F16));
        c.max_position_embeddings = 100;
        let o = EngineOptions::default().resolve(&c).expect("capped");
        assert_eq!((o.context(), o.prefill_chunk), (100, 100));
        for bad in [0, 101] {
            let e = EngineOptions { max_context: Some(bad), ..Default::default() }.resolve(&c).expect_err("out of range");
            assert!(e.to_string().contains("maxContext") && e.to_string().contains("max_position_embeddings (100)"), "{e}");
        }
    }
}
