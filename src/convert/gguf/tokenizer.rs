//! The SentencePiece vocabulary (`tokenizer.ggml.*`) → a Hugging Face `tokenizer.json` that
//! matches what transformers builds from the same file.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use super::{Gguf, MetaValue};
use crate::error::Result;

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_UNKNOWN: i64 = 2;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// Python's `str.isspace`, which transformers' Gemma respelling uses: Unicode White_Space plus
/// the information separators U+001C..U+001F.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn js(s: &str) -> String {
    Value::from(s).to_string()
}

impl Gguf {
    /// A Hugging Face `tokenizer.json` for the file's SentencePiece vocabulary, built the way
    /// transformers builds one from a Gemma GGUF (`integrations/gguf/gguf_tokenizer_mapping.py`,
    /// `gemma_tokenizer`):
    /// - tokens made only of whitespace that contain a space are respelled as that many `▁`;
    /// - BPE with byte fallback over the vocabulary; the merges are every split of a token into
    ///   two tokens, ranked by the merged token's position in the file (earlier first; for
    ///   Gemma the scores follow the same order, but transformers goes by position), and within
    ///   one token by the longer left part first;
    /// - normalizer `" "` → `▁`, decoder `▁` → `" "` + byte fallback + fuse;
    /// - control tokens (and Gemma's turn and image markers, and the bos/eos/unk/pad/mask
    ///   tokens) are special added tokens; user-defined ones are plain added tokens, all
    ///   matched before normalization.
    pub fn tokenizer_json(&self) -> Result<String> {
        let (tokens, types) = self.sentencepiece_vocab()?;
        let token_name = |key: &str| -> Result<Option<&str>> { Ok(self.token_id(key)?.and_then(|id| tokens.get(id as usize).copied())) };
        let (bos, eos, unk, pad) = (token_name("bos_token_id")?, token_name("eos_token_id")?, token_name("unknown_token_id")?, token_name("padding_token_id")?);
        let add_bos = self.get("tokenizer.ggml.add_bos_token").and_then(MetaValue::as_bool).unwrap_or(true);
        let add_eos = self.get("tokenizer.ggml.add_eos_token").and_then(MetaValue::as_bool).unwrap_or(false);

        let spelled: Vec<String> =
            tokens.iter().map(|t| if t.contains(' ') && t.chars().all(py_isspace) { "\u{2581}".repeat(t.chars().count()) } else { t.to_string() }).collect();
        // Like a Python dict built in order: a repeated token keeps its last id.
        let mut vocab: HashMap<&str, u32> = HashMap::with_capacity(spelled.len());
        for (i, t) in spelled.iter().enumerate() {
            vocab.insert(t, i as u32);
        }

        let mut out = String::with_capacity(spelled.len() * 40);
        let head = json!({
            "added_tokens": added_tokens_json(&tokens, &types, &vocab, [bos, eos, unk, pad]),
            "normalizer": { "type": "Replace", "pattern": { "String": " " }, "content": "\u{2581}" },
            "pre_tokenizer": { "type": "Split", "pattern": { "String": " " }, "behavior": "MergedWithPrevious", "invert": false },
            "post_processor": post_processor_json(&vocab, (add_bos, bos), (add_eos, eos)),
            "decoder": { "type": "Sequence", "decoders": [
                { "type": "Replace", "pattern": { "String": "\u{2581}" }, "content": " " },
                { "type": "ByteFallback" },
                { "type": "Fuse" },
            ] },
        });
        out.push_str("{\"version\":\"1.0\",\"truncation\":null,\"padding\":null");
        for key in ["added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder"] {
            out.push_str(&format!(",{}:{}", js(key), head[key]));
        }
        push_bpe_model(&mut out, &spelled, &vocab, unk);
        Ok(out)
    }

    /// The SentencePiece tokens (`tokenizer.ggml.tokens`) and their llama.cpp types
    /// (`tokenizer.ggml.token_type`, all normal when absent), checked.
    fn sentencepiece_vocab(&self) -> Result<(Vec<&str>, Vec<i64>)> {
        match self.get("tokenizer.ggml.model").and_then(MetaValue::as_str) {
            Some("llama") => {}
            Some(other) => {
                return Err(self.err(format!("uses a '{other}' tokenizer (tokenizer.ggml.model); only SentencePiece ('llama'), which Gemma uses, is supported")))
            }
            None => return Err(self.err("has no tokenizer (tokenizer.ggml.model is missing)")),
        }
        let tokens: Vec<&str> = self
            .get("tokenizer.ggml.tokens")
            .and_then(MetaValue::as_array)
            .ok_or_else(|| self.err("has no tokenizer.ggml.tokens array"))?
            .iter()
            .enumerate()
            .map(|(i, t)| t.as_str().ok_or_else(|| self.err(format!("tokenizer.ggml.tokens[{i}] is not a string"))))
            .collect::<Result<_>>()?;
        if tokens.is_empty() || tokens.len() > u32::MAX as usize {
            return Err(self.err(format!("tokenizer.ggml.tokens has {} entries", tokens.len())));
        }
        let types: Vec<i64> = match self.get("tokenizer.ggml.token_type").and_then(MetaValue::as_array) {
            None => vec![1; tokens.len()],
            Some(a) if a.len() == tokens.len() => a
                .iter()
                .enumerate()
                .map(|(i, t)| t.as_i64().ok_or_else(|| self.err(format!("tokenizer.ggml.token_type[{i}] is not an integer"))))
                .collect::<Result<_>>()?,
            Some(a) => return Err(self.err(format!("tokenizer.ggml.token_type has {} entries for {} tokens", a.len(), tokens.len()))),
        };
        Ok((tokens, types))
    }
}

/// The `added_tokens` entries, by id: control and unknown tokens, Gemma's named tokens and the
/// file's bos/eos/unk/pad tokens (`special_names`) as special tokens, user-defined ones as plain.
fn added_tokens_json(tokens: &[&str], types: &[i64], vocab: &HashMap<&str, u32>, special_names: [Option<&str>; 4]) -> Vec<Value> {
    let named: Vec<&str> = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
        .into_iter()
        .chain(special_names.into_iter().flatten())
        .collect();
    let mut added: BTreeMap<u32, (&str, bool)> = BTreeMap::new();
    for (&token, &ty) in tokens.iter().zip(types) {
        let Some(&id) = vocab.get(token) else { continue }; // a respelled whitespace token
        let special = ty == TOKEN_CONTROL || ty == TOKEN_UNKNOWN || named.contains(&token);
        if special || ty == TOKEN_USER_DEFINED {
            let entry = added.entry(id).or_insert((token, special));
            entry.1 |= special;
        }
    }
    added
        .iter()
        .map(|(id, (content, special))| {
            json!({ "id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": special })
        })
        .collect()
}

/// The `TemplateProcessing` post-processor: bos before and eos after each sequence, each where
/// the file asks for it (`(add, token)`).
fn post_processor_json(vocab: &HashMap<&str, u32>, (add_bos, bos): (bool, Option<&str>), (add_eos, eos): (bool, Option<&str>)) -> Value {
    let template = |pair: bool| {
        let mut seq = Vec::new();
        for (type_id, name) in [(0, "A")].into_iter().chain(pair.then_some((1, "B"))) {
            if let (true, Some(b)) = (add_bos, bos) {
                seq.push(json!({ "SpecialToken": { "id": b, "type_id": type_id } }));
            }
            seq.push(json!({ "Sequence": { "id": name, "type_id": type_id } }));
            if let (true, Some(e)) = (add_eos, eos) {
                seq.push(json!({ "SpecialToken": { "id": e, "type_id": type_id } }));
            }
        }
        seq
    };
    let mut specials = serde_json::Map::new();
    for (on, tok) in [(add_bos, bos), (add_eos, eos)] {
        if let (true, Some(t)) = (on, tok) {
            if let Some(&id) = vocab.get(t) {
                specials.insert(t.to_string(), json!({ "id": t, "ids": [id], "tokens": [t] }));
            }
        }
    }
    json!({ "type": "TemplateProcessing", "single": template(false), "pair": template(true), "special_tokens": specials })
}

/// Appends the BPE `model` (vocabulary and merges) and closes the document. A token that a
/// later duplicate replaced in `vocab` is left out of both.
fn push_bpe_model(out: &mut String, spelled: &[String], vocab: &HashMap<&str, u32>, unk: Option<&str>) {
    let is_current = |i: usize| vocab.get(spelled[i].as_str()) == Some(&(i as u32));
    out.push_str(&format!(
        ",\"model\":{{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":{},\"continuing_subword_prefix\":null,\"end_of_word_suffix\":null,\
         \"fuse_unk\":true,\"byte_fallback\":true,\"ignore_merges\":false,\"vocab\":{{",
        js(unk.unwrap_or("<unk>"))
    ));
    let mut first = true;
    for (i, t) in spelled.iter().enumerate() {
        if is_current(i) {
            out.push_str(&format!("{}{}:{i}", if first { "" } else { "," }, js(t)));
            first = false;
        }
    }
    out.push_str("},\"merges\":[");
    let mut first = true;
    for (i, t) in spelled.iter().enumerate() {
        if !is_current(i) {
            continue;
        }
        // Every split into two vocabulary pieces, longest left part first.
        for (at, _) in t.char_indices().skip(1).collect::<Vec<_>>().into_iter().rev() {
            let (l, r) = t.split_at(at);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                out.push_str(&format!("{}[{},{}]", if first { "" } else { "," }, js(l), js(r)));
                first = false;
            }
        }
    }
    out.push_str("]}}");
}
