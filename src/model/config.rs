//! The model's configuration, read from a Hugging Face `config.json` (field names as there)
//! and validated once. Per-layer behaviour (sliding or global attention, RoPE base and
//! scaling) is data here, not branches in the forward pass. Described in `docs/model.md` §1.

use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
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
    /// Generation stops on any of these (`Session::end_tokens` adds the tokenizer's
    /// `<end_of_turn>` and `<start_of_turn>`: 107/106 in Gemma 2, 106/105 in Gemma 3).
    pub eos_token_ids: Vec<u32>,
    /// Per layer: `true` = sliding-window (local) attention, `false` = global.
    pub sliding_layers: Vec<bool>,
    /// "gemma2" or "gemma3_text" (for messages; behaviour comes from the fields below).
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Gemma 3: RMSNorm `(1 + w)` over each head of q and of k, after projection.
    #[serde(default)]
    pub qk_norm: bool,
    /// RoPE base of the sliding-window layers when it differs from `rope_theta` (Gemma 3:
    /// 10 000 locally, 1 000 000 globally).
    #[serde(default)]
    pub rope_local_theta: Option<f32>,
    /// Linear RoPE scaling of the global layers (positions / factor); 1 = none.
    #[serde(default = "one")]
    pub rope_global_factor: f32,
}

fn default_model_type() -> String {
    "gemma2".into()
}

fn one() -> f32 {
    1.0
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

impl ModelConfig {
    /// Parse and validate a Hugging Face Gemma 2 or Gemma 3 (text) `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let cfg: Value = serde_json::from_str(text).map_err(|e| Error::Config { field: "config.json", detail: format!("not valid JSON: {e}") })?;
        let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
        // A multimodal Gemma 3 checkpoint: its language model's config.
        if model_type == "gemma3" {
            if let Some(text_config) = cfg.get("text_config") {
                let Value::Object(mut inner) = text_config.clone() else {
                    return Err(Error::Config { field: "text_config", detail: format!("must be an object (the language model's config), got {text_config}") });
                };
                inner.insert("model_type".into(), Value::from("gemma3_text"));
                return Self::from_hf_json(&Value::Object(inner).to_string());
            }
        }
        let archs: Vec<&str> = cfg.get("architectures").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let gemma3 = model_type == "gemma3_text" || model_type == "gemma3" || archs.contains(&"Gemma3ForCausalLM");
        if model_type != "gemma2" && !archs.contains(&"Gemma2ForCausalLM") && !gemma3 {
            return Err(Error::Config {
                field: "model_type",
                detail: format!("'{model_type}' (architectures {archs:?}) is not supported; this engine runs Gemma 2 (\"gemma2\") and Gemma 3 text models (\"gemma3_text\")"),
            });
        }
        let act = cfg.get("hidden_activation").or_else(|| cfg.get("hidden_act")).and_then(Value::as_str).unwrap_or("gelu_pytorch_tanh");
        if act != "gelu_pytorch_tanh" && act != "gelu_tanh" {
            return Err(Error::Config { field: "hidden_activation", detail: format!("'{act}' is not supported (Gemma uses gelu_pytorch_tanh)") });
        }
        if cfg.get("tie_word_embeddings").and_then(Value::as_bool) == Some(false) {
            return Err(Error::Config { field: "tie_word_embeddings", detail: "false is not supported: Gemma ties the LM head to the embedding".into() });
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
            // HF v4 and gemma_pytorch: even layers are local, odd are global (Gemma 2's
            // pattern; `docs/model.md` §1.3).
            None => (0..n_layers).map(|i| i % 2 == 0).collect(),
        };
        let eos_token_ids = match cfg.get("eos_token_id") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|v| v as u32).collect(),
            Some(v) => v.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            None => vec![1],
        };
        let (rope_theta, rope_local_theta, rope_global_factor) = rope(&cfg, gemma3)?;
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
            model_type: if gemma3 { "gemma3_text".into() } else { "gemma2".into() },
            qk_norm: gemma3,
            rope_local_theta,
            rope_global_factor,
        };
        config.validate()?;
        Ok(config)
    }

    /// Internal consistency; also run on configs read back from our own manifests.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, detail: String| Err(Error::Config { field, detail });
        // Sizes a manifest states directly (serde skips `from_hf_json`'s checks): positive, and
        // small enough that the engine's products of them (a tensor's elements, its bytes) fit
        // in 64 bits and in one WebGPU dispatch grid with room to spare.
        let sizes = [
            ("vocab_size", self.vocab_size, 1 << 22),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("num_hidden_layers", self.num_hidden_layers, 1024),
            ("num_attention_heads", self.num_attention_heads, 1024),
            ("max_position_embeddings", self.max_position_embeddings, 1 << 24),
            ("sliding_window", self.sliding_window, 1 << 24),
        ];
        for (field, value, max) in sizes {
            if value == 0 || value > max {
                return bad(field, format!("{value} is out of range (1 to {max}); the model file is damaged or not a Gemma model"));
            }
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite() && self.query_pre_attn_scalar.is_finite()) {
            return bad("rms_norm_eps", format!("must be a positive finite number, got {}", self.rms_norm_eps));
        }
        if !self.attn_logit_softcapping.is_finite()
            || !self.final_logit_softcapping.is_finite()
            || !self.rope_theta.is_finite()
            || !self.rope_global_factor.is_finite()
        {
            return bad("rope_parameters", "soft-caps and RoPE parameters must be finite numbers".into());
        }
        if self.num_key_value_heads == 0 || !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return bad("num_key_value_heads", format!("{} query heads do not divide into {} kv heads", self.num_attention_heads, self.num_key_value_heads));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(8) || self.head_dim > crate::ops::attention::MAX_HEAD_DIM {
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
        if !(self.rope_global_factor >= 1.0) || !(self.rope_theta > 0.0) || self.rope_local_theta.is_some_and(|t| !(t > 0.0)) {
            return bad(
                "rope_parameters",
                format!(
                    "bases must be positive and the scaling factor >= 1 (got {}, {:?}, {})",
                    self.rope_theta, self.rope_local_theta, self.rope_global_factor
                ),
            );
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

    /// RoPE `(base, linear factor)` of layer `i`.
    pub fn rope(&self, layer: usize) -> (f32, f32) {
        if self.sliding_layers[layer] {
            (self.rope_local_theta.unwrap_or(self.rope_theta), 1.0)
        } else {
            (self.rope_theta, self.rope_global_factor)
        }
    }

    /// Attention window of layer `i`: the sliding window for local layers, 0 (global) otherwise.
    pub fn window(&self, layer: usize) -> u32 {
        if self.sliding_layers[layer] {
            self.sliding_window
        } else {
            0
        }
    }

    pub fn q_width(&self) -> u32 {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_width(&self) -> u32 {
        self.num_key_value_heads * self.head_dim
    }
}

fn num(v: &Value, field: &'static str) -> Result<f32> {
    v.as_f64().filter(|x| x.is_finite()).map(|x| x as f32).ok_or_else(|| Error::Config { field, detail: format!("must be a number, got {v}") })
}

/// `(global base, local base, global linear factor)`. Transformers 5 writes `rope_parameters`,
/// either one set (`{"rope_theta": ..}`) or one per layer type (`{"sliding_attention": {..},
/// "full_attention": {..}}`); older configs have `rope_theta`, `rope_local_base_freq` and
/// `rope_scaling`.
fn rope(cfg: &Value, gemma3: bool) -> Result<(f32, Option<f32>, f32)> {
    let factor = |r: Option<&Value>| -> Result<f32> {
        let Some(r) = r.filter(|r| !r.is_null()) else { return Ok(1.0) };
        let kind = r.get("rope_type").or_else(|| r.get("type")).and_then(Value::as_str).unwrap_or("default");
        match kind {
            "default" => Ok(1.0),
            "linear" => num(r.get("factor").unwrap_or(&Value::Null), "rope_parameters.factor"),
            other => Err(Error::Config { field: "rope_parameters", detail: format!("RoPE type '{other}' is not supported (default and linear are)") }),
        }
    };
    let default_global = if gemma3 { 1_000_000.0 } else { 10_000.0 };
    if let Some(rp) = cfg.get("rope_parameters").filter(|r| r.is_object()) {
        if let Some(full) = rp.get("full_attention") {
            let global = num(full.get("rope_theta").unwrap_or(&Value::Null), "rope_parameters.full_attention.rope_theta")?;
            let local = match rp.get("sliding_attention").and_then(|s| s.get("rope_theta")) {
                Some(v) => Some(num(v, "rope_parameters.sliding_attention.rope_theta")?),
                None => None,
            };
            if let Some(s) = rp.get("sliding_attention") {
                if factor(Some(s))? != 1.0 {
                    return Err(Error::Config { field: "rope_parameters", detail: "scaled RoPE on sliding layers is not supported".into() });
                }
            }
            return Ok((global, local, factor(Some(full))?));
        }
        if let Some(t) = rp.get("rope_theta") {
            let local = if gemma3 { Some(10_000.0) } else { None };
            return Ok((num(t, "rope_parameters.rope_theta")?, local, factor(Some(rp))?));
        }
    }
    let global = float_or(cfg, "rope_theta", default_global)?;
    let local = match cfg.get("rope_local_base_freq") {
        Some(v) if !v.is_null() => Some(num(v, "rope_local_base_freq")?),
        _ if gemma3 => Some(10_000.0),
        _ => None,
    };
    Ok((global, local, factor(cfg.get("rope_scaling"))?))
}
