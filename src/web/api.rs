//! The `Gemma` class JavaScript sees. Every method that touches the GPU goes through one FIFO
//! lock, so calls made while another runs wait their turn and never interleave; the
//! tokenizer and `stats()` answer at once.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use js_sys::{Array, Float32Array, Function, Object, Promise, Uint32Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use super::cache;
use super::js::{self, describe};
use super::js_error;
use super::loader::{self, LoadOptions};
use super::lock::AsyncLock;
use crate::error::{Error, Result};
use crate::ops::logits::LogitRules;
use crate::ops::sample::Sampling;
use crate::session::{GenerateParams, GenerateStats, Session};
use crate::tokenizer::{Message, Tokenizer};

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &str = r#"
/** Progress of `Gemma.load`. Bytes count every shard, whether downloaded or read from the cache. */
export interface LoadProgress {
  loadedBytes: number;
  totalBytes: number;
  /** The file being handled ('' for phases that are not about one file). */
  file: string;
  /** 'manifest' | 'waiting' (another tab or load is downloading this model: this one waits
   *  for it, then reads the files from the browser cache; see `message`) | 'download'
   *  (network) | 'cache' (browser cache) | 'prepared' (a GGUF's conversion is stored) |
   *  'upload' (to the GPU) | 'compile' (shaders) | 'ready' | 'warning' (see `message`: a
   *  retry, a corrupt cached copy, caching disabled by the storage quota). */
  phase: 'manifest' | 'waiting' | 'download' | 'cache' | 'upload' | 'compile' | 'prepared' | 'ready' | 'warning';
  message?: string;
}

export interface LoadOptions {
  onProgress?: (progress: LoadProgress) => void;
  signal?: AbortSignal;
  /** KV-cache length in tokens (default 4096, at most the model's max positions). */
  maxContext?: number;
  /** Prompt tokens per prefill pass (default 128; bounds activation memory). Chunks of up to
   *  32 tokens take the matrix-vector kernel, longer ones the tiled matmul. */
  prefillChunk?: number;
  /** Persist shards in the Cache API (default true). */
  cache?: boolean;
  /** Shards fetched at once (default 3, at most 16). */
  concurrency?: number;
  /** Keep the KV cache in f32 instead of fp16 (exact, twice the memory). */
  kvF32?: boolean;
  /** Use at most this many bytes per storage binding, as a device with lower limits would
   *  (the load fails with AdapterLimitsError if the model needs more). */
  maxStorageBinding?: number;
  /** A replacement for `fetch` (e.g. to add headers). */
  fetch?: (url: string, init: RequestInit) => Promise<Response>;
}

export interface GenerateOptions {
  /** Tokens to generate at most (default 256). */
  maxTokens?: number;
  /** 0 = greedy (default 0.7). */
  temperature?: number;
  /** 0 = no limit (default 64). */
  topK?: number;
  /** default 0.95 */
  topP?: number;
  /** Same seed, same prompt, same options: same text. Default: random. */
  seed?: number;
  /** Generation ends before the first of these (not included in the result). */
  stop?: string | string[];
  /** `generate` only: read special-token strings in the prompt (`<start_of_turn>`, `<bos>`, …)
   * as those tokens. Default false: a prompt is text, whatever it contains, so user input can
   * never forge a turn (`chat` always treats messages as text; only its template adds them). */
  specialTokens?: boolean;
  /** Hugging Face's repetition penalty over the prompt and the generated tokens (1 = off;
   *  above 1 discourages repeats). */
  repetitionPenalty?: number;
  /** OpenAI's penalties over the generated tokens, each from -2 to 2 (0 = off): a token's
   *  logit is lowered by frequencyPenalty times its count, plus presencePenalty once. */
  frequencyPenalty?: number;
  presencePenalty?: number;
  /** Token id → bias from -100 to 100 added to its logit; -100 bans the token. */
  logitBias?: Record<number | string, number> | Map<number, number>;
  /** Record each generated token's log-probability and those of the `topLogprobs` (0 to 20)
   *  most likely tokens: read them with `gemma.logprobs()`. */
  topLogprobs?: number;
  /** Structured output: only text that matches is generated (each draw among the tokens the
   *  grammar allows; tokens it forces are appended without a draw). OpenAI's
   *  `{ type: 'json_object' }` and `{ type: 'json_schema', json_schema: { schema } }`, or a
   *  grammar in llguidance's Lark syntax `{ type: 'grammar', grammar }`, or a regular
   *  expression `{ type: 'regex', regex }`. A budget that runs out inside the structure ends
   *  with finishReason 'length'. */
  responseFormat?: ResponseFormat;
  /** Called with each new piece of text (whole characters, never part of a stop string). */
  onToken?: (text: string) => void;
  signal?: AbortSignal;
}

export type ResponseFormat =
  | { type: 'text' }
  | { type: 'json_object' }
  | { type: 'json_schema'; json_schema: { schema: Record<string, unknown> | boolean; name?: string; strict?: boolean | null; description?: string } }
  | { type: 'grammar'; grammar: string }
  | { type: 'regex'; regex: string };

/** One generated token's log-probability (OpenAI's `logprobs.content` entries): under the
 *  distribution after penalties and bias, before temperature, top-k and top-p. */
export interface TokenLogprob {
  token: string;
  logprob: number;
  /** The token's UTF-8 bytes (a byte-fallback token: its one byte). */
  bytes: number[];
  id: number;
  top_logprobs: { token: string; logprob: number; bytes: number[]; id: number }[];
}

/** `chat`: reply to `messages`; `chat.completions.create`: the same, in OpenAI's shapes. */
export interface ChatMethod {
  (messages: ChatMessage[], options?: GenerateOptions): Promise<string>;
  completions: {
    /** OpenAI's chat completion request (`messages`, `max_tokens`/`max_completion_tokens`,
     *  `temperature` (default 1), `top_p` (default 1), `top_k` (ours; default 0, off), `seed`,
     *  `stop`, `logit_bias`, `frequency_penalty`, `presence_penalty`, `repetition_penalty` (ours),
     *  `logprobs`, `top_logprobs`, `stream`, `stream_options.include_usage`, `response_format`,
     *  `tools`, `tool_choice`). `n` above 1 and unknown fields are refused with
     *  InvalidArgumentError. The usage has an extra `gemma_webgpu` field with the time to first
     *  token and the speeds. */
    create(request: ChatCompletionRequest & { stream?: false | null }, options?: { signal?: AbortSignal }): Promise<ChatCompletion>;
    create(request: ChatCompletionRequest & { stream: true }, options?: { signal?: AbortSignal }): Promise<AsyncIterableIterator<ChatCompletionChunk>>;
  };
}

export interface ChatCompletionRequest {
  /** Roles 'system', 'developer' (as system), 'user' and 'assistant'; content a string or
   *  text parts (OpenAI's message types are accepted; other parts are refused at run time). */
  messages: { role: string; content?: unknown }[];
  model?: string;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  logit_bias?: Record<string, number> | null;
  frequency_penalty?: number | null;
  presence_penalty?: number | null;
  repetition_penalty?: number | null;
  logprobs?: boolean | null;
  top_logprobs?: number | null;
  n?: number | null;
  /** 'text', 'json_object', 'json_schema' (`json_schema.schema`), and ours: 'grammar' (Lark),
   *  'regex': see `GenerateOptions.responseFormat`. */
  response_format?: { type: string } | null;
  /** Function tools `{ type: 'function', function: { name, description?, parameters? } }`. */
  tools?: { type: string }[] | null;
  /** 'auto' (default: the reply is a call when it is one), 'none', 'required' (constrained to
   *  the tools' schemas), or `{ type: 'function', function: { name } }`. */
  tool_choice?: string | { type: string } | null;
}

export interface ChatCompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
  gemma_webgpu: {
    time_to_first_token_s: number;
    prefill_tokens: number;
    prefill_tokens_per_second: number;
    decode_seconds: number;
    decode_tokens_per_second: number;
  };
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: {
    index: number;
    message: { role: 'assistant'; content: string | null; refusal: null; tool_calls?: ChatCompletionToolCall[] };
    logprobs: { content: TokenLogprob[]; refusal: null } | null;
    finish_reason: 'stop' | 'length' | 'tool_calls';
  }[];
  usage: ChatCompletionUsage;
}

export interface ChatCompletionToolCall {
  id: string;
  type: 'function';
  /** `arguments` is JSON text, as OpenAI's. */
  function: { name: string; arguments: string };
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: {
    index: number;
    delta: { role?: 'assistant'; content?: string; tool_calls?: (ChatCompletionToolCall & { index: number })[] };
    logprobs: { content: TokenLogprob[]; refusal: null } | null;
    finish_reason: 'stop' | 'length' | 'tool_calls' | null;
  }[];
  usage?: ChatCompletionUsage | null;
}

export interface Gemma {
  /** Reply to `messages` with Gemma's chat template (resolves to the reply's text). When they
   *  extend the previous conversation, the cached prefix is reused and only the new tokens
   *  are prefilled. `chat.completions.create` is the OpenAI-shaped form. */
  readonly chat: ChatMethod;
}

export interface ChatMessage {
  role: 'user' | 'assistant' | 'system';
  content: string;
}

export interface GemmaStats {
  promptTokens: number;
  /** Prompt tokens whose K/V came from the cache (not prefilled again). */
  reusedTokens: number;
  prefillTokens: number;
  prefillSeconds: number;
  prefillTokensPerSecond: number;
  decodeTokens: number;
  decodeSeconds: number;
  decodeTokensPerSecond: number;
  /** Constrained generation (`responseFormat`): allowed-token masks computed on the CPU, one
   *  per draw, and the median and longest time one took (0 otherwise). */
  maskCount: number;
  maskMedianMs: number;
  maskMaxMs: number;
  finishReason: 'eos' | 'stop' | 'length' | 'context' | 'abort';
  /** Tokens now in the KV cache. */
  contextTokens: number;
  maxContext: number;
  gpuBytes: number;
  weightBytes: number;
  kvCacheBytes: number;
  adapter: string;
}

export interface CachedModel {
  /** Pass to `Gemma.deleteCachedModel`. */
  key: string;
  /** The model's URL, or null if unknown. */
  url: string | null;
  bytes: number;
  files: number;
  /** Every shard is stored (a partial copy resumes on the next load). */
  complete: boolean;
}
"#;

#[wasm_bindgen(module = "/src/web/openai.js")]
extern "C" {
    /// Give `chat` its `completions.create` (on the class, once).
    #[wasm_bindgen(js_name = installChat)]
    fn install_chat(instance: &JsValue);
}

/// What a loaded model shares between the `Gemma` object and the calls in flight.
struct Shared {
    session: RefCell<Option<Session>>,
    tokenizer: Rc<Tokenizer>,
    lock: Rc<AsyncLock>,
    reset_pending: Cell<bool>,
    disposed: Cell<bool>,
    /// Set once a call found the GPU device lost: the session is dropped, and every later call
    /// rejects with this error (`DeviceLostError`) until the model is loaded again.
    lost: RefCell<Option<Error>>,
    /// The session's device (for `__loseDevice`, which must reach it while a call holds the
    /// session).
    device: wgpu::Device,
    stats: Cell<GenerateStats>,
    /// The session's log-probabilities (shared with it: readable while a call runs).
    logprobs: Rc<RefCell<Vec<crate::ops::logits::Logprobs>>>,
    context_tokens: Cell<u32>,
    max_context: u32,
    memory: (u64, u64, u64),
    adapter: String,
}

/// A Gemma model loaded onto this browser's GPU.
#[wasm_bindgen]
pub struct Gemma {
    shared: Rc<Shared>,
}

fn reject(e: Error) -> Promise {
    Promise::reject(&js_error(e))
}

/// Run `op` on the session once every earlier call has finished.
fn queued<F, Fut>(shared: &Rc<Shared>, op: F) -> Promise
where
    F: FnOnce(Rc<Shared>) -> Fut + 'static,
    Fut: std::future::Future<Output = Result<JsValue>> + 'static,
{
    let shared = shared.clone();
    future_to_promise(async move {
        let guard = shared.lock.acquire().await;
        let lost = shared.lost.borrow().clone();
        let out = match lost {
            Some(lost) => Err(lost),
            None if shared.disposed.get() => Err(Error::Disposed),
            None => op(shared.clone()).await,
        };
        if let Some(s) = shared.session.borrow().as_ref() {
            shared.context_tokens.set(s.context_tokens());
        }
        // A lost device takes the session with it: free what is left of it.
        if let Err(e @ Error::DeviceLost { .. }) = &out {
            shared.lost.borrow_mut().get_or_insert_with(|| e.clone());
            shared.session.borrow_mut().take();
            loader::release_version_lock(&shared.tokenizer);
        }
        // Whoever holds the lock when the model is disposed frees it: the call in flight when
        // `dispose` came, or any call that was waiting behind it (each then rejects).
        if shared.disposed.get() {
            shared.session.borrow_mut().take();
        }
        drop(guard);
        out.map_err(js_error)
    })
}

/// Borrow the session for one queued call (applying a pending `reset()` first).
fn session(shared: &Shared) -> Result<std::cell::RefMut<'_, Session>> {
    let mut s = std::cell::RefMut::filter_map(shared.session.borrow_mut(), Option::as_mut).map_err(|_| Error::Disposed)?;
    if shared.reset_pending.replace(false) {
        s.reset();
    }
    Ok(s)
}

struct CallOptions {
    params: GenerateParams,
    on_token: Option<Function>,
    signal: Option<web_sys::AbortSignal>,
}

fn call_options(o: &JsValue) -> Result<CallOptions> {
    if !o.is_undefined() && !o.is_null() && !o.is_object() {
        return Err(Error::invalid("options", format!("must be an object, got {}", describe(o))));
    }
    let d = GenerateParams::default();
    let temperature = js::opt_f64(o, "temperature")?.map(|t| t as f32).unwrap_or(d.sampling.temperature);
    let seed = match js::opt_f64(o, "seed")? {
        Some(s) if s.fract() == 0.0 && s >= 0.0 && s <= u32::MAX as f64 => s as u32,
        Some(s) => return Err(Error::invalid("seed", format!("must be a whole number from 0 to {}, got {s}", u32::MAX))),
        None => (js_sys::Math::random() * u32::MAX as f64) as u32,
    };
    let r = LogitRules::default();
    let rules = LogitRules {
        repetition_penalty: js::opt_f64(o, "repetitionPenalty")?.map_or(r.repetition_penalty, |v| v as f32),
        frequency_penalty: js::opt_f64(o, "frequencyPenalty")?.map_or(r.frequency_penalty, |v| v as f32),
        presence_penalty: js::opt_f64(o, "presencePenalty")?.map_or(r.presence_penalty, |v| v as f32),
        logit_bias: logit_bias(&js::get(o, "logitBias"))?,
        top_logprobs: js::opt_u32(o, "topLogprobs")?,
    };
    let format = js::get(o, "responseFormat");
    let constraint = if format.is_undefined() || format.is_null() {
        None
    } else {
        let text = js_sys::JSON::stringify(&format).ok().and_then(|t| t.as_string()).unwrap_or_default();
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::invalid("responseFormat", format!("must be plain JSON ({e})")))?;
        crate::constraint::ConstraintSpec::from_response_format(&value)?
    };
    let params = GenerateParams {
        rules,
        constraint,
        max_tokens: js::opt_u32(o, "maxTokens")?.unwrap_or(d.max_tokens),
        sampling: Sampling {
            temperature,
            top_k: js::opt_u32(o, "topK")?.unwrap_or(d.sampling.top_k),
            top_p: js::opt_f64(o, "topP")?.map(|p| p as f32).unwrap_or(d.sampling.top_p),
            seed,
        },
        stop: js::opt_strings(o, "stop")?,
        special_tokens: js::opt_bool(o, "specialTokens")?.unwrap_or(false),
    };
    if params.max_tokens == 0 {
        return Err(Error::invalid("maxTokens", "must be at least 1"));
    }
    Ok(CallOptions { params, on_token: js::opt_function(o, "onToken")?, signal: js::opt_signal(o)? })
}

/// `logitBias`: an object of token id → bias (OpenAI's shape, ids as strings) or a Map.
fn logit_bias(v: &JsValue) -> Result<Vec<(u32, f32)>> {
    if v.is_undefined() || v.is_null() {
        return Ok(Vec::new());
    }
    let entries: Array = if let Some(map) = v.dyn_ref::<js_sys::Map>() {
        Array::from(&map.entries())
    } else if v.is_object() && !Array::is_array(v) {
        Object::entries(v.unchecked_ref())
    } else {
        return Err(Error::invalid("logitBias", format!("must be an object of token id → bias, got {}", describe(v))));
    };
    if entries.length() as usize > crate::ops::logits::MAX_BIAS {
        return Err(Error::invalid("logitBias", format!("at most {} tokens, got {}", crate::ops::logits::MAX_BIAS, entries.length())));
    }
    entries
        .iter()
        .map(|pair| {
            let pair = Array::from(&pair);
            let (k, b) = (pair.get(0), pair.get(1));
            let id = k.as_f64().or_else(|| k.as_string().and_then(|s| s.trim().parse::<f64>().ok()));
            let id = match id {
                Some(i) if i.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&i) => i as u32,
                _ => return Err(Error::invalid("logitBias", format!("keys must be token ids, got {}", describe(&k)))),
            };
            let bias = b.as_f64().ok_or_else(|| Error::invalid("logitBias", format!("the bias of token {id} must be a number, got {}", describe(&b))))?;
            Ok((id, bias as f32))
        })
        .collect()
}

/// A prompt passed from JavaScript: a string, or a named error (not wasm-bindgen's TypeError).
fn prompt_text(v: &JsValue) -> Result<String> {
    v.as_string().ok_or_else(|| Error::invalid("prompt", format!("must be a string, got {}", describe(v))))
}

fn messages(v: &JsValue) -> Result<Vec<Message>> {
    if !Array::is_array(v) {
        return Err(Error::invalid("messages", format!("must be an array of {{ role, content }}, got {}", describe(v))));
    }
    Array::from(v)
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |k: &str| js::get(&m, k).as_string();
            match (field("role"), field("content")) {
                (Some(role), Some(content)) => Ok(Message { role, content }),
                _ => Err(Error::invalid("messages", format!("message {i} needs string 'role' and 'content', got {}", describe(&m)))),
            }
        })
        .collect()
}

enum Prompt {
    Text(String),
    Chat(Vec<Message>),
}

// The session stays borrowed across the GPU awaits of one call: the FIFO lock (`queued`) lets
// one call at a time reach it, and `dispose` only takes it when the lock is free.
#[allow(clippy::await_holding_refcell_ref)]
fn run_generation(shared: &Rc<Shared>, prompt: Prompt, options: &JsValue) -> Promise {
    let o = match call_options(options) {
        Ok(o) => o,
        Err(e) => return reject(e),
    };
    queued(shared, move |shared| async move {
        let mut s = session(&shared)?;
        // A throwing onToken stops the generation and its error is what the caller gets.
        let thrown: RefCell<Option<JsValue>> = RefCell::new(None);
        let mut on_text = |piece: &str| {
            if let Some(f) = &o.on_token {
                if let Err(e) = f.call1(&JsValue::NULL, &JsValue::from_str(piece)) {
                    thrown.borrow_mut().get_or_insert(e);
                }
            }
        };
        let aborted = || o.signal.as_ref().is_some_and(|s| s.aborted()) || thrown.borrow().is_some();
        if aborted() {
            return Err(Error::Aborted("generation"));
        }
        let out = match &prompt {
            Prompt::Text(t) => s.generate(t, &o.params, &mut on_text, &aborted).await,
            Prompt::Chat(m) => s.chat(m, &o.params, &mut on_text, &aborted).await,
        };
        shared.stats.set(s.stats);
        if let Some(e) = thrown.borrow_mut().take() {
            return Err(Error::invalid("onToken", format!("the callback threw {}", describe(&e))));
        }
        out.map(JsValue::from)
    })
}

#[wasm_bindgen]
impl Gemma {
    /// Load a converted model from `modelUrl` (a directory with `manifest.json`, the shards and
    /// `tokenizer.json`): shards stream in with bounded parallelism, each verified (size and
    /// SHA-256) and uploaded to the GPU, and persisted in the browser cache for next time.
    #[wasm_bindgen(unchecked_return_type = "Promise<Gemma>")]
    pub fn load(
        #[wasm_bindgen(js_name = modelUrl)] model_url: String,
        #[wasm_bindgen(unchecked_optional_param_type = "LoadOptions")] options: Option<JsValue>,
    ) -> Promise {
        let opts = match LoadOptions::from_js(&options.unwrap_or(JsValue::UNDEFINED)) {
            Ok(o) => o,
            Err(e) => return reject(e),
        };
        future_to_promise(async move {
            let session = loader::load(&model_url, &opts).await.map_err(js_error)?;
            let e = &session.engine;
            let tokenizer = session.tokenizer.clone().ok_or_else(|| js_error(Error::Format("this model has no tokenizer.json".into())))?;
            let shared = Shared {
                tokenizer,
                lock: Rc::new(AsyncLock::default()),
                reset_pending: Cell::new(false),
                disposed: Cell::new(false),
                lost: RefCell::new(None),
                device: e.ctx.device.clone(),
                stats: Cell::new(GenerateStats::default()),
                logprobs: session.logprobs.clone(),
                context_tokens: Cell::new(0),
                max_context: e.max_context(),
                memory: (e.gpu_bytes(), e.weight_bytes(), e.kv_cache_bytes()),
                adapter: e.ctx.report.to_string(),
                session: RefCell::new(Some(session)),
            };
            let gemma: JsValue = Gemma { shared: Rc::new(shared) }.into();
            install_chat(&gemma);
            Ok(gemma)
        })
    }

    /// Generate a continuation of `prompt`; resolves to the generated text.
    #[wasm_bindgen(unchecked_return_type = "Promise<string>")]
    pub fn generate(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string")] prompt: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "GenerateOptions")] options: Option<JsValue>,
    ) -> Promise {
        match prompt_text(&prompt) {
            Ok(p) => run_generation(&self.shared, Prompt::Text(p), &options.unwrap_or(JsValue::UNDEFINED)),
            Err(e) => reject(e),
        }
    }

    /// Like `generate`, as an async iterator of text pieces. Leaving the loop early stops the
    /// generation.
    #[wasm_bindgen(unchecked_return_type = "AsyncIterableIterator<string>")]
    pub fn stream(&self, prompt: String, #[wasm_bindgen(unchecked_optional_param_type = "GenerateOptions")] options: Option<JsValue>) -> JsValue {
        js::make_stream(Gemma { shared: self.shared.clone() }.into(), &prompt, &options.unwrap_or(JsValue::UNDEFINED))
    }

    /// Reply to `messages` with Gemma's chat template. When they extend the previous
    /// conversation, the cached prefix is reused and only the new tokens are prefilled. (Its
    /// TypeScript is `ChatMethod`: `src/web/openai.js` gives it `chat.completions.create`.)
    #[wasm_bindgen(skip_typescript)]
    pub fn chat(
        &self,
        #[wasm_bindgen(unchecked_param_type = "ChatMessage[]")] messages: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "GenerateOptions")] options: Option<JsValue>,
    ) -> Promise {
        match self::messages(&messages) {
            Ok(m) => run_generation(&self.shared, Prompt::Chat(m), &options.unwrap_or(JsValue::UNDEFINED)),
            Err(e) => reject(e),
        }
    }

    /// Token ids of `text`, starting with BOS (as `generate` feeds them): special-token strings
    /// in it are text unless `specialTokens` is true (as `generate`'s option of that name).
    pub fn tokenize(&self, text: &str, #[wasm_bindgen(js_name = "specialTokens")] special_tokens: Option<bool>) -> Result<Uint32Array, JsValue> {
        let tok = &self.shared.tokenizer;
        let ids = if special_tokens.unwrap_or(false) { tok.encode_raw(text) } else { tok.encode(text) }.map_err(js_error)?;
        Ok(Uint32Array::from(ids.as_slice()))
    }

    /// Text of `ids` (special tokens dropped).
    pub fn detokenize(&self, #[wasm_bindgen(unchecked_param_type = "Uint32Array | number[]")] ids: JsValue) -> Result<String, JsValue> {
        let ids = js::ids(&ids).map_err(js_error)?;
        self.shared.tokenizer.decode(&ids).map_err(js_error)
    }

    /// Logits after the final soft-cap for every position of `ids` (from an empty context),
    /// `[ids.length × vocab]` row by row; for evaluation.
    #[wasm_bindgen(unchecked_return_type = "Promise<Float32Array>")]
    #[allow(clippy::await_holding_refcell_ref)] // as in `run_generation`
    pub fn logits(&self, #[wasm_bindgen(unchecked_param_type = "Uint32Array | number[]")] ids: JsValue) -> Promise {
        let ids = match js::ids(&ids) {
            Ok(i) => i,
            Err(e) => return reject(e),
        };
        queued(&self.shared, move |shared| async move {
            let mut s = session(&shared)?;
            let out = s.logits(&ids).await?;
            Ok(Float32Array::from(out.as_slice()).into())
        })
    }

    /// Log-probabilities of the tokens of the current or last generation from index `start`
    /// (default 0), where it asked for them (`topLogprobs`): OpenAI's `logprobs.content`
    /// entries, with token ids.
    #[wasm_bindgen(unchecked_return_type = "TokenLogprob[]")]
    pub fn logprobs(&self, start: Option<u32>) -> JsValue {
        let tok = &self.shared.tokenizer;
        let entry = |id: u32, logprob: f32| {
            let o = Object::new();
            let (text, bytes) = tok.token_text(id);
            js::set(&o, "token", text.as_str());
            js::set(&o, "logprob", logprob as f64);
            js::set(&o, "bytes", bytes.iter().map(|b| JsValue::from(*b)).collect::<Array>());
            js::set(&o, "id", id);
            o
        };
        let all = self.shared.logprobs.borrow();
        all.iter()
            .skip(start.unwrap_or(0) as usize)
            .map(|lp| {
                let o = entry(lp.id, lp.logprob);
                js::set(&o, "top_logprobs", lp.top.iter().map(|(id, l)| JsValue::from(entry(*id, *l))).collect::<Array>());
                JsValue::from(o)
            })
            .collect::<Array>()
            .into()
    }

    /// Forget the conversation (takes effect before the next call that uses the model).
    pub fn reset(&self) {
        self.shared.reset_pending.set(true);
    }

    /// Speed and token counts of the last generation, and memory use.
    #[wasm_bindgen(unchecked_return_type = "GemmaStats")]
    pub fn stats(&self) -> JsValue {
        let s = self.shared.stats.get();
        let o = Object::new();
        let (gpu, weights, kv) = self.shared.memory;
        let fields: [(&str, f64); 16] = [
            ("promptTokens", s.prompt_tokens as f64),
            ("reusedTokens", s.reused_tokens as f64),
            ("prefillTokens", s.prefill_tokens as f64),
            ("prefillSeconds", s.prefill_seconds),
            ("prefillTokensPerSecond", s.prefill_tokens_per_second()),
            ("decodeTokens", s.decode_tokens as f64),
            ("decodeSeconds", s.decode_seconds),
            ("decodeTokensPerSecond", s.decode_tokens_per_second()),
            ("contextTokens", if self.shared.reset_pending.get() { 0.0 } else { self.shared.context_tokens.get() as f64 }),
            ("maxContext", self.shared.max_context as f64),
            ("gpuBytes", gpu as f64),
            ("weightBytes", weights as f64),
            ("kvCacheBytes", kv as f64),
            ("maskCount", s.mask_count as f64),
            ("maskMedianMs", s.mask_ms_median),
            ("maskMaxMs", s.mask_ms_max),
        ];
        for (k, v) in fields {
            js::set(&o, k, v);
        }
        js::set(&o, "finishReason", s.finish.name());
        js::set(&o, "adapter", self.shared.adapter.as_str());
        o.into()
    }

    /// Free the GPU memory (after the call in flight, if any). Later calls reject with
    /// `DisposedError`.
    pub fn dispose(&self) {
        self.shared.disposed.set(true);
        loader::release_version_lock(&self.shared.tokenizer);
        if !self.shared.lock.is_busy() {
            self.shared.session.borrow_mut().take();
        }
    }

    /// For tests: destroy the model's GPU device, as a GPU reset or a crash of the browser's
    /// GPU process would lose it. The call in flight and every later one reject with
    /// `DeviceLostError`; loading the model again recovers.
    #[wasm_bindgen(js_name = "__loseDevice", skip_typescript)]
    pub fn lose_device(&self) {
        self.shared.device.destroy();
    }

    /// Models stored in this browser's cache.
    #[wasm_bindgen(js_name = listCachedModels, unchecked_return_type = "Promise<CachedModel[]>")]
    pub fn list_cached_models() -> Promise {
        future_to_promise(async move {
            let all = cache::list().await.map_err(|e| js_error(Error::invalid("cache", e)))?;
            Ok(all.iter().map(|(name, meta)| cache::entry(name, meta)).collect::<Array>().into())
        })
    }

    /// Delete a cached model by its `key` (from `listCachedModels`); resolves to whether it
    /// existed.
    #[wasm_bindgen(js_name = deleteCachedModel, unchecked_return_type = "Promise<boolean>")]
    pub fn delete_cached_model(key: String) -> Promise {
        future_to_promise(async move {
            let deleted = cache::delete(&key).await.map_err(|e| js_error(Error::invalid("cache", e)))?;
            Ok(deleted.into())
        })
    }
}
