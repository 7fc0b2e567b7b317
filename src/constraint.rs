//! Grammar-constrained decoding, the CPU side: which tokens may come next so that the output
//! matches a JSON schema, a Lark grammar or a regular expression.
//!
//! [`llguidance`] does the work: a trie of the vocabulary's byte strings (built once per
//! tokenizer, [`ConstraintVocab`]) is walked against the grammar's lexer and Earley parser at
//! each step, giving the allowed-token set in well under a millisecond for most steps of a JSON
//! schema on Gemma's 256k vocabulary. [`Constraint`] is one generation's state: [`mask`]
//! (a bitset over the model's vocabulary, for the sampler), [`consume`] (the token that was
//! picked), [`forced_tokens`] (tokens the grammar forces, to append without sampling).
//!
//! Stop tokens (`<end_of_turn>`, `<eos>`) are ours, not the grammar's: they are allowed exactly
//! when the output so far is complete ([`Constraint::is_accepting`]), and no grammar can produce
//! them, nor `<bos>` / `<start_of_turn>` or any special token, as text.
//!
//! [`mask`]: Constraint::mask
//! [`consume`]: Constraint::consume
//! [`forced_tokens`]: Constraint::forced_tokens

use std::collections::HashSet;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;
use toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// What an error of this module is about, as the API names it.
const WHAT: &str = "response_format";

/// The token trie packs a node's subtree size in 22 bits and a token id in 24: a vocabulary
/// past these cannot be represented (llguidance would panic). Gemma's: 256k tokens, 1.7 MB.
const MAX_TRIE_BYTES: usize = (1 << 22) - 2;
const MAX_TRIE_TOKENS: u32 = 0xff_fffe;
/// The trie holds tokens of at most 1024 bytes (Gemma 2's longest is 48).
const MAX_TOKEN_BYTES: usize = 1000;

fn invalid(detail: impl Into<String>) -> Error {
    Error::invalid(WHAT, detail)
}

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum ConstraintSpec {
    /// Any JSON object (OpenAI's `{ type: 'json_object' }`).
    JsonObject,
    /// A JSON value valid against this JSON schema (`{ type: 'json_schema', json_schema: { schema } }`).
    JsonSchema(Value),
    /// A grammar in llguidance's Lark syntax (rules in lower case, terminals in upper case,
    /// `/regex/` terminals, `%json { schema }` inline JSON schemas).
    Lark(String),
    /// A regular expression (Rust `regex` syntax) the whole output must match.
    Regex(String),
}

impl ConstraintSpec {
    /// The constraint an OpenAI-style `response_format` asks for: `{ type: 'text' }` (or null)
    /// is none; `{ type: 'json_object' }`; `{ type: 'json_schema', json_schema: { schema, name?,
    /// strict?, description? } }`; and, beyond OpenAI's, `{ type: 'grammar', grammar: LARK }` and
    /// `{ type: 'regex', regex: PATTERN }`.
    pub fn from_response_format(v: &Value) -> Result<Option<Self>> {
        if v.is_null() {
            return Ok(None);
        }
        let Some(obj) = v.as_object() else {
            return Err(invalid("must be an object such as { type: 'json_object' }"));
        };
        let Some(ty) = obj.get("type").and_then(Value::as_str) else {
            return Err(invalid("needs a string 'type': text, json_object, json_schema, grammar or regex"));
        };
        let text_field = |field: &str| -> Result<String> {
            match obj.get(field) {
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
                Some(Value::String(_)) => Err(invalid(format!("'{field}' is empty"))),
                Some(_) => Err(invalid(format!("'{field}' must be a string"))),
                None => Err(invalid(format!("type '{ty}' needs a '{field}' string"))),
            }
        };
        match ty {
            "text" => Ok(None),
            "json_object" => Ok(Some(Self::JsonObject)),
            "json_schema" => {
                let Some(js) = obj.get("json_schema") else {
                    return Err(invalid("type 'json_schema' needs 'json_schema: { schema }'"));
                };
                let Some(js) = js.as_object() else {
                    return Err(invalid("'json_schema' must be an object { schema, name?, strict? }"));
                };
                for (field, ok) in [("name", Value::is_string as fn(&Value) -> bool), ("description", Value::is_string), ("strict", Value::is_boolean)] {
                    if js.get(field).is_some_and(|f| !f.is_null() && !ok(f)) {
                        return Err(invalid(format!("json_schema.{field} has the wrong type")));
                    }
                }
                match js.get("schema") {
                    Some(s) if s.is_object() || s.is_boolean() => Ok(Some(Self::JsonSchema(s.clone()))),
                    Some(_) => Err(invalid("json_schema.schema must be a JSON schema (an object)")),
                    None => Err(invalid("json_schema.schema is missing")),
                }
            }
            "grammar" => Ok(Some(Self::Lark(text_field("grammar")?))),
            "regex" => Ok(Some(Self::Regex(text_field("regex")?))),
            other => Err(invalid(format!("unknown type '{other}' (use text, json_object, json_schema, grammar or regex)"))),
        }
    }

    fn grammar(&self) -> TopLevelGrammar {
        match self {
            Self::JsonObject => TopLevelGrammar::from_json_schema(with_json_whitespace(serde_json::json!({ "type": "object" }))),
            Self::JsonSchema(schema) => TopLevelGrammar::from_json_schema(with_json_whitespace(schema.clone())),
            Self::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
            Self::Regex(rx) => TopLevelGrammar::from_regex(rx),
        }
    }
}

/// The whitespace allowed between two JSON tokens (llama.cpp's choice): one space, or one or
/// two line breaks and up to 20 spaces or tabs of indentation. llguidance's default allows any
/// run, and a small model (or a random one) can then emit whitespace until its token budget
/// runs out. A schema with its own `x-guidance` options (llguidance's `JsonCompileOptions`:
/// `whitespace_pattern`, `whitespace_flexible`, `item_separator`, …) keeps them.
pub const JSON_WHITESPACE: &str = r"(?: |\n{1,2}[ \t]{0,20})";

fn with_json_whitespace(mut schema: Value) -> Value {
    if schema == Value::Bool(true) {
        schema = serde_json::json!({});
    }
    if let Some(obj) = schema.as_object_mut() {
        if !obj.contains_key("x-guidance") {
            obj.insert("x-guidance".into(), serde_json::json!({ "whitespace_pattern": JSON_WHITESPACE }));
        }
    }
    schema
}

/// The vocabulary as llguidance reads it: each token's bytes (`▁` as a space, `<0x0A>` as its
/// byte, special tokens out of the grammar's reach), and a tokenizer for forced text.
struct VocabEnv {
    trie: TokTrie,
    hf: tokenizers::Tokenizer,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// The canonical tokenization (forced tokens must be what the tokenizer would give); the
    /// trie's greedy one where the tokenizer fails or gives a special token.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| match self.hf.encode(text, false) {
            Ok(enc) if enc.get_ids().iter().all(|&t| (t as usize) < self.trie.vocab_size() && !self.trie.is_special_token(t)) => enc.get_ids().to_vec(),
            _ => self.trie.greedy_tokenize(text.as_bytes()),
        })
    }
}

/// The token trie and grammar compiler of one tokenizer: build it once (about a second natively
/// for Gemma's 256k vocabulary, most of it llguidance's precomputed vocabulary slices) and
/// share it across generations.
pub struct ConstraintVocab {
    factory: ParserFactory,
    model_vocab_size: u32,
    tokenizer_vocab_size: u32,
    stop_tokens: Vec<u32>,
    /// The trie's EOS entry, which llguidance adds to a mask where the grammar accepts; the
    /// mask carries `stop_tokens` instead.
    trie_eos: u32,
}

impl ConstraintVocab {
    /// The vocabulary of `tok` for a model with `model_vocab_size` embedding rows (masks cover
    /// these; rows past the tokenizer's vocabulary are never allowed). The stop tokens are
    /// `<end_of_turn>` and `<eos>`, those the vocabulary has ([`Self::set_stop_tokens`]).
    pub fn new(tok: &Tokenizer, model_vocab_size: u32) -> Result<Self> {
        tok.check_fits(model_vocab_size)?;
        let hf = tok.inner();
        let n = tok.vocab_size();
        if n == 0 || n > MAX_TRIE_TOKENS {
            return Err(Error::Format(format!("constrained output: a vocabulary of {n} tokens is not supported")));
        }
        let eos = hf.token_to_id("<eos>");
        let stop_tokens: Vec<u32> = [tok.end_of_turn(), eos].into_iter().flatten().filter(|&t| t < n).collect();
        let Some(&trie_eos) = stop_tokens.first() else {
            return Err(Error::Format("constrained output needs a stop token, but the tokenizer has neither <end_of_turn> nor <eos>".into()));
        };
        // Never text: the special added tokens, and the control tokens the engine reads.
        let mut special: HashSet<u32> = hf.get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(&id, _)| id).collect();
        special.extend([tok.end_of_turn(), tok.start_of_turn(), eos, hf.token_to_id("<bos>")].into_iter().flatten());

        let mut words = Vec::with_capacity(n as usize);
        let mut total = 0usize;
        for id in 0..n {
            let bytes = if special.contains(&id) {
                match hf.id_to_token(id) {
                    Some(name) => [&[TokTrie::SPECIAL_TOKEN_MARKER], name.as_bytes()].concat(),
                    None => Vec::new(),
                }
            } else {
                tok.token_text(id).1
            };
            if bytes.len() > MAX_TOKEN_BYTES {
                return Err(Error::Format(format!("constrained output: token {id} is {} bytes long (at most {MAX_TOKEN_BYTES} are supported)", bytes.len())));
            }
            total += bytes.len();
            words.push(bytes);
        }
        if total > MAX_TRIE_BYTES {
            return Err(Error::Format(format!("constrained output: the vocabulary's tokens add up to {total} bytes (at most {MAX_TRIE_BYTES} are supported)")));
        }
        let mut info = TokRxInfo::new(n, trie_eos);
        info.tok_end_of_turn = tok.end_of_turn();
        info.tok_bos = hf.token_to_id("<bos>");
        let trie = TokTrie::from(&info, &words);
        let env: toktrie::TokEnv = Arc::new(VocabEnv { trie, hf: hf.clone() });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| Error::Format(format!("constrained output: {e}")))?;
        factory.quiet();
        // Errors name the cause, without a dump of the parser's state and the grammar.
        factory.limits_mut().verbose_errors = false;
        Ok(Self { factory, model_vocab_size, tokenizer_vocab_size: n, stop_tokens, trie_eos })
    }

    /// The tokens that end the output: allowed exactly where the grammar accepts.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    /// Replaces the stop tokens (ids in the tokenizer's vocabulary; at least one); constraints
    /// created afterwards use them. Give special tokens: a text token listed here is still
    /// also the grammar's text.
    pub fn set_stop_tokens(&mut self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::invalid("stop tokens", "at least one is needed"));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t >= self.tokenizer_vocab_size) {
            return Err(Error::invalid("stop tokens", format!("token {t} is past the tokenizer's vocabulary ({} tokens)", self.tokenizer_vocab_size)));
        }
        self.stop_tokens = tokens.to_vec();
        Ok(())
    }

    /// The size of the model's vocabulary, which masks cover.
    pub fn model_vocab_size(&self) -> u32 {
        self.model_vocab_size
    }

    /// The number of u32 words of a mask: `ceil(model_vocab_size / 32)`.
    pub fn mask_words(&self) -> usize {
        self.model_vocab_size.div_ceil(32) as usize
    }
}

/// One generation's constraint. Loop: [`mask`](Self::mask) (apply it to the logits), sample,
/// [`consume`](Self::consume) the token; until a stop token is consumed or
/// [`is_finished`](Self::is_finished).
pub struct Constraint {
    matcher: Matcher,
    words: Vec<u32>,
    /// `words` is the mask of the current state.
    mask_ready: bool,
    stop_tokens: Vec<u32>,
    trie_eos: u32,
    tokenizer_vocab_size: u32,
    accepting: bool,
    finished: bool,
}

impl Constraint {
    /// Compiles `spec` for `vocab`'s tokenizer and computes the first mask. A schema, grammar
    /// or pattern llguidance cannot use, or one that allows no output at all (`start: start`),
    /// is an `InvalidArgument` error carrying llguidance's message.
    pub fn new(vocab: &ConstraintVocab, spec: &ConstraintSpec) -> Result<Self> {
        let parser = vocab.factory.create_parser(spec.grammar()).map_err(|e| invalid(format!("{e:#}")))?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(invalid(e));
        }
        let accepting = matcher.is_accepting().map_err(|e| invalid(format!("{e:#}")))?;
        let mut c = Self {
            matcher,
            words: vec![0; vocab.mask_words()],
            mask_ready: false,
            stop_tokens: vocab.stop_tokens.clone(),
            trie_eos: vocab.trie_eos,
            tokenizer_vocab_size: vocab.tokenizer_vocab_size,
            accepting,
            finished: false,
        };
        if let Err(e) = c.mask() {
            let detail = match e {
                Error::InvalidArgument { detail, .. } => detail,
                other => other.to_string(),
            };
            return Err(invalid(format!("the grammar allows no output: {detail}")));
        }
        Ok(c)
    }

    /// The tokens allowed next: a bitset over the model's vocabulary, 32 tokens per word,
    /// token `t` at bit `t % 32` of word `t / 32`. Stop tokens are on exactly where the output
    /// is complete; once [`is_finished`](Self::is_finished), only they are. Computed once per
    /// step (the first call after a `consume`).
    pub fn mask(&mut self) -> Result<&[u32]> {
        if !self.mask_ready {
            self.words.fill(0);
            if !self.finished {
                let set = match self.matcher.compute_mask() {
                    Ok(set) => set,
                    Err(e) => return Err(self.failed(e)),
                };
                let src = set.as_slice();
                let n = self.tokenizer_vocab_size as usize;
                let full = (n / 32).min(src.len()).min(self.words.len());
                self.words[..full].copy_from_slice(&src[..full]);
                if !n.is_multiple_of(32) && full < src.len() && full < self.words.len() {
                    self.words[full] = src[full] & ((1u32 << (n % 32)) - 1);
                }
                set_bit(&mut self.words, self.trie_eos, false);
            }
            let on = self.accepting || self.finished;
            for &t in &self.stop_tokens {
                set_bit(&mut self.words, t, on);
            }
            // (Only a grammar that names a stop token as its own can get here.)
            if self.words.iter().all(|&w| w == 0) {
                return Err(invalid("the constraint allows no token here"));
            }
            self.mask_ready = true;
        }
        Ok(&self.words)
    }

    /// Advances past `token`; an error if the constraint does not allow it here (the state is
    /// then unchanged). A stop token where the output is complete finishes it.
    pub fn consume(&mut self, token: u32) -> Result<()> {
        if self.stop_tokens.contains(&token) {
            if !(self.accepting || self.finished) {
                return Err(invalid(format!("the stop token {token} is not allowed: the constrained output is not complete yet")));
            }
            self.finished = true;
            self.mask_ready = false;
            return Ok(());
        }
        if self.finished {
            return Err(invalid(format!("token {token} is not allowed: the constrained output is complete, only a stop token may follow")));
        }
        if token >= self.tokenizer_vocab_size || token == self.trie_eos {
            return Err(invalid(format!("token {token} is not allowed by the constraint here")));
        }
        match self.matcher.try_consume_tokens(&[token]) {
            Ok(1) => {}
            Ok(_) => return Err(invalid(format!("token {token} is not allowed by the constraint here"))),
            Err(e) => return Err(self.failed(e)),
        }
        self.mask_ready = false;
        self.accepting = match self.matcher.is_accepting() {
            Ok(a) => a,
            Err(e) => return Err(self.failed(e)),
        };
        if self.matcher.is_stopped() {
            if let Some(e) = self.matcher.get_error() {
                return Err(invalid(format!("the constraint failed: {e}")));
            }
            self.finished = true;
        }
        Ok(())
    }

    /// The tokens the grammar forces next (say `{"name":"` at the start of an object whose
    /// first property is required), possibly none: append them without sampling, calling
    /// [`consume`](Self::consume) for each in order.
    pub fn forced_tokens(&mut self) -> Vec<u32> {
        if self.finished {
            return Vec::new();
        }
        let mut ff = self.matcher.compute_ff_tokens();
        // Never a token the mask cannot hold, nor a stop token (a grammar can name one).
        if let Some(bad) = ff.iter().position(|&t| t >= self.tokenizer_vocab_size || t == self.trie_eos || self.stop_tokens.contains(&t)) {
            ff.truncate(bad);
        }
        ff
    }

    /// Whether the output so far is complete (a stop token may come now).
    pub fn is_accepting(&self) -> bool {
        self.accepting
    }

    /// Whether nothing more may follow: a stop token was consumed, or the grammar can go no
    /// further (only a stop token is allowed).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn failed(&self, e: impl std::fmt::Display) -> Error {
        let msg = format!("{e:#}").replace("<non-verbose/>", "").replace("NoExtensionBias", "no token can continue the output");
        invalid(format!("the constraint failed: {}", msg.trim()))
    }
}

fn set_bit(words: &mut [u32], t: u32, on: bool) {
    if let Some(w) = words.get_mut((t / 32) as usize) {
        if on {
            *w |= 1 << (t % 32);
        } else {
            *w &= !(1 << (t % 32));
        }
    }
}
