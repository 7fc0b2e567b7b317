//! Text generation on top of the engine, shared by the JS API and the CLI: prompt → tokens,
//! reuse of the KV cache for a shared prefix (a chat that extends the previous turn prefills
//! only its new tokens), sampling until an end token, a stop string, the token budget or the
//! context's end, and streaming text in whole UTF-8 characters without ever showing part of a
//! stop string.

use std::rc::Rc;

use crate::constraint::{Constraint, ConstraintSpec, ConstraintVocab};
use crate::error::{Error, Result};
use crate::model::engine::Engine;
use crate::ops::logits::{LogitRules, Logprobs};
use crate::ops::sample::Sampling;
use crate::tokenizer::{Message, TextStream, Tokenizer};

/// How one generation is sampled and when it stops.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: u32,
    pub sampling: Sampling,
    /// Generation ends before the first occurrence of any of these (which is not returned).
    pub stop: Vec<String>,
    /// `generate` reads special-token strings in its prompt (`<start_of_turn>`, …) as those
    /// tokens; by default a prompt is text, whatever it contains (`Tokenizer::encode`).
    pub special_tokens: bool,
    /// Penalties, logit bias and log-probabilities (`ops::logits`); the default asks nothing.
    pub rules: LogitRules,
    /// What the output must match (a JSON schema, a grammar, a pattern): `generate` and
    /// `chat` then draw only tokens it allows (`generate_constrained`).
    pub constraint: Option<ConstraintSpec>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        // Gemma's published generation settings.
        Self {
            max_tokens: 256,
            sampling: Sampling { temperature: 0.7, top_k: 64, top_p: 0.95, seed: 0 },
            stop: Vec::new(),
            special_tokens: false,
            rules: LogitRules::default(),
            constraint: None,
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Finish {
    /// An end-of-sequence or end-of-turn token.
    #[default]
    Eos,
    /// A stop string.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The context is full.
    Context,
    /// The caller aborted.
    Abort,
}

impl Finish {
    pub fn name(self) -> &'static str {
        match self {
            Finish::Eos => "eos",
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Context => "context",
            Finish::Abort => "abort",
        }
    }
}

/// What the last call did (times in seconds, from the caller's clock).
#[derive(Debug, Clone, Copy, Default)]
pub struct GenerateStats {
    pub prompt_tokens: u32,
    /// Prompt tokens whose K/V were already cached and were not prefilled again.
    pub reused_tokens: u32,
    pub prefill_tokens: u32,
    pub prefill_seconds: f64,
    pub decode_tokens: u32,
    pub decode_seconds: f64,
    pub finish: Finish,
    /// A constrained generation: the allowed-token masks computed (one per draw), and the
    /// median and longest time one took on the CPU, in milliseconds.
    pub mask_count: u32,
    pub mask_ms_median: f64,
    pub mask_ms_max: f64,
}

impl GenerateStats {
    pub fn prefill_tokens_per_second(&self) -> f64 {
        rate(self.prefill_tokens, self.prefill_seconds)
    }
    pub fn decode_tokens_per_second(&self) -> f64 {
        rate(self.decode_tokens, self.decode_seconds)
    }
}

fn rate(n: u32, s: f64) -> f64 {
    if n == 0 || s <= 0.0 {
        0.0
    } else {
        n as f64 / s
    }
}

/// Seconds on a monotonic clock (the browser's `performance.now()` or `Date.now()`, natively
/// `Instant`).
pub fn now_seconds() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        // performance.now() (microseconds, where the page or worker has it), else Date.now().
        use wasm_bindgen::JsCast;
        let perf = js_sys::Reflect::get(&js_sys::global(), &"performance".into()).ok().filter(|p| p.is_object());
        let now = perf.and_then(|p| {
            let f = js_sys::Reflect::get(&p, &"now".into()).ok()?.dyn_into::<js_sys::Function>().ok()?;
            f.call0(&p).ok()?.as_f64()
        });
        now.unwrap_or_else(js_sys::Date::now) / 1000.0
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        use std::time::Instant;
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_secs_f64()
    }
}

/// A loaded model with its tokenizer and what its KV cache holds: the one generation loop,
/// behind the JS API and the `gemma generate` CLI alike.
pub struct Session {
    pub engine: Engine,
    /// `None` for a model without `tokenizer.json` (then only token ids go in, and ids come out
    /// as text, one `"{id} "` per token).
    pub tokenizer: Option<Rc<Tokenizer>>,
    /// The tokens whose K/V are in the cache, in order (`engine.position()` of them).
    cached: Vec<u32>,
    pub stats: GenerateStats,
    /// The log-probabilities of each token of the generation in progress or last finished,
    /// where its rules asked for them (shared, so a streaming callback can read them).
    pub logprobs: Rc<std::cell::RefCell<Vec<Logprobs>>>,
    /// The vocabulary as constraints read it (a trie of every token), built by the first
    /// constrained generation.
    constraint_vocab: Option<ConstraintVocab>,
}

impl Session {
    pub fn new(engine: Engine, tokenizer: Option<Rc<Tokenizer>>) -> Self {
        Self { engine, tokenizer, cached: Vec::new(), stats: GenerateStats::default(), logprobs: Rc::default(), constraint_vocab: None }
    }

    /// Forget the conversation.
    pub fn reset(&mut self) {
        self.engine.reset();
        self.cached.clear();
    }

    /// Tokens in the KV cache.
    pub fn context_tokens(&self) -> u32 {
        self.engine.position()
    }

    /// Tokens that end a generation: the config's EOS ids, `<end_of_turn>`, and
    /// `<start_of_turn>` (a model opening a new turn has finished its own; left to run, it
    /// writes the next speaker's name into the reply).
    pub fn end_tokens(&self) -> Vec<u32> {
        let mut ids = self.engine.config.eos_token_ids.clone();
        if let Some(t) = &self.tokenizer {
            ids.extend(t.end_of_turn().into_iter().chain(t.start_of_turn()));
        }
        ids
    }

    fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_deref().ok_or_else(|| Error::Format("this model has no tokenizer.json; pass token ids instead of text".into()))
    }

    /// Logits for every position of `ids` from an empty context (for evaluation):
    /// `[ids.len() * vocab]`. The cache then holds `ids`.
    pub async fn logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.engine.ctx.check_lost()?;
        self.check_fits(ids.len())?;
        self.reset();
        match self.engine.logits(ids, false).await {
            Ok(out) => {
                self.cached = ids.to_vec();
                Ok(out)
            }
            Err(e) => {
                self.reset();
                Err(self.lost_or(e))
            }
        }
    }

    /// `e`, or `Error::DeviceLost` where the device was lost meanwhile (then whatever failed,
    /// a read-back or a submit, failed because of it).
    fn lost_or(&self, e: Error) -> Error {
        self.engine.ctx.check_lost().err().unwrap_or(e)
    }

    fn check_fits(&self, n: impl TryInto<u64>) -> Result<()> {
        let max = self.engine.max_context();
        let n = n.try_into().unwrap_or(u64::MAX);
        if n > max as u64 {
            return Err(Error::ContextOverflow { needed: n, max_context: max, cached: 0 });
        }
        Ok(())
    }

    /// Generate a continuation of `prompt` (text, BOS added; special-token strings in it are
    /// text unless `params.special_tokens`).
    pub async fn generate(&mut self, prompt: &str, params: &GenerateParams, on_text: &mut dyn FnMut(&str), aborted: &dyn Fn() -> bool) -> Result<String> {
        if prompt.is_empty() {
            return Err(Error::invalid("prompt", "is empty: give the text to continue"));
        }
        let tok = self.tokenizer()?;
        // A prompt too long for the context by its length alone is not tokenized (which, for
        // megabytes of text, takes seconds and memory only to be refused).
        self.check_fits(1u64.saturating_add(tok.min_tokens(prompt)))?;
        let ids = if params.special_tokens { tok.encode_raw(prompt)? } else { tok.encode(prompt)? };
        self.generate_with(&ids, params, on_text, aborted).await
    }

    /// Reply to a conversation rendered with the chat template.
    pub async fn chat(&mut self, messages: &[Message], params: &GenerateParams, on_text: &mut dyn FnMut(&str), aborted: &dyn Fn() -> bool) -> Result<String> {
        let tok = self.tokenizer()?;
        self.check_fits(messages.iter().fold(1u64, |n, m| n.saturating_add(tok.min_tokens(&m.role)).saturating_add(tok.min_tokens(&m.content))))?;
        let ids = tok.chat_prompt(messages)?;
        self.generate_with(&ids, params, on_text, aborted).await
    }

    /// `generate_ids`, or `generate_constrained` under `params.constraint`.
    pub async fn generate_with(&mut self, ids: &[u32], params: &GenerateParams, on_text: &mut dyn FnMut(&str), aborted: &dyn Fn() -> bool) -> Result<String> {
        match &params.constraint {
            Some(spec) => {
                let mut c = self.constraint(spec)?;
                self.generate_constrained(ids, params, &mut c, on_text, aborted).await
            }
            None => self.generate_ids(ids, params, on_text, aborted).await,
        }
    }

    /// A constraint for `spec` on this model's vocabulary (built once: the first takes the
    /// time of a trie over every token).
    pub fn constraint(&mut self, spec: &ConstraintSpec) -> Result<Constraint> {
        if self.constraint_vocab.is_none() {
            let mut vocab = ConstraintVocab::new(self.tokenizer()?, self.engine.config.vocab_size)?;
            vocab.set_stop_tokens(&self.end_tokens())?;
            self.constraint_vocab = Some(vocab);
        }
        match &self.constraint_vocab {
            Some(vocab) => Constraint::new(vocab, spec),
            None => Err(Error::invalid("response_format", "no vocabulary")),
        }
    }

    /// Generate after the prompt `ids`, streaming text through `on_text`. The longest prefix
    /// of `ids` already in the KV cache is not computed again. `aborted` is polled between
    /// tokens; an abort returns `Error::Aborted` after the text so far was streamed, and the
    /// session stays usable (the cache keeps what was computed).
    pub async fn generate_ids(&mut self, ids: &[u32], params: &GenerateParams, on_text: &mut dyn FnMut(&str), aborted: &dyn Fn() -> bool) -> Result<String> {
        self.run(ids, params, None, on_text, aborted).await
    }

    /// `generate_ids`, drawing only tokens `constraint` allows (a grammar): each step's forward
    /// pass runs while the CPU computes the mask for its draw, and the tokens the constraint
    /// forces are appended without a draw, all in the next forward pass. Ends when the model
    /// ends its turn (allowed only where the constraint is complete), when nothing may follow,
    /// or for the usual reasons (the budget: `Finish::Length` inside an unfinished structure).
    pub async fn generate_constrained(
        &mut self,
        ids: &[u32],
        params: &GenerateParams,
        constraint: &mut dyn TokenConstraint,
        on_text: &mut dyn FnMut(&str),
        aborted: &dyn Fn() -> bool,
    ) -> Result<String> {
        self.run(ids, params, Some(constraint), on_text, aborted).await
    }

    async fn run(
        &mut self,
        ids: &[u32],
        params: &GenerateParams,
        mut constraint: Option<&mut dyn TokenConstraint>,
        on_text: &mut dyn FnMut(&str),
        aborted: &dyn Fn() -> bool,
    ) -> Result<String> {
        self.engine.ctx.check_lost()?;
        if ids.is_empty() {
            return Err(Error::invalid("prompt", "the prompt has no tokens"));
        }
        self.check_fits(ids.len())?;
        params.sampling.validate()?;
        if params.stop.iter().any(String::is_empty) {
            return Err(Error::invalid("stop", "stop strings must not be empty"));
        }
        params.rules.validate(self.engine.config.vocab_size)?;
        self.logprobs.borrow_mut().clear();
        // Reuse the cached prefix; at least the last prompt token runs, to get its logits.
        let common = self.cached.iter().zip(ids).take_while(|(a, b)| a == b).count();
        let mut keep = common.min(ids.len() - 1);
        if !self.engine.can_truncate(keep as u32) {
            keep = 0;
        }
        self.engine.truncate(keep as u32);
        self.cached.truncate(keep);

        let mut stats =
            GenerateStats { prompt_tokens: ids.len() as u32, reused_tokens: keep as u32, prefill_tokens: (ids.len() - keep) as u32, ..Default::default() };
        let end_tokens = self.end_tokens();
        let mut text = TextOut::new(&params.stop);
        let t0 = now_seconds();
        let result = async {
            // Pipelined: while token n is read back and handled here, the step that decodes it
            // (reading it from GPU memory) is already submitted, whenever generation could go on
            // after it. If token n ends generation (end of turn, stop string), that step is
            // discarded unread. The tokens are the same as stepping one at a time.
            self.engine.set_logit_rules(&params.rules, ids).await?;
            let prompt = &ids[keep..];
            // The prompt's leading whole chunks first, abortable between chunks; then the rest
            // (1 to a chunk's tokens) and the first draw. The chunks are those one step cuts.
            let chunk = self.engine.prefill_chunk().max(1) as usize;
            let head = (prompt.len() - 1) / chunk * chunk;
            if head > 0 {
                let run = self.engine.prefill(&prompt[..head], aborted).await;
                // The chunks submitted are in the cache (an abort leaves them there).
                let done = (self.engine.position() as usize).saturating_sub(keep).min(head);
                self.cached.extend_from_slice(&prompt[..done]);
                match run {
                    Err(Error::Aborted(_)) => return Ok(Finish::Abort),
                    other => other?,
                }
            }
            let prompt = &prompt[head..];
            if let Some(c) = constraint.as_deref_mut() {
                return self.constrained_steps(prompt, params, c, &mut stats, &mut text, on_text, aborted, t0).await;
            }
            self.engine.submit_step(Some(prompt), &params.sampling).await?;
            self.cached.extend_from_slice(prompt);
            let mut t1 = None;
            let mut stream = TextStream::default();
            let finish = loop {
                // Token n + 1's step can only be wanted if neither the budget, the context nor
                // an abort ends generation at token n.
                let speculate = stats.decode_tokens + 1 < params.max_tokens && self.engine.position() < self.engine.max_context() && !aborted();
                if speculate {
                    self.engine.submit_step(None, &params.sampling).await?;
                }
                let (next, logprobs) = self.engine.read_step().await?;
                if t1.is_none() {
                    let now = now_seconds();
                    stats.prefill_seconds = now - t0;
                    t1 = Some(now);
                }
                let end = if end_tokens.contains(&next) {
                    Some(Finish::Eos)
                } else {
                    stats.decode_tokens += 1;
                    if let Some(lp) = logprobs {
                        self.logprobs.borrow_mut().push(lp);
                    }
                    let piece = match &self.tokenizer {
                        Some(t) => stream.push(t, next)?,
                        None => format!("{next} "),
                    };
                    if text.push(&piece, on_text) {
                        Some(Finish::Stop)
                    } else if stats.decode_tokens >= params.max_tokens {
                        Some(Finish::Length)
                    } else if aborted() {
                        Some(Finish::Abort)
                    } else if !speculate {
                        // Only the context can have ended it (the other reasons were checked).
                        Some(Finish::Context)
                    } else {
                        None
                    }
                };
                if let Some(finish) = end {
                    if speculate {
                        self.engine.discard_pending();
                    }
                    break finish;
                }
                self.cached.push(next);
            };
            stats.decode_seconds = t1.map_or(0.0, |t1| now_seconds() - t1);
            Ok::<_, Error>(finish)
        }
        .await;
        match result {
            Ok(finish) => {
                stats.finish = finish;
                self.stats = stats;
                if finish == Finish::Abort {
                    return Err(Error::Aborted("generation"));
                }
                text.flush(on_text);
                Ok(text.text)
            }
            Err(e) => {
                // A failed GPU step leaves the cache in an unknown state; so does a step left
                // pending by an error between submitting it and reading it.
                if self.engine.pending_steps() > 0 || !matches!(e, Error::ContextOverflow { .. } | Error::InvalidArgument { .. }) {
                    self.reset();
                }
                Err(self.lost_or(e))
            }
        }
    }
}

impl Session {
    /// The decode loop of `generate_constrained`, from the prompt's last piece (whose K/V are
    /// not yet in the cache) on. One forward pass and one draw per step, not pipelined: the
    /// mask of a draw depends on the token before it.
    #[allow(clippy::too_many_arguments)]
    async fn constrained_steps(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        c: &mut dyn TokenConstraint,
        stats: &mut GenerateStats,
        text: &mut TextOut<'_>,
        on_text: &mut dyn FnMut(&str),
        aborted: &dyn Fn() -> bool,
        t0: f64,
    ) -> Result<Finish> {
        let end_tokens = self.end_tokens();
        let mut stream = TextStream::default();
        let mut forward = prompt.to_vec();
        let mut t1 = None;
        let mut mask_ms = Vec::new();
        // A generated token (drawn or forced): its text, and whether generation ends at it.
        let mut emit = |s: &mut Self, t: u32, stats: &mut GenerateStats| -> Result<Option<Finish>> {
            stats.decode_tokens += 1;
            let piece = match &s.tokenizer {
                Some(tok) => stream.push(tok, t)?,
                None => format!("{t} "),
            };
            Ok(if text.push(&piece, on_text) {
                Some(Finish::Stop)
            } else if stats.decode_tokens >= params.max_tokens {
                Some(Finish::Length)
            } else if aborted() {
                Some(Finish::Abort)
            } else {
                None
            })
        };
        let finish = loop {
            // What the constraint forces next goes into this step's forward pass.
            let forced = c.forced()?;
            let mut end = None;
            for &t in &forced {
                c.consume(t)?;
                forward.push(t);
                end = emit(self, t, stats)?;
                if end.is_some() {
                    break;
                }
            }
            if let Some(end) = end {
                break end;
            }
            if c.is_finished() {
                break Finish::Eos;
            }
            if self.engine.position() as u64 + forward.len() as u64 >= self.engine.max_context() as u64 {
                break Finish::Context;
            }
            self.engine.submit_forward(&forward).await?;
            self.cached.extend_from_slice(&forward);
            let tm = now_seconds();
            let mask = c.mask()?;
            mask_ms.push(1e3 * (now_seconds() - tm));
            self.engine.submit_draw(&params.sampling, Some(mask)).await?;
            let (t, logprobs) = self.engine.read_step().await?;
            if t1.is_none() {
                let now = now_seconds();
                stats.prefill_seconds = now - t0;
                t1 = Some(now);
            }
            if end_tokens.contains(&t) {
                break Finish::Eos;
            }
            c.consume(t)?;
            if let Some(lp) = logprobs {
                self.logprobs.borrow_mut().push(lp);
            }
            if let Some(end) = emit(self, t, stats)? {
                break end;
            }
            forward = vec![t];
        };
        stats.decode_seconds = t1.map_or(0.0, |t1| now_seconds() - t1);
        mask_ms.sort_by(f64::total_cmp);
        stats.mask_count = mask_ms.len() as u32;
        stats.mask_ms_median = mask_ms.get(mask_ms.len() / 2).copied().unwrap_or(0.0);
        stats.mask_ms_max = mask_ms.last().copied().unwrap_or(0.0);
        Ok(finish)
    }
}

/// Which tokens a generation may draw next, step by step (a grammar: `constraint::Constraint`).
pub trait TokenConstraint {
    /// The tokens allowed next, a bit each (bit `t % 32` of word `t / 32`) over the model's
    /// vocabulary; end tokens are allowed only where the constrained text may end.
    fn mask(&mut self) -> Result<&[u32]>;
    /// Take the token drawn (or forced).
    fn consume(&mut self, token: u32) -> Result<()>;
    /// Tokens that must come next, whatever the model says (appended without a draw; not yet
    /// consumed).
    fn forced(&mut self) -> Result<Vec<u32>>;
    /// Nothing more may follow.
    fn is_finished(&self) -> bool;
}

impl TokenConstraint for Constraint {
    fn mask(&mut self) -> Result<&[u32]> {
        Constraint::mask(self)
    }
    fn consume(&mut self, token: u32) -> Result<()> {
        Constraint::consume(self, token)
    }
    fn forced(&mut self) -> Result<Vec<u32>> {
        Ok(self.forced_tokens())
    }
    fn is_finished(&self) -> bool {
        Constraint::is_finished(self)
    }
}

/// Generated text, emitted as soon as it cannot be the start of a stop string.
struct TextOut<'a> {
    stop: &'a [String],
    text: String,
    emitted: usize,
}

impl<'a> TextOut<'a> {
    fn new(stop: &'a [String]) -> Self {
        Self { stop, text: String::new(), emitted: 0 }
    }

    /// Append a piece; returns true when a stop string appeared (the text is cut before it and
    /// everything before it emitted).
    fn push(&mut self, piece: &str, on_text: &mut dyn FnMut(&str)) -> bool {
        if piece.is_empty() {
            return false;
        }
        self.text.push_str(piece);
        let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
        // Only a stop string overlapping the new piece can be new.
        let mut from = self.text.len().saturating_sub(piece.len() + longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self.stop.iter().filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i)).min();
        if let Some(cut) = hit {
            self.text.truncate(cut);
            self.flush(on_text);
            return true;
        }
        // Hold back a tail that could still grow into a stop string.
        let held = self
            .stop
            .iter()
            .flat_map(|s| (1..s.len()).filter(move |&k| s.is_char_boundary(k)).map(move |k| &s[..k]))
            .filter(|prefix| self.text.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let safe = self.text.len() - held;
        if safe > self.emitted {
            on_text(&self.text[self.emitted..safe]);
            self.emitted = safe;
        }
        false
    }

    fn flush(&mut self, on_text: &mut dyn FnMut(&str)) {
        if self.text.len() > self.emitted {
            on_text(&self.text[self.emitted..]);
            self.emitted = self.text.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TextOut;

    fn run(stop: &[&str], pieces: &[&str]) -> (String, Vec<String>, bool) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut out = TextOut::new(&stop);
        let mut emitted = Vec::new();
        let mut hit = false;
        for p in pieces {
            if out.push(p, &mut |t| emitted.push(t.to_string())) {
                hit = true;
                break;
            }
        }
        if !hit {
            out.flush(&mut |t| emitted.push(t.to_string()));
        }
        (out.text, emitted, hit)
    }

    #[test]
    fn stop_strings_cut_the_text_and_are_never_streamed() {
        let (text, emitted, hit) = run(&["\n\nUser:"], &["Hello", " there", "\n", "\nUs", "er:", " more"]);
        assert!(hit);
        assert_eq!(text, "Hello there");
        assert_eq!(emitted.concat(), "Hello there");
        // "\n" was held back until it was known not to be the stop string's start… and it was.
        assert!(emitted.iter().all(|e| !e.contains('\n')), "{emitted:?}");
    }

    #[test]
    fn a_false_start_of_a_stop_string_is_released() {
        let (text, emitted, hit) = run(&["END"], &["the EN", "D", "ing"]);
        assert!(hit);
        assert_eq!(text, "the ");
        assert_eq!(emitted.concat(), "the ");
        let (text, emitted, hit) = run(&["END"], &["the EN", "ding"]);
        assert!(!hit);
        assert_eq!(text, "the ENding");
        assert_eq!(emitted, vec!["the ", "ENding"]);
    }

    #[test]
    fn stop_inside_one_piece_and_multibyte_text() {
        let (text, _, hit) = run(&["é!"], &["caf", "é! et"]);
        assert!(hit);
        assert_eq!(text, "caf");
        let (text, emitted, hit) = run(&[], &["日本", "語"]);
        assert!(!hit);
        assert_eq!((text.as_str(), emitted.concat().as_str()), ("日本語", "日本語"));
    }
}
