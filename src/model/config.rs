//! The model's configuration, read from a Hugging Face `config.json` (field names as there)
//! and validated once. Per-layer behaviour (sliding or global attention) is data here, not
//! branches in the forward pass. Spec: `gemma2-spec.md` §1.

use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Gemma2Config {
    pub vocab_size: u32,
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub num_hidden_layers: u32,
    pub num_attention_heads: u32,
    pub num_key_value_heads: u32,
    pub head_dim: u32,
    pub query_pre_attn_scalar: f32,
    pub sliding_window: u32,
    /// 0 disables the cap.
    pub attn_logit_softcapping: f32,
    /// 0 disables the cap.
    pub final_logit_softcapping: f32,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub max_position_embeddings: u32,
    pub bos_token_id: u32,
    /// Generation stops on any of these (the chat turn end, 107, is added by the chat code).
    pub eos_token_ids: Vec<u32>,
    /// Per layer: `true` = sliding-window (local) attention, `false` = global.
    pub sliding_layers: Vec<bool>,
}

fn field<'a>(cfg: &'a Value, name: &'static str) -> Result<&'a Value> {
    cfg.get(name).filter(|v| !v.is_null()).ok_or_else(|| Error::Config { field: name, detail: "missing".into() })
}

fn uint(cfg: &Value, name: &'static str) -> Result<u32> {
    field(cfg, name)?
        .as_u64()
        .filter(|v| *v > 0 && *v <= u32::MAX as u64)
        .map(|v| v as u32)
        .ok_or_else(|| Error::Config { field: name, detail: format!("must be a positive integer, got {}", cfg[name]) })
}

fn float(cfg: &Value, name: &'static str) -> Result<f32> {
    field(cfg, name)?
        .as_f64()
        .filter(|v| v.is_finite())
        .map(|v| v as f32)
        .ok_or_else(|| Error::Config { field: name, detail: format!("must be a number, got {}", cfg[name]) })
}

fn float_or(cfg: &Value, name: &'static str, default: f32) -> Result<f32> {
    match cfg.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(_) => float(cfg, name),
    }
}

impl Gemma2Config {
    /// Parse and validate a Hugging Face Gemma 2 `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let cfg: Value = serde_json::from_str(text).map_err(|e| Error::Config { field: "config.json", detail: format!("not valid JSON: {e}") })?;
        let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
        let archs: Vec<&str> = cfg.get("architectures").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if model_type != "gemma2" && !archs.contains(&"Gemma2ForCausalLM") {
            return Err(Error::Config {
                field: "model_type",
                detail: format!("'{model_type}' (architectures {archs:?}) is not supported; this engine runs Gemma 2 (model_type \"gemma2\")"),
            });
        }
        let act = cfg.get("hidden_activation").or_else(|| cfg.get("hidden_act")).and_then(Value::as_str).unwrap_or("gelu_pytorch_tanh");
        if act != "gelu_pytorch_tanh" && act != "gelu_tanh" {
            return Err(Error::Config { field: "hidden_activation", detail: format!("'{act}' is not supported (Gemma 2 uses gelu_pytorch_tanh)") });
        }
        if cfg.get("tie_word_embeddings").and_then(Value::as_bool) == Some(false) {
            return Err(Error::Config { field: "tie_word_embeddings", detail: "false is not supported: Gemma 2 ties the LM head to the embedding".into() });
        }
        let n_layers = uint(&cfg, "num_hidden_layers")?;
        let sliding_layers = match cfg.get("layer_types").and_then(Value::as_array) {
            Some(types) => {
                if types.len() != n_layers as usize {
                    return Err(Error::Config { field: "layer_types", detail: format!("{} entries for {n_layers} layers", types.len()) });
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("sliding_attention") => Ok(true),
                        Some("full_attention") => Ok(false),
                        other => Err(Error::Config { field: "layer_types", detail: format!("unknown layer type {other:?}") }),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            // HF v4 and gemma_pytorch: even layers are local, odd are global (spec §1.2).
            None => (0..n_layers).map(|i| i % 2 == 0).collect(),
        };
        let eos_token_ids = match cfg.get("eos_token_id") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|v| v as u32).collect(),
            Some(v) => v.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            None => vec![1],
        };
        let rope_theta = match cfg.get("rope_parameters").and_then(|r| r.get("rope_theta")) {
            Some(v) => v.as_f64().map(|v| v as f32).ok_or_else(|| Error::Config { field: "rope_parameters.rope_theta", detail: "must be a number".into() })?,
            None => float_or(&cfg, "rope_theta", 10000.0)?,
        };
        let config = Self {
            vocab_size: uint(&cfg, "vocab_size")?,
            hidden_size: uint(&cfg, "hidden_size")?,
            intermediate_size: uint(&cfg, "intermediate_size")?,
            num_hidden_layers: n_layers,
            num_attention_heads: uint(&cfg, "num_attention_heads")?,
            num_key_value_heads: uint(&cfg, "num_key_value_heads")?,
            head_dim: uint(&cfg, "head_dim")?,
            query_pre_attn_scalar: float(&cfg, "query_pre_attn_scalar")?,
            sliding_window: uint(&cfg, "sliding_window")?,
            attn_logit_softcapping: float_or(&cfg, "attn_logit_softcapping", 0.0)?,
            final_logit_softcapping: float_or(&cfg, "final_logit_softcapping", 0.0)?,
            rms_norm_eps: float_or(&cfg, "rms_norm_eps", 1e-6)?,
            rope_theta,
            max_position_embeddings: uint(&cfg, "max_position_embeddings")?,
            bos_token_id: cfg.get("bos_token_id").and_then(Value::as_u64).unwrap_or(2) as u32,
            eos_token_ids,
            sliding_layers,
        };
        config.validate()?;
        Ok(config)
    }

    /// Internal consistency; also run on configs read back from our own manifests.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, detail: String| Err(Error::Config { field, detail });
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad("num_key_value_heads", format!("{} query heads do not divide into {} kv heads", self.num_attention_heads, self.num_key_value_heads));
        }
        if self.head_dim % 8 != 0 || self.head_dim > crate::ops::attention::MAX_HEAD_DIM {
            return bad("head_dim", format!("{} is not supported (multiple of 8, at most {})", self.head_dim, crate::ops::attention::MAX_HEAD_DIM));
        }
        if self.sliding_layers.len() != self.num_hidden_layers as usize {
            return bad("layer_types", format!("{} entries for {} layers", self.sliding_layers.len(), self.num_hidden_layers));
        }
        if !(self.query_pre_attn_scalar > 0.0) {
            return bad("query_pre_attn_scalar", format!("must be positive, got {}", self.query_pre_attn_scalar));
        }
        if self.attn_logit_softcapping < 0.0 || self.final_logit_softcapping < 0.0 {
            return bad("attn_logit_softcapping", "soft-caps must be >= 0".into());
        }
        if self.bos_token_id >= self.vocab_size || self.eos_token_ids.iter().any(|t| *t >= self.vocab_size) {
            return bad("bos_token_id", format!("special token ids must be < vocab_size {}", self.vocab_size));
        }
        Ok(())
    }

    /// The embedding normaliser sqrt(H), in f32 (the reference runs in f32).
    pub fn embed_scale(&self) -> f32 {
        (self.hidden_size as f32).sqrt()
    }

    /// `query_pre_attn_scalar^-0.5` (not `head_dim^-0.5`: they differ for 27B).
    pub fn attn_scale(&self) -> f32 {
        self.query_pre_attn_scalar.powf(-0.5)
    }

    /// Attention window of layer `i`: the sliding window for local layers, 0 (global) otherwise.
    pub fn window(&self, layer: usize) -> u32 {
        if self.sliding_layers[layer] { self.sliding_window } else { 0 }
    }

    pub fn q_width(&self) -> u32 {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_width(&self) -> u32 {
        self.num_key_value_heads * self.head_dim
    }
}
