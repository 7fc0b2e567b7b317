//! Text <-> token ids with the model's `tokenizer.json` (the `tokenizers` crate, which also
//! compiles to wasm32), Gemma's chat template (`docs/model.md` §4), and streaming detokenization that
//! only emits whole UTF-8 characters.

use crate::error::{Error, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: u32,
    end_of_turn: Option<u32>,
    start_of_turn: Option<u32>,
    /// The special tokens' texts (`<end_of_turn>`, `<bos>`, …) of more than one character:
    /// text from a user is cut inside each so none is read as its control token.
    specials: Vec<String>,
    /// The most bytes of input text one token can stand for: its vocabulary string's length,
    /// where the normalizer only widens text (Gemma's turns each space into the 3-byte `▁`).
    /// `None` where the normalizer might shorten text.
    max_token_bytes: Option<usize>,
}

/// One chat message. `role` is `user`, `assistant` (rendered `model`) or `system` (folded into
/// the first user turn: Gemma has no system role).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Tokenizer {
    pub fn from_json(json: &[u8], bos: u32) -> Result<Self> {
        // Syntax first: `tokenizers` 0.22 panics (an `expect` in its decoder's deserializer)
        // on a file that is not valid JSON there, and a panic kills a WASM module. Found by
        // tests/fuzz.rs.
        let value = serde_json::from_slice::<serde_json::Value>(json).map_err(|e| Error::Format(format!("tokenizer.json is not valid JSON: {e}")))?;
        let inner = tokenizers::Tokenizer::from_bytes(json).map_err(|e| Error::Format(format!("tokenizer.json could not be loaded: {e}")))?;
        let (end_of_turn, start_of_turn) = (inner.token_to_id("<end_of_turn>"), inner.token_to_id("<start_of_turn>"));
        let mut specials: Vec<String> =
            inner.get_added_tokens_decoder().values().filter(|t| t.special && t.content.chars().count() > 1).map(|t| t.content.clone()).collect();
        specials.sort_unstable();
        specials.dedup();
        let max_token_bytes = widening_normalizer(&value["normalizer"]).then(|| inner.get_vocab(true).keys().map(String::len).max().unwrap_or(1).max(1));
        Ok(Self { inner, bos, end_of_turn, start_of_turn, specials, max_token_bytes })
    }

    /// The id of `<end_of_turn>` (107 in Gemma 2, 106 in Gemma 3), where the vocabulary has it:
    /// a chat reply ends there.
    pub fn end_of_turn(&self) -> Option<u32> {
        self.end_of_turn
    }

    /// The id of `<start_of_turn>`, where the vocabulary has it: a model that opens a new turn
    /// has finished its own.
    pub fn start_of_turn(&self) -> Option<u32> {
        self.start_of_turn
    }

    /// A tokenizer that can produce ids the model has no row for is refused at load (they
    /// would surface only at generate time, as an out-of-range embedding).
    pub fn check_fits(&self, model_vocab: u32) -> Result<()> {
        let n = self.vocab_size();
        if n > model_vocab {
            return Err(Error::Format(format!(
                "tokenizer.json has {n} tokens but the model's vocabulary has {model_vocab} rows; it belongs to another model (use the tokenizer converted with this one)"
            )));
        }
        Ok(())
    }

    /// A lower bound on the tokens `text` encodes to (BOS not counted), from its length alone:
    /// a prompt that cannot fit the context is refused before it is tokenized (0 where the
    /// tokenizer allows no bound).
    pub fn min_tokens(&self, text: &str) -> u64 {
        self.max_token_bytes.map_or(0, |m| text.len().div_ceil(m) as u64)
    }

    /// The `tokenizers` tokenizer underneath (the constrained decoder reads its vocabulary).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Entries in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> u32 {
        self.inner.get_vocab_size(true) as u32
    }

    /// Encode without the BOS (for a continuation of text already in the context).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::invalid("tokenize", e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// BOS, then the tokens of `text` read as text: a special token's string in it (say
    /// `<end_of_turn>` typed by a user) becomes ordinary text tokens, never the control token.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(std::iter::once(self.bos).chain(self.encode_text(text)?).collect())
    }

    /// BOS, then the tokens of `text` with special-token strings read as those tokens (the
    /// caller's explicit choice: `generate`'s `specialTokens`).
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        Ok(std::iter::once(self.bos).chain(self.encode_plain(text)?).collect())
    }

    /// The tokens of `text` as text: it is encoded in pieces cut just inside every special
    /// token's string, so the tokenizer cannot match one (text without such strings encodes
    /// exactly as `encode_plain` does).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut start = 0;
        for (i, c) in text.char_indices() {
            if i < start || !self.specials.iter().any(|sp| sp.starts_with(c) && text[i..].starts_with(sp.as_str())) {
                continue;
            }
            let cut = i + c.len_utf8();
            ids.extend(self.encode_plain(&text[start..cut])?);
            start = cut;
        }
        ids.extend(self.encode_plain(&text[start..])?);
        Ok(ids)
    }

    /// One token's text as it reads in generated text (`▁` as a space), and its bytes: a
    /// byte-fallback token (`<0x0A>`) is its one byte, which alone may not be UTF-8 (its text
    /// is then U+FFFD). An unknown id is empty.
    pub fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        let Some(piece) = self.inner.id_to_token(id) else { return (String::new(), Vec::new()) };
        let byte = piece.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')).filter(|h| h.len() == 2).and_then(|h| u8::from_str_radix(h, 16).ok());
        match byte {
            Some(b) => (String::from_utf8_lossy(&[b]).into_owned(), vec![b]),
            None => {
                let text = piece.replace('\u{2581}', " ");
                let bytes = text.as_bytes().to_vec();
                (text, bytes)
            }
        }
    }

    /// Decode ids to text, dropping special tokens (BOS, turn markers).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::invalid("detokenize", e.to_string()))
    }

    /// The Gemma chat template with the generation prompt:
    /// `<bos><start_of_turn>user\n{..}<end_of_turn>\n<start_of_turn>model\n{..}<end_of_turn>\n…<start_of_turn>model\n`
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let (Some(start), Some(end)) = (self.start_of_turn, self.end_of_turn) else {
            return self.encode(&render_chat(messages)?);
        };
        // The template's own markers are the only control tokens; everything between them
        // (a role, a message) is text, whatever it contains.
        let mut ids = vec![self.bos];
        for seg in chat_segments(messages)? {
            match seg {
                Segment::StartOfTurn => ids.push(start),
                Segment::EndOfTurn => ids.push(end),
                Segment::Text(t) => ids.extend(self.encode_text(&t)?),
            }
        }
        Ok(ids)
    }
}

/// Whether a `tokenizer.json` normalizer never makes text shorter: none, or `Replace`s of a
/// string by one at least as long (Gemma's: a space by `▁`), alone or in a sequence.
fn widening_normalizer(n: &serde_json::Value) -> bool {
    match n["type"].as_str() {
        _ if n.is_null() => true,
        Some("Replace") => match (n["pattern"]["String"].as_str(), n["content"].as_str()) {
            (Some(pattern), Some(content)) => content.len() >= pattern.len(),
            _ => false,
        },
        Some("Sequence") => n["normalizers"].as_array().is_some_and(|all| all.iter().all(widening_normalizer)),
        _ => false,
    }
}

/// A piece of a rendered chat: the template's markers, and text between them.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    StartOfTurn,
    EndOfTurn,
    Text(String),
}

/// Messages in Gemma's template, as segments (`chat_prompt` encodes each on its own).
pub fn chat_segments(messages: &[Message]) -> Result<Vec<Segment>> {
    let mut system: Option<&str> = None;
    let mut out = Vec::new();
    let mut expect_user = true;
    for (i, m) in messages.iter().enumerate() {
        match m.role.as_str() {
            "system" if i == 0 => system = Some(m.content.trim()),
            "system" => return Err(Error::invalid("chat", "a system message may only come first")),
            "user" | "assistant" => {
                let is_user = m.role == "user";
                if is_user != expect_user {
                    return Err(Error::invalid("chat", format!("message {i}: roles must alternate user/assistant, starting with user")));
                }
                expect_user = !is_user;
                let role = if is_user { "user" } else { "model" };
                let mut content = m.content.trim().to_string();
                if let (true, Some(sys)) = (is_user, system.take()) {
                    content = format!("{sys}\n\n{content}");
                }
                if !out.is_empty() {
                    out.push(Segment::Text("\n".into()));
                }
                out.extend([Segment::StartOfTurn, Segment::Text(format!("{role}\n{content}")), Segment::EndOfTurn]);
            }
            other => return Err(Error::invalid("chat", format!("unknown role '{other}' (use user, assistant or system)"))),
        }
    }
    if expect_user {
        return Err(Error::invalid("chat", "the last message must come from the user"));
    }
    out.extend([Segment::Text("\n".into()), Segment::StartOfTurn, Segment::Text("model\n".into())]);
    Ok(out)
}

/// Render messages with Gemma's template as text (without the BOS, which `encode` adds).
pub fn render_chat(messages: &[Message]) -> Result<String> {
    Ok(chat_segments(messages)?
        .into_iter()
        .map(|s| match s {
            Segment::StartOfTurn => "<start_of_turn>".to_string(),
            Segment::EndOfTurn => "<end_of_turn>".to_string(),
            Segment::Text(t) => t,
        })
        .collect())
}

/// Turns a growing list of generated ids into text pieces, holding back a piece while it ends
/// in an incomplete UTF-8 sequence (byte-fallback tokens can split a character).
#[derive(Default)]
pub struct TextStream {
    ids: Vec<u32>,
    /// Decoding restarts here: every id before it has been emitted as text.
    prefix: usize,
    /// Ids up to here (from `prefix`) are emitted; later ones are held back.
    read: usize,
}

impl TextStream {
    /// The text the new id completes. Only the ids since the last emitted piece are decoded
    /// (twice), so a step costs the same at any length of the generation.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let text = tok.decode(&self.ids[self.prefix..])?;
        if text.ends_with('\u{FFFD}') || !text.starts_with(&before) || text.len() == before.len() {
            return Ok(String::new());
        }
        let piece = text[before.len()..].to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(piece)
    }
}
