//! Metadata (`gemma2.block_count`, …) → a Hugging Face `config.json` for
//! `ModelConfig::from_hf_json`.

use serde_json::json;

use super::{Gguf, MetaValue};
use crate::error::Result;

impl Gguf {
    fn arch_key(&self, suffix: &str) -> Result<(String, Option<&MetaValue>)> {
        let key = format!("{}.{suffix}", self.architecture()?);
        let v = self.get(&key);
        Ok((key, v))
    }

    /// An integer, or an array of equal integers (llama.cpp allows per-layer arrays).
    fn uniform_u64(&self, key: &str, v: &MetaValue) -> Result<u64> {
        let bad = || self.err(format!("metadata key '{key}' is a {}, not a positive integer", v.type_name()));
        match v.as_array() {
            Some(items) => {
                let first = items.first().and_then(MetaValue::as_u64).ok_or_else(bad)?;
                if items.iter().any(|i| i.as_u64() != Some(first)) {
                    return Err(self.err(format!("metadata key '{key}' differs between layers, which this engine does not support")));
                }
                Ok(first)
            }
            None => v.as_u64().ok_or_else(bad),
        }
    }

    fn arch_u64(&self, suffix: &str) -> Result<Option<u64>> {
        match self.arch_key(suffix)? {
            (key, Some(v)) => Ok(Some(self.uniform_u64(&key, v)?)),
            (_, None) => Ok(None),
        }
    }

    fn arch_u64_req(&self, suffix: &str) -> Result<u64> {
        let key = self.arch_key(suffix)?.0;
        self.arch_u64(suffix)?.ok_or_else(|| self.err(format!("metadata key '{key}' is missing; the file does not describe a complete model")))
    }

    fn arch_f64(&self, suffix: &str, default: f64) -> Result<f64> {
        match self.arch_key(suffix)? {
            (key, Some(v)) => v.as_f64().ok_or_else(|| self.err(format!("metadata key '{key}' is a {}, not a number", v.type_name()))),
            (_, None) => Ok(default),
        }
    }

    pub(super) fn token_id(&self, name: &str) -> Result<Option<u64>> {
        let key = format!("tokenizer.ggml.{name}");
        match self.get(&key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| self.err(format!("metadata key '{key}' is a {}, not a token id", v.type_name()))),
        }
    }

    /// Per layer, whether it uses sliding-window attention: `{arch}.attention.sliding_window_pattern`
    /// where present (a period `n`: every n-th layer is global; or one bool per layer), else
    /// llama.cpp's built-in period for the architecture.
    fn sliding_layers(&self, n_layers: u64, default_period: u64) -> Result<Vec<bool>> {
        let (key, value) = self.arch_key("attention.sliding_window_pattern")?;
        let by_period = |p: u64| (0..n_layers).map(|i| p == 0 || i % p < p - 1).collect::<Vec<bool>>();
        match value {
            None => Ok(by_period(default_period)),
            Some(MetaValue::Array(items)) => {
                if items.len() as u64 != n_layers {
                    return Err(self.err(format!("metadata key '{key}' has {} entries for {n_layers} layers", items.len())));
                }
                items
                    .iter()
                    .map(|v| v.as_bool().or_else(|| v.as_u64().map(|x| x != 0)))
                    .collect::<Option<Vec<bool>>>()
                    .ok_or_else(|| self.err(format!("metadata key '{key}' must hold one bool per layer")))
            }
            Some(v) => Ok(by_period(v.as_u64().ok_or_else(|| self.err(format!("metadata key '{key}' is a {}, not a layer period", v.type_name())))?)),
        }
    }

    /// The vocabulary size: `{arch}.vocab_size`, else the number of tokens, else the embedding's
    /// row count.
    fn vocab_size(&self) -> Result<u64> {
        if let Some(v) = self.arch_u64("vocab_size")? {
            return Ok(v);
        }
        if let Some(tokens) = self.get("tokenizer.ggml.tokens").and_then(MetaValue::as_array) {
            return Ok(tokens.len() as u64);
        }
        self.tensor("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .ok_or_else(|| self.err("gives no vocabulary size (no vocab_size key, tokenizer.ggml.tokens or token_embd.weight)"))
    }

    /// A Hugging Face `config.json` for the model (`gemma2`, or `gemma3` as transformers 5's
    /// `gemma3_text`), for `ModelConfig::from_hf_json`.
    pub fn hf_config_json(&self) -> Result<String> {
        let arch = self.architecture()?.to_string();
        let (model_type, class, big_layers) = match arch.as_str() {
            "gemma2" => ("gemma2", "Gemma2ForCausalLM", 46),
            "gemma3" => ("gemma3_text", "Gemma3ForCausalLM", 62),
            other => {
                return Err(
                    self.err(format!("is a '{other}' model (general.architecture); this engine runs Gemma 2 and Gemma 3 text models ('gemma2', 'gemma3')"))
                )
            }
        };
        let hidden = self.arch_u64_req("embedding_length")?;
        let layers = self.arch_u64_req("block_count")?;
        if layers == 0 || layers > 1024 {
            return Err(self.err(format!("{arch}.block_count is {layers}; a Gemma model has 1 to 1024 layers, so the file is corrupt")));
        }
        let heads = self.arch_u64_req("attention.head_count")?;
        let kv_heads = self.arch_u64("attention.head_count_kv")?.unwrap_or(heads);
        if heads == 0 {
            return Err(self.err(format!("{arch}.attention.head_count is 0")));
        }
        let head_dim = self.arch_u64("attention.key_length")?.unwrap_or(hidden / heads);
        // llama.cpp: 1/sqrt(n_embd / n_head) for the 27B models, 1/sqrt(head_dim) otherwise.
        let query_pre_attn_scalar = if layers == big_layers { hidden / heads } else { head_dim };
        let eps = self.arch_f64("attention.layer_norm_rms_epsilon", 1e-6)?;
        let bos = self.token_id("bos_token_id")?.unwrap_or(2);
        let eos = self.token_id("eos_token_id")?.unwrap_or(1);
        let mut eos_ids = vec![eos];
        if let Some(eot) = self.token_id("eot_token_id")? {
            if eot != eos {
                eos_ids.push(eot);
            }
        }
        let pad = self.token_id("padding_token_id")?.unwrap_or(0);
        let type_names = |sliding: Vec<bool>| sliding.into_iter().map(|s| if s { "sliding_attention" } else { "full_attention" }).collect::<Vec<_>>();
        let mut cfg = json!({
            "architectures": [class],
            "model_type": model_type,
            "vocab_size": self.vocab_size()?,
            "hidden_size": hidden,
            "intermediate_size": self.arch_u64_req("feed_forward_length")?,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "query_pre_attn_scalar": query_pre_attn_scalar,
            "rms_norm_eps": eps,
            "hidden_activation": "gelu_pytorch_tanh",
            "tie_word_embeddings": self.tensor("output.weight").is_none(),
            "bos_token_id": bos,
            "eos_token_id": if eos_ids.len() == 1 { json!(eos) } else { json!(eos_ids) },
            "pad_token_id": pad,
        });
        let extra = if arch == "gemma2" {
            json!({
                "sliding_window": self.arch_u64("attention.sliding_window")?.unwrap_or(4096),
                "attn_logit_softcapping": self.arch_f64("attn_logit_softcapping", 50.0)?,
                "final_logit_softcapping": self.arch_f64("final_logit_softcapping", 30.0)?,
                "rope_parameters": { "rope_theta": self.arch_f64("rope.freq_base", 10000.0)?, "rope_type": "default" },
                "max_position_embeddings": self.arch_u64("context_length")?.unwrap_or(8192),
                "layer_types": type_names(self.sliding_layers(layers, 2)?),
            })
        } else {
            let mut full = json!({ "rope_type": "default", "rope_theta": self.arch_f64("rope.freq_base", 1_000_000.0)? });
            let (scaling_key, scaling) = self.arch_key("rope.scaling.type")?;
            match scaling.map(|v| v.as_str().ok_or_else(|| self.err(format!("metadata key '{scaling_key}' is not a string")))).transpose()? {
                None | Some("none") => {}
                Some("linear") => {
                    full["rope_type"] = json!("linear");
                    full["factor"] = json!(self.arch_f64("rope.scaling.factor", 1.0)?);
                }
                Some(other) => return Err(self.err(format!("uses RoPE scaling '{other}' ({scaling_key}); only linear scaling is supported"))),
            }
            json!({
                "sliding_window": self.arch_u64("attention.sliding_window")?.unwrap_or(4096),
                "attn_logit_softcapping": null,
                "final_logit_softcapping": null,
                "rope_parameters": {
                    "sliding_attention": { "rope_type": "default", "rope_theta": self.arch_f64("rope.freq_base_swa", 10000.0)? },
                    "full_attention": full,
                },
                "max_position_embeddings": self.arch_u64("context_length")?.unwrap_or(131072),
                "layer_types": type_names(self.sliding_layers(layers, 6)?),
            })
        };
        if let (Some(cfg), Some(extra)) = (cfg.as_object_mut(), extra.as_object()) {
            cfg.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        serde_json::to_string_pretty(&cfg).map_err(|e| self.err(format!("config: {e}")))
    }
}
