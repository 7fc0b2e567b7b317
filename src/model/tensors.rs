//! Every weight's name and shape, built in one place (`docs/model.md` §2). Names are the
//! Hugging Face checkpoint's (`model.layers.3.mlp.down_proj.weight`), which our manifests keep;
//! the GGUF importer maps llama.cpp's names onto the same table (`from_gguf` below).

use crate::model::config::ModelConfig;

/// The token embedding `[vocab, hidden]`; also the LM head (Gemma ties them).
pub const EMBED: &str = "model.embed_tokens.weight";
/// The final RMSNorm weight `[hidden]`.
pub const FINAL_NORM: &str = "model.norm.weight";

/// One decoder layer's tensors, in the order the forward pass uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerTensor {
    InputNorm,
    QProj,
    KProj,
    VProj,
    /// Gemma 3 only (`qk_norm`): RMSNorm over each query head.
    QNorm,
    /// Gemma 3 only (`qk_norm`): RMSNorm over each key head.
    KNorm,
    OProj,
    PostAttentionNorm,
    PreFeedforwardNorm,
    GateProj,
    UpProj,
    DownProj,
    PostFeedforwardNorm,
}

impl LayerTensor {
    pub const ALL: [LayerTensor; 13] = [
        Self::InputNorm,
        Self::QProj,
        Self::KProj,
        Self::VProj,
        Self::QNorm,
        Self::KNorm,
        Self::OProj,
        Self::PostAttentionNorm,
        Self::PreFeedforwardNorm,
        Self::GateProj,
        Self::UpProj,
        Self::DownProj,
        Self::PostFeedforwardNorm,
    ];

    /// The name inside `model.layers.{l}.` (the checkpoint's module path).
    pub fn suffix(self) -> &'static str {
        match self {
            Self::InputNorm => "input_layernorm.weight",
            Self::QProj => "self_attn.q_proj.weight",
            Self::KProj => "self_attn.k_proj.weight",
            Self::VProj => "self_attn.v_proj.weight",
            Self::QNorm => "self_attn.q_norm.weight",
            Self::KNorm => "self_attn.k_norm.weight",
            Self::OProj => "self_attn.o_proj.weight",
            Self::PostAttentionNorm => "post_attention_layernorm.weight",
            Self::PreFeedforwardNorm => "pre_feedforward_layernorm.weight",
            Self::GateProj => "mlp.gate_proj.weight",
            Self::UpProj => "mlp.up_proj.weight",
            Self::DownProj => "mlp.down_proj.weight",
            Self::PostFeedforwardNorm => "post_feedforward_layernorm.weight",
        }
    }

    /// llama.cpp's name inside `blk.{l}.` (`gguf-py/gguf/constants.py`).
    pub fn gguf_suffix(self) -> &'static str {
        match self {
            Self::InputNorm => "attn_norm.weight",
            Self::QProj => "attn_q.weight",
            Self::KProj => "attn_k.weight",
            Self::VProj => "attn_v.weight",
            Self::QNorm => "attn_q_norm.weight",
            Self::KNorm => "attn_k_norm.weight",
            Self::OProj => "attn_output.weight",
            Self::PostAttentionNorm => "post_attention_norm.weight",
            Self::PreFeedforwardNorm => "ffn_norm.weight",
            Self::GateProj => "ffn_gate.weight",
            Self::UpProj => "ffn_up.weight",
            Self::DownProj => "ffn_down.weight",
            Self::PostFeedforwardNorm => "post_ffw_norm.weight",
        }
    }

    /// The full name in layer `layer`.
    pub fn name(self, layer: u32) -> String {
        format!("model.layers.{layer}.{}", self.suffix())
    }

    /// A 1-D RMSNorm weight (stored as f32 whatever the matrices' type).
    pub fn is_norm(self) -> bool {
        matches!(self, Self::InputNorm | Self::QNorm | Self::KNorm | Self::PostAttentionNorm | Self::PreFeedforwardNorm | Self::PostFeedforwardNorm)
    }

    /// `[rows, cols]` for this config (a 1-D tensor is `[1, n]`; matrices are PyTorch
    /// `nn.Linear` weights, `[out, in]`).
    pub fn shape(self, c: &ModelConfig) -> [u32; 2] {
        let (h, i, q, kv) = (c.hidden_size, c.intermediate_size, c.q_width(), c.kv_width());
        match self {
            Self::InputNorm | Self::PostAttentionNorm | Self::PreFeedforwardNorm | Self::PostFeedforwardNorm => [1, h],
            Self::QNorm | Self::KNorm => [1, c.head_dim],
            Self::QProj => [q, h],
            Self::KProj | Self::VProj => [kv, h],
            Self::OProj => [h, q],
            Self::GateProj | Self::UpProj => [i, h],
            Self::DownProj => [h, i],
        }
    }

    /// Whether a model with this config has the tensor (the q/k norms are Gemma 3's).
    pub fn present(self, c: &ModelConfig) -> bool {
        !matches!(self, Self::QNorm | Self::KNorm) || c.qk_norm
    }

    /// The tensors every layer of this config has, in forward-pass order.
    pub fn of(c: &ModelConfig) -> impl Iterator<Item = LayerTensor> + '_ {
        Self::ALL.into_iter().filter(move |t| t.present(c))
    }
}

/// Every tensor a model with this config must have, with its `[rows, cols]` shape: the
/// embedding, each layer's tensors, the final norm.
pub fn table(c: &ModelConfig) -> Vec<(String, [u32; 2])> {
    let mut out = vec![(EMBED.to_string(), [c.vocab_size, c.hidden_size])];
    for l in 0..c.num_hidden_layers {
        out.extend(LayerTensor::of(c).map(|t| (t.name(l), t.shape(c))));
    }
    out.push((FINAL_NORM.to_string(), [1, c.hidden_size]));
    out
}

/// The tensors a load joins with `name` for one fused kernel (a layer's q/k/v, or its
/// gate/up), `name` among them; `None` for a tensor that is read alone.
pub fn joined_with(name: &str) -> Option<Vec<String>> {
    let (prefix, suffix) = name.strip_prefix("model.layers.")?.split_once('.')?;
    let group: &[LayerTensor] = match LayerTensor::ALL.into_iter().find(|t| t.suffix() == suffix)? {
        LayerTensor::QProj | LayerTensor::KProj | LayerTensor::VProj => &[LayerTensor::QProj, LayerTensor::KProj, LayerTensor::VProj],
        LayerTensor::GateProj | LayerTensor::UpProj => &[LayerTensor::GateProj, LayerTensor::UpProj],
        _ => return None,
    };
    Some(group.iter().map(|t| format!("model.layers.{prefix}.{}", t.suffix())).collect())
}

/// Norm weights stay f32; matrices take the requested storage type.
pub fn is_norm(name: &str) -> bool {
    name.ends_with("norm.weight")
}

/// The Hugging Face name of a GGUF tensor of a Gemma 2 / Gemma 3 file, or `None` for a name
/// without one. `output.weight` (an untied LM head) maps to `lm_head.weight`.
pub fn from_gguf(gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some(EMBED.into()),
        "output_norm.weight" => return Some(FINAL_NORM.into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let (layer, suffix) = gguf_name.strip_prefix("blk.")?.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = LayerTensor::ALL.into_iter().find(|t| t.gguf_suffix() == suffix)?;
    Some(format!("model.layers.{layer}.{}", t.suffix()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_hugging_face_names() {
        assert_eq!(from_gguf("blk.12.ffn_norm.weight").as_deref(), Some("model.layers.12.pre_feedforward_layernorm.weight"));
        assert_eq!(from_gguf("blk.0.attn_k_norm.weight").as_deref(), Some("model.layers.0.self_attn.k_norm.weight"));
        assert_eq!(from_gguf("blk.3.attn_output.weight").as_deref(), Some("model.layers.3.self_attn.o_proj.weight"));
        assert_eq!(from_gguf("token_embd.weight").as_deref(), Some(EMBED));
        assert_eq!(from_gguf("blk.x.attn_q.weight"), None);
        assert_eq!(from_gguf("blk.1.rope_freqs.weight"), None);
    }
}
