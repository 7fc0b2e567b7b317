//! Loading a converted model by URL: the manifest, then the tokenizer and the shards with
//! bounded parallelism, each streamed from the network (or read from the browser cache),
//! checked against its size and SHA-256 and uploaded to the GPU before the next one is
//! fetched by that worker. A shard that fails its check is fetched once more, then the load
//! fails naming it; network errors are retried twice with a pause.
//!
//! Two loads of one model version (two tabs, or two loads in one page) share one download: the
//! second waits for the first (phase 'waiting') and reads the files it stored; a version is
//! not deleted while a load or a loaded model uses it (Web Locks: `cache`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use js_sys::{Function, Object, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{AbortSignal, ReadableStreamDefaultReader, Response};

use super::cache::{self, HeldLock, Lock, Meta, ModelCache};
use super::js::{self, await_promise, describe, is_abort};
use crate::convert::gguf::Gguf;
use crate::convert::stream::{GgufStream, RangeSource};
use crate::error::{Error, Result};
use crate::format::{self, Manifest, DEFAULT_SHARD_BYTES, MANIFEST_FILE};
use crate::gpu::{ContextOptions, GpuContext};
use crate::model::engine::{EngineOptions, KvType};
use crate::model::load::{self, LoadPhase, ShardSource};
use crate::model::options::DEFAULT_PREFILL_CHUNK;
use crate::model::weights::verify_shard;
use crate::session::Session;
use crate::tokenizer::Tokenizer;

pub(crate) struct LoadOptions {
    pub on_progress: Option<Function>,
    pub signal: Option<AbortSignal>,
    /// The engine's options (context length, prefill chunk, KV type).
    pub engine: EngineOptions,
    pub cache: bool,
    pub concurrency: usize,
    pub fetch: Option<Function>,
    /// Pretend the adapter allows at most this storage binding (to try a phone's limits).
    pub max_storage_binding: u64,
}

impl LoadOptions {
    pub(crate) fn from_js(o: &JsValue) -> Result<Self> {
        let concurrency = js::opt_u32(o, "concurrency")?.unwrap_or(3);
        if js::opt_u32(o, "prefillChunk")? == Some(0) {
            return Err(Error::invalid("prefillChunk", "must be at least 1 token"));
        }
        if !(1..=16).contains(&concurrency) {
            return Err(Error::invalid("concurrency", format!("must be from 1 to 16, got {concurrency}")));
        }
        Ok(Self {
            on_progress: js::opt_function(o, "onProgress")?,
            signal: js::opt_signal(o)?,
            engine: EngineOptions {
                max_context: js::opt_u32(o, "maxContext")?,
                prefill_chunk: js::opt_u32(o, "prefillChunk")?.unwrap_or(DEFAULT_PREFILL_CHUNK),
                kv: KvType::f32_if(js::opt_bool(o, "kvF32")?.unwrap_or(false)),
            },
            cache: js::opt_bool(o, "cache")?.unwrap_or(true),
            concurrency: concurrency as usize,
            fetch: js::opt_function(o, "fetch")?,
            max_storage_binding: js::opt_f64(o, "maxStorageBinding")?.map(|v| v.max(0.0) as u64).unwrap_or(0),
        })
    }
}

/// Reports `{ loadedBytes, totalBytes, file, phase, message? }` to `onProgress`.
struct Progress {
    callback: Option<Function>,
    total: Cell<u64>,
    loaded: Cell<u64>,
    /// Bytes at the last 'download' report (reports are thinned to one per MiB).
    reported: Cell<u64>,
}

impl Progress {
    fn report(&self, phase: &str, file: &str, message: Option<&str>) {
        let Some(cb) = &self.callback else { return };
        let o = Object::new();
        js::set(&o, "loadedBytes", self.loaded.get() as f64);
        js::set(&o, "totalBytes", self.total.get() as f64);
        js::set(&o, "file", file);
        js::set(&o, "phase", phase);
        if let Some(m) = message {
            js::set(&o, "message", m);
        }
        if let Err(e) = cb.call1(&JsValue::NULL, &o) {
            web_sys::console::warn_1(&format!("gemma-webgpu: onProgress threw {}", describe(&e)).into());
        }
    }

    fn add(&self, n: u64, phase: &str, file: &str) {
        self.loaded.set(self.loaded.get() + n);
        if self.loaded.get() - self.reported.get() >= 1 << 20 {
            self.reported.set(self.loaded.get());
            self.report(phase, file, None);
        }
    }

    fn take_back(&self, n: u64) {
        self.loaded.set(self.loaded.get().saturating_sub(n));
        self.reported.set(self.reported.get().min(self.loaded.get()));
    }

    fn warn(&self, file: &str, message: &str) {
        web_sys::console::warn_1(&format!("gemma-webgpu: {message}").into());
        self.report("warning", file, Some(message));
    }
}

struct Loader<'a> {
    opts: &'a LoadOptions,
    base: String,
    progress: Progress,
    cache: RefCell<Option<ModelCache>>,
    /// The GGUF file's URL when loading one (`base` is then where its prepared conversion is
    /// kept: `<url>.gemma-webgpu/`).
    gguf: Option<String>,
    /// Prepared files the browser cache could not take (no cache, or its quota ran out),
    /// by URL; each is handed over (and dropped here) when the load reads it.
    memory: RefCell<HashMap<String, Vec<u8>>>,
    /// The GGUF load stopped writing to the cache (`cache` is still read).
    cache_full: Cell<bool>,
    /// The cached version's use lock (shared): no cleanup deletes it while this load runs, nor
    /// afterwards while the model it loads lives (`IN_USE`).
    version_lock: RefCell<Option<HeldLock>>,
    /// The version's download lock (exclusive), held while this load may fetch its files.
    download_lock: RefCell<Option<HeldLock>>,
    /// The cached version was marked complete when this load opened it (and no file of it has
    /// been found missing since).
    complete_cached: Cell<bool>,
}

thread_local! {
    /// The use locks of the models loaded in this page, each with its model's tokenizer: the
    /// model's identity here (the `Gemma` object keeps that `Rc` for its lifetime). A lock is
    /// released by `release_version_lock` (dispose) or once its model is freed; otherwise it is
    /// held for the page's lifetime.
    static IN_USE: RefCell<Vec<(Weak<Tokenizer>, HeldLock)>> = const { RefCell::new(Vec::new()) };
}

/// Keep `lock` (a version's use lock) for as long as the model whose tokenizer is `tokenizer`
/// lives.
fn keep_in_use(tokenizer: &Rc<Tokenizer>, lock: HeldLock) {
    IN_USE.with(|held| {
        let mut held = held.borrow_mut();
        held.retain(|(t, _)| t.strong_count() > 0);
        held.push((Rc::downgrade(tokenizer), lock));
    });
}

/// Release the use locks of models that have been freed.
fn release_freed() {
    IN_USE.with(|held| held.borrow_mut().retain(|(t, _)| t.strong_count() > 0));
}

/// Release the use lock of the cached version the model with this tokenizer was loaded from
/// (for `dispose`): a later load's cleanup may then delete that version once it is outdated.
pub(crate) fn release_version_lock(tokenizer: &Rc<Tokenizer>) {
    IN_USE.with(|held| held.borrow_mut().retain(|(t, _)| t.strong_count() > 0 && !std::ptr::eq(t.as_ptr(), Rc::as_ptr(tokenizer))));
}

/// The manifest and the tokenizer may not be larger than this (the 270M's 262k-token
/// `tokenizer.json` is 14 MB).
const MAX_SMALL_FILE: u64 = 256 << 20;

/// Where a GGUF's prepared conversion is kept in the cache, under its URL.
const PREPARED_SUFFIX: &str = ".gemma-webgpu/";
/// The first request for a GGUF: its first bytes, whose hash (with the URL and the file's
/// size) names the prepared copy.
const GGUF_HEAD_BYTES: u64 = 64 << 10;
/// A GGUF header larger than this is refused (the 270M's, with a 262k-token vocabulary, is
/// about 6 MiB).
const MAX_GGUF_HEADER: u64 = 128 << 20;
/// Written last when a GGUF has been prepared: its presence says the prepared copy is whole.
const SOURCE_FILE: &str = "gguf-source.json";

/// `bytes` for a message: "12.3 MB", or "45 kB" below a megabyte.
fn human_bytes(bytes: f64) -> String {
    if bytes >= 1e6 {
        format!("{:.1} MB", bytes / 1e6)
    } else {
        format!("{:.0} kB", bytes / 1e3)
    }
}

/// Whether `url` names a GGUF file (by its path's extension).
fn is_gguf(url: &str) -> bool {
    url.split(['?', '#']).next().unwrap_or(url).to_ascii_lowercase().ends_with(".gguf")
}

/// Load the model at `url`: a directory URL holding `manifest.json`, or a `.gguf` file.
pub(crate) async fn load(url: &str, opts: &LoadOptions) -> Result<Session> {
    let gguf = is_gguf(url).then(|| absolute(url));
    let base = match &gguf {
        Some(src) => format!("{src}{PREPARED_SUFFIX}"),
        None => absolute(&if url.ends_with('/') { url.to_string() } else { format!("{url}/") }),
    };
    let l = Loader {
        opts,
        base,
        progress: Progress { callback: opts.on_progress.clone(), total: Cell::new(0), loaded: Cell::new(0), reported: Cell::new(0) },
        cache: RefCell::new(None),
        gguf,
        memory: RefCell::new(HashMap::new()),
        cache_full: Cell::new(false),
        version_lock: RefCell::new(None),
        download_lock: RefCell::new(None),
        complete_cached: Cell::new(false),
    };
    release_freed();
    l.run().await
}

/// Resolve a possibly relative URL against the page (or worker) location.
fn absolute(url: &str) -> String {
    let location = js::get(&js::global(), "location");
    let href = js::get(&location, "href").as_string().unwrap_or_default();
    match js_sys::Reflect::construct(&js::get(&js::global(), "URL").unchecked_into::<Function>(), &js_sys::Array::of2(&url.into(), &href.into())) {
        Ok(u) => js::get(&u, "href").as_string().unwrap_or_else(|| url.to_string()),
        Err(_) => url.to_string(),
    }
}

impl Loader<'_> {
    fn check_abort(&self) -> Result<()> {
        match &self.opts.signal {
            Some(s) if s.aborted() => Err(Error::Aborted("loading the model")),
            _ => Ok(()),
        }
    }

    async fn run(&self) -> Result<Session> {
        self.check_abort()?;
        if !js::get(&js::get(&js::global(), "navigator"), "gpu").is_object() {
            return Err(Error::NoAdapter { backend: "this browser has no WebGPU (navigator.gpu is missing)".into() });
        }
        let manifest_url = format!("{}{MANIFEST_FILE}", self.base);
        if let Some(src) = &self.gguf {
            let text = self.prepare_gguf(src, &manifest_url).await?;
            return self.load_manifest(text, manifest_url).await;
        }
        self.progress.report("manifest", MANIFEST_FILE, None);
        let text = match self.fetch_text(&manifest_url).await {
            Ok(t) => t,
            Err(e @ Error::Download { .. }) if self.opts.cache => match offline_manifest(&self.base, &manifest_url).await {
                Some(t) => {
                    self.progress.warn(MANIFEST_FILE, &format!("{e}; using the copy in the browser cache"));
                    t
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        self.load_manifest(text, manifest_url).await
    }

    /// Load the model `text` (a manifest) describes, its files from the cache or the network.
    async fn load_manifest(&self, text: String, manifest_url: String) -> Result<Session> {
        let manifest = Manifest::from_json(&text)?;
        let total: u64 = manifest.shards.iter().map(|s| s.size).sum();
        self.progress.total.set(self.progress.loaded.get() + total);
        // Bad options fail before anything is downloaded (or waited for).
        self.opts.engine.resolve(&manifest.config)?;
        // The GPU first: no point downloading a model the adapter cannot hold.
        let largest = manifest.tensors.iter().flat_map(|t| t.parts.iter().map(|p| p.length)).max().unwrap_or(0);
        let ctx = GpuContext::new(&ContextOptions {
            min_storage_binding: largest,
            min_buffer_size: largest,
            max_storage_binding_cap: self.opts.max_storage_binding,
            no_subgroups: false,
        })
        .await?;
        if self.opts.cache && self.cache().is_none() && self.gguf.is_none() {
            self.open_cache(&text, &manifest_url, &manifest).await?;
        }

        let tokenizer = self.tokenizer(&manifest).await?;
        let engine = load::load(ctx, &manifest, &Shards { loader: self, manifest: &manifest }, self.opts.engine).await?;
        self.check_abort()?;
        self.finish_cache(&manifest).await;
        self.download_lock.borrow_mut().take();
        self.progress.report("ready", "", None);
        let tokenizer = Rc::new(tokenizer);
        if let Some(lock) = self.version_lock.borrow_mut().take() {
            keep_in_use(&tokenizer, lock);
        }
        Ok(Session::new(engine, Some(tokenizer)))
    }

    /// The cache entry of the model `manifest` describes.
    fn meta(&self, manifest: &Manifest, complete: bool) -> Meta {
        let bytes = manifest.shards.iter().fold(0u64, |sum, s| sum.saturating_add(s.size));
        Meta { url: self.base.clone(), bytes, files: u32::try_from(manifest.shards.len()).unwrap_or(u32::MAX), complete }
    }

    /// Open the cached copy of the model version `text` (its manifest) names, holding the
    /// version for this load; unless it is complete, wait for any other load downloading it
    /// (then read what that one stored) and mark it incomplete until this load finishes. A
    /// complete copy stays marked complete: a failed or aborted reload leaves it loadable
    /// offline. Without a cache the load goes on uncached, with a warning.
    async fn open_cache(&self, text: &str, manifest_url: &str, manifest: &Manifest) -> Result<()> {
        let sha = format::sha256_hex(text.as_bytes());
        self.hold_version(&cache::cache_name(&sha)).await?;
        let c = match ModelCache::open(&sha, &self.base).await {
            Ok(c) => c,
            Err(e) => {
                self.progress.warn(MANIFEST_FILE, &format!("the browser cache is unavailable ({e}); loading without caching"));
                return Ok(());
            }
        };
        let mut complete = self.is_complete(&c).await;
        if !complete {
            self.claim_download(&c.name).await?;
            // The load this one waited for may have stored every file.
            complete = self.is_complete(&c).await;
        }
        if complete {
            self.download_lock.borrow_mut().take();
            self.complete_cached.set(true);
            *self.cache.borrow_mut() = Some(c);
            return Ok(());
        }
        // A first download the site's storage has no room for is not cached (saying so), rather
        // than failing to store a shard halfway. (A partly stored copy resumes unchecked: its
        // shards already count in the usage.)
        if c.meta().await.is_none() {
            let free = await_promise(js::storage_free()).await.ok().and_then(|v| v.as_f64());
            let need = self.meta(manifest, false).bytes;
            if let Some(free) = free.filter(|f| *f < need as f64) {
                self.download_lock.borrow_mut().take();
                // Opening it made an empty cache: leave nothing behind.
                let _ = cache::delete(&c.name).await;
                self.progress.warn(
                    MANIFEST_FILE,
                    &format!(
                        "the browser's storage has {} free for this site and the model needs {}; loading without caching (free some space, or ask for persistent storage with navigator.storage.persist())",
                        human_bytes(free),
                        human_bytes(need as f64)
                    ),
                );
                return Ok(());
            }
        }
        let stored = async {
            c.put(manifest_url, text.as_bytes()).await?;
            c.write_meta(&self.meta(manifest, false)).await
        };
        match stored.await {
            Ok(()) => *self.cache.borrow_mut() = Some(c),
            Err(e) => self.progress.warn(MANIFEST_FILE, &format!("the browser cache refused the model ({e}); loading without caching")),
        }
        Ok(())
    }

    /// Whether cache `c` holds a complete copy of this model.
    async fn is_complete(&self, c: &ModelCache) -> bool {
        c.meta().await.is_some_and(|m| m.complete && m.url == self.base)
    }

    /// A Web Lock for this load: waiting ones end with the load's signal.
    async fn lock(&self, name: &str, exclusive: bool, if_available: bool) -> Result<Lock> {
        cache::lock(name, exclusive, if_available, self.opts.signal.as_ref()).await.map_err(|_| Error::Aborted("loading the model"))
    }

    /// Hold the cached version `name` (shared) for this load, so that no cleanup deletes it.
    async fn hold_version(&self, name: &str) -> Result<()> {
        if let Lock::Held(lock) = self.lock(name, false, false).await? {
            *self.version_lock.borrow_mut() = Some(lock);
        }
        Ok(())
    }

    /// Take the download lock of the cached version `name`, first waiting (phase 'waiting')
    /// for another tab or load downloading the same version to finish.
    async fn claim_download(&self, name: &str) -> Result<()> {
        let name = cache::download_lock_name(name);
        let got = match self.lock(&name, true, true).await? {
            Lock::Busy => {
                self.progress.report(
                    "waiting",
                    "",
                    Some("another tab or load is downloading this model; waiting for it to finish, then reading its files from the browser cache"),
                );
                self.lock(&name, true, false).await?
            }
            got => got,
        };
        if let Lock::Held(lock) = got {
            *self.download_lock.borrow_mut() = Some(lock);
        }
        Ok(())
    }

    /// A file of a cached copy marked complete is missing or damaged: mark the copy incomplete
    /// (this load marks it complete again once it has stored the file anew).
    async fn note_missing(&self, manifest: &Manifest) {
        if !self.complete_cached.replace(false) {
            return;
        }
        if let Some(c) = self.cache() {
            if let Err(e) = c.write_meta(&self.meta(manifest, false)).await {
                self.progress.warn("", &format!("could not mark the cached model incomplete ({e})"));
            }
        }
    }

    fn cache(&self) -> Option<ModelCache> {
        self.cache.borrow().clone()
    }

    /// Mark the cached copy complete and drop older versions of the same model, except those
    /// in use (a load or a loaded model holds them, in this page or another): a later cleanup
    /// deletes them.
    async fn finish_cache(&self, manifest: &Manifest) {
        let Some(c) = self.cache() else { return };
        if let Err(e) = c.write_meta(&self.meta(manifest, true)).await {
            self.progress.warn("", &format!("could not mark the cached model complete ({e})"));
        }
        release_freed();
        if let Ok(all) = cache::list().await {
            for (other, m) in all {
                if other != c.name && m.is_some_and(|m| m.url == self.base) {
                    match cache::lock(&other, true, true, None).await {
                        Ok(Lock::Held(lock)) => {
                            let _ = cache::delete(&other).await;
                            drop(lock);
                        }
                        Ok(Lock::Unsupported) => {
                            let _ = cache::delete(&other).await;
                        }
                        Ok(Lock::Busy) | Err(_) => {}
                    }
                }
            }
        }
    }

    async fn tokenizer(&self, manifest: &Manifest) -> Result<Tokenizer> {
        let file = manifest
            .tokenizer
            .as_deref()
            .ok_or_else(|| Error::Format("this model has no tokenizer.json (convert it with `gemma convert` from a directory that has one)".into()))?;
        let url = format!("{}{file}", self.base);
        let bos = manifest.config.bos_token_id;
        let cached = self.cache_get(&url).await;
        if let Some(bytes) = cached {
            match Tokenizer::from_json(&bytes, bos) {
                Ok(t) => {
                    t.check_fits(manifest.config.vocab_size)?;
                    return Ok(t);
                }
                Err(_) => {
                    self.progress.warn(file, &format!("the cached {file} was damaged; downloading it again"));
                    self.cache_delete(&url).await;
                }
            }
        }
        self.note_missing(manifest).await;
        self.progress.report("download", file, None);
        let bytes = self.fetch_bytes(&url, None, file, false).await?;
        let tokenizer = Tokenizer::from_json(&bytes, bos)?;
        tokenizer.check_fits(manifest.config.vocab_size)?;
        self.cache_put(&url, file, &bytes).await;
        Ok(tokenizer)
    }

    async fn cache_get(&self, url: &str) -> Option<Vec<u8>> {
        if let Some(bytes) = self.memory.borrow_mut().remove(url) {
            return Some(bytes);
        }
        self.cache()?.get(url).await
    }

    async fn cache_delete(&self, url: &str) {
        if let Some(c) = self.cache() {
            c.delete(url).await;
        }
    }

    async fn cache_put(&self, url: &str, file: &str, bytes: &[u8]) {
        let Some(c) = self.cache() else { return };
        if let Err(e) = c.put(url, bytes).await {
            // Most likely the storage quota: keep loading, without caching.
            if self.cache.borrow_mut().take().is_some() {
                self.progress.warn(file, &format!("could not store {file} in the browser cache ({e}); continuing without caching"));
            }
        }
    }

    /// Shard `i`: from the cache when its stored copy checks out, else from the network.
    async fn shard(&self, manifest: &Manifest, i: usize) -> Result<Vec<u8>> {
        let entry = &manifest.shards[i];
        let url = format!("{}{}", self.base, entry.file);
        if let Some(bytes) = self.cache_get(&url).await {
            if verify_shard(manifest, i, &bytes).is_ok() {
                self.progress.add(bytes.len() as u64, "cache", &entry.file);
                self.progress.report("cache", &entry.file, None);
                return Ok(bytes);
            }
            self.progress.warn(&entry.file, &format!("the cached copy of {} was corrupt; downloading it again", entry.file));
            self.cache_delete(&url).await;
        }
        self.note_missing(manifest).await;
        let mut attempt = 0;
        let bytes = loop {
            self.check_abort()?;
            let bytes = self.fetch_bytes(&url, Some(entry.size), &entry.file, true).await?;
            match verify_shard(manifest, i, &bytes) {
                Ok(()) => break bytes,
                Err(_) if attempt == 0 => {
                    attempt += 1;
                    self.progress.take_back(bytes.len() as u64);
                    self.progress.warn(&entry.file, &format!("{} failed its size/SHA-256 check; fetching it again", entry.file));
                }
                Err(e) => {
                    return Err(Error::Corrupt(format!("{e}; it failed twice, so the copy on the server is probably damaged or the manifest is out of date")))
                }
            }
        };
        self.cache_put(&url, &entry.file, &bytes).await;
        Ok(bytes)
    }

    fn fetch_fn(&self) -> Result<Function> {
        match &self.opts.fetch {
            Some(f) => Ok(f.clone()),
            None => js::get(&js::global(), "fetch")
                .dyn_into::<Function>()
                .map_err(|_| Error::Download { url: self.base.clone(), detail: "this environment has no fetch()".into() }),
        }
    }

    /// GET `url`, retrying network failures twice (1 s, then 3 s later); an HTTP error status
    /// is not retried.
    async fn fetch_response(&self, url: &str) -> Result<Response> {
        self.fetch_response_with(url, None).await
    }

    /// `fetch_response` with request headers.
    async fn fetch_response_with(&self, url: &str, headers: Option<&Object>) -> Result<Response> {
        let init = Object::new();
        if let Some(s) = &self.opts.signal {
            js::set(&init, "signal", s.clone());
        }
        if let Some(h) = headers {
            js::set(&init, "headers", h.clone());
        }
        let fetch = self.fetch_fn()?;
        let mut delays = [1000u32, 3000].into_iter();
        loop {
            self.check_abort()?;
            let outcome = match fetch.call2(&JsValue::NULL, &url.into(), &init) {
                Ok(p) => await_promise(p.unchecked_into()).await,
                Err(e) => Err(e),
            };
            let failure = match outcome {
                Ok(r) => match r.dyn_into::<Response>() {
                    Ok(r) if r.ok() => return Ok(r),
                    Ok(r) => return Err(Error::Download { url: url.into(), detail: format!("the server answered HTTP {} {}", r.status(), r.status_text()) }),
                    Err(v) => return Err(Error::Download { url: url.into(), detail: format!("fetch gave {} instead of a Response", describe(&v)) }),
                },
                Err(e) if is_abort(&e) => return Err(Error::Aborted("loading the model")),
                Err(e) => describe(&e),
            };
            match delays.next() {
                Some(ms) => {
                    self.progress.warn("", &format!("downloading {url} failed ({failure}); retrying"));
                    let _ = await_promise(js::sleep(ms)).await;
                }
                None => return Err(Error::Download { url: url.into(), detail: format!("{failure} (tried 3 times)") }),
            }
        }
    }

    async fn fetch_text(&self, url: &str) -> Result<String> {
        let bytes = self.fetch_bytes(url, None, MANIFEST_FILE, false).await?;
        let text = String::from_utf8(bytes).map_err(|_| Error::Format(format!("{url} is not UTF-8 text")))?;
        if text.trim_start().starts_with('<') {
            return Err(Error::Format(format!(
                "{url} is a web page, not a model's manifest.json: the server answered with HTML (a wrong model URL, or a server that serves its index page for every path)"
            )));
        }
        Ok(text)
    }

    /// The body of `url`, streamed chunk by chunk (progress counts the chunks when `counted`).
    async fn fetch_bytes(&self, url: &str, size: Option<u64>, file: &str, counted: bool) -> Result<Vec<u8>> {
        let response = self.fetch_response(url).await?;
        // A shard's body may not run past its stated size; a file of unstated size (the
        // manifest, the tokenizer) not past what any real one takes.
        self.read_body(response, url, size, Some(size.unwrap_or(MAX_SMALL_FILE)), file, counted).await
    }

    /// A response's body, streamed chunk by chunk; more than `limit` bytes is an error (a body
    /// that does not end where it should).
    async fn read_body(&self, response: Response, url: &str, size: Option<u64>, limit: Option<u64>, file: &str, counted: bool) -> Result<Vec<u8>> {
        // Grown as the body arrives; reserved up front only up to a bound a browser can always
        // give (a stated size is a claim until the bytes come).
        let mut out = Vec::with_capacity(size.unwrap_or(0).min(limit.unwrap_or(u64::MAX)).min(64 << 20) as usize);
        let fail = |e: JsValue| {
            if is_abort(&e) {
                Error::Aborted("loading the model")
            } else {
                Error::Download { url: url.into(), detail: format!("the download broke off: {}", describe(&e)) }
            }
        };
        let reader = response.body().map(|b| b.get_reader().unchecked_into::<ReadableStreamDefaultReader>());
        match reader {
            Some(reader) => loop {
                let chunk = await_promise(reader.read()).await.map_err(fail)?;
                if js::get(&chunk, "done").as_bool().unwrap_or(true) {
                    break;
                }
                let value = Uint8Array::new(&js::get(&chunk, "value"));
                if limit.is_some_and(|l| out.len() as u64 + value.length() as u64 > l) {
                    let _ = reader.cancel();
                    return Err(Error::Download { url: url.into(), detail: format!("the server sent more than the {} bytes asked for", limit.unwrap_or(0)) });
                }
                let start = out.len();
                out.resize(start + value.length() as usize, 0);
                value.copy_to(&mut out[start..]);
                if counted {
                    self.progress.add(value.length() as u64, "download", file);
                }
                if let Some(s) = &self.opts.signal {
                    if s.aborted() {
                        let _ = reader.cancel();
                        return Err(Error::Aborted("loading the model"));
                    }
                }
            },
            None => {
                let buffer = await_promise(response.array_buffer().map_err(fail)?).await.map_err(fail)?;
                out = Uint8Array::new(&buffer).to_vec();
                if counted {
                    self.progress.add(out.len() as u64, "download", file);
                }
            }
        }
        Ok(out)
    }
}

/// The shards of the model being loaded, for `model::load`: from the cache or the network,
/// verified, with progress and abort between them.
struct Shards<'a, 'l> {
    loader: &'a Loader<'l>,
    manifest: &'a Manifest,
}

impl ShardSource for Shards<'_, '_> {
    async fn shard(&self, index: usize) -> Result<Vec<u8>> {
        let bytes = self.loader.shard(self.manifest, index).await?;
        self.loader.check_abort()?;
        Ok(bytes)
    }

    fn concurrency(&self) -> usize {
        self.loader.opts.concurrency
    }

    fn progress(&self, phase: LoadPhase) {
        match phase {
            LoadPhase::Upload(i) => self.loader.progress.report("upload", self.manifest.shards.get(i).map_or("", |s| s.file.as_str()), None),
            LoadPhase::Compile => {
                // Every file is stored: a load waiting for this one's download may go on.
                self.loader.download_lock.borrow_mut().take();
                self.loader.progress.report("compile", "", None)
            }
        }
    }
}

/// The manifest of the GGUF conversion prepared in `c`, if it is whole.
async fn prepared(c: &ModelCache, source_url: &str, manifest_url: &str) -> Option<String> {
    c.get(source_url).await?;
    c.get(manifest_url).await.and_then(|b| String::from_utf8(b).ok())
}

/// The manifest stored with a completely cached copy of the model at `base` (for offline use):
/// the newest such copy (caches are listed oldest first; an older version may still be kept,
/// in use by another tab) whose manifest reads.
async fn offline_manifest(base: &str, manifest_url: &str) -> Option<String> {
    for (name, meta) in cache::list().await.ok()?.into_iter().rev() {
        if meta.is_some_and(|m| m.url == base && m.complete) {
            let Ok(c) = ModelCache::open(name.trim_start_matches(cache::PREFIX), base).await else { continue };
            if let Some(text) = c.get(manifest_url).await.and_then(|b| String::from_utf8(b).ok()) {
                return Some(text);
            }
        }
    }
    None
}

/// Loading a GGUF by URL: its header by HTTP Range requests, then its tensors in bounded
/// ranges, each converted (`convert::stream`, every tensor keeping its GGUF type) into our
/// format's shards, which go to the browser cache as they fill; the model then loads from
/// there like any other, and a reload of the same file (same URL, size and first 64 KiB)
/// finds it prepared and requests no weights.
impl Loader<'_> {
    /// The prepared model's manifest text, preparing it first unless the cache holds it.
    async fn prepare_gguf(&self, src: &str, manifest_url: &str) -> Result<String> {
        let file = src.rsplit('/').next().unwrap_or(src).split(['?', '#']).next().unwrap_or("model.gguf").to_string();
        self.progress.report("manifest", &file, None);
        let (head, size) = self.fetch_range(src, 0, GGUF_HEAD_BYTES, &file, false).await?;
        let identity = format!("{src}\n{size}\n{}", format::sha256_hex(&head));
        let source_url = format!("{}{SOURCE_FILE}", self.base);
        if self.opts.cache {
            let sha = format::sha256_hex(identity.as_bytes());
            self.hold_version(&cache::cache_name(&sha)).await?;
            match ModelCache::open(&sha, &self.base).await {
                Ok(c) => {
                    if let Some(text) = prepared(&c, &source_url, manifest_url).await {
                        *self.cache.borrow_mut() = Some(c);
                        return Ok(text);
                    }
                    self.claim_download(&c.name).await?;
                    // The load this one waited for may have prepared it.
                    if let Some(text) = prepared(&c, &source_url, manifest_url).await {
                        self.download_lock.borrow_mut().take();
                        *self.cache.borrow_mut() = Some(c);
                        return Ok(text);
                    }
                    let meta = Meta { url: self.base.clone(), bytes: 0, files: 0, complete: false };
                    match c.write_meta(&meta).await {
                        Ok(()) => *self.cache.borrow_mut() = Some(c),
                        Err(e) => self.progress.warn(&file, &format!("the browser cache refused the model ({e}); loading without caching")),
                    }
                }
                Err(e) => self.progress.warn(&file, &format!("the browser cache is unavailable ({e}); loading without caching")),
            }
        }
        // The header, in growing prefixes: its vocabulary alone can be megabytes.
        let mut prefix = head;
        let g = loop {
            if let Some(g) = Gguf::from_prefix(&prefix, size, &file)? {
                break g;
            }
            let want = (prefix.len() as u64).saturating_mul(4).min(size).min(MAX_GGUF_HEADER);
            if want <= prefix.len() as u64 {
                return Err(Error::Format(format!("{file}: the GGUF header is larger than {} MiB; this is not a model file we read", MAX_GGUF_HEADER >> 20)));
            }
            let (more, _) = self.fetch_range(src, prefix.len() as u64, want - prefix.len() as u64, &file, false).await?;
            prefix.extend_from_slice(&more);
        };
        drop(prefix);
        // Everything that can be refused is refused here, before the weights are downloaded.
        let mut stream = GgufStream::new(&g, DEFAULT_SHARD_BYTES)?;
        self.opts.engine.resolve(stream.config())?;
        self.progress.total.set(2 * stream.total_bytes);
        self.store(&format!("{}tokenizer.json", self.base), "tokenizer.json", stream.tokenizer_json().as_bytes().to_vec()).await;
        let ranges = Ranges { loader: self, url: src, file: &file, largest: Cell::new(0) };
        self.progress.report("download", &file, None);
        while let Some(done) = stream.step(&ranges).await? {
            self.check_abort()?;
            for (i, bytes) in done {
                self.store_shard(i, bytes).await;
            }
        }
        let largest = ranges.largest.get();
        let (manifest, rest) = stream.finish()?;
        for (i, bytes) in rest {
            self.store_shard(i, bytes).await;
        }
        let text = manifest.to_json();
        self.store(manifest_url, MANIFEST_FILE, text.clone().into_bytes()).await;
        let source = serde_json::json!({ "url": src, "size": size, "largest_range": largest }).to_string();
        self.store(&source_url, SOURCE_FILE, source.into_bytes()).await;
        self.progress.report("prepared", &file, Some(&format!("converted {file}; the largest range held at once was {largest} bytes")));
        Ok(text)
    }

    async fn store_shard(&self, i: usize, bytes: Vec<u8>) {
        let file = format!("model-{i:05}.bin");
        self.store(&format!("{}{file}", self.base), &file, bytes).await;
    }

    /// Keep a prepared file: in the cache, or in memory when there is none (or it is full).
    async fn store(&self, url: &str, file: &str, bytes: Vec<u8>) {
        if let (Some(c), false) = (self.cache(), self.cache_full.get()) {
            match c.put(url, &bytes).await {
                Ok(()) => return,
                Err(e) => {
                    self.cache_full.set(true);
                    self.progress.warn(file, &format!("could not store {file} in the browser cache ({e}); keeping the rest of the prepared model in memory"));
                }
            }
        }
        self.memory.borrow_mut().insert(url.to_string(), bytes);
    }

    /// Bytes `begin..begin + len` of `url` (fewer at the end of the file) and the file's size,
    /// by an HTTP Range request.
    async fn fetch_range(&self, url: &str, begin: u64, len: u64, file: &str, counted: bool) -> Result<(Vec<u8>, u64)> {
        let headers = Object::new();
        js::set(&headers, "Range", format!("bytes={begin}-{}", begin + len.max(1) - 1));
        let response = self.fetch_response_with(url, Some(&headers)).await?;
        if response.status() != 206 {
            if let Some(body) = response.body() {
                let _ = body.cancel();
            }
            return Err(Error::Download {
                url: url.into(),
                detail: format!(
                    "the server answered a Range request with HTTP {} instead of 206 Partial Content: it does not serve byte ranges, which loading a GGUF by URL needs (most static servers and CDNs do); serve it from one that does, or convert it with `gemma convert` and load the result",
                    response.status()
                ),
            });
        }
        let range = response.headers().get("content-range").ok().flatten().unwrap_or_default();
        let total = range.rsplit('/').next().and_then(|t| t.trim().parse::<u64>().ok()).ok_or_else(|| Error::Download {
            url: url.into(),
            detail: format!(
                "the Range answer has no readable Content-Range header (got '{range}'); a cross-origin server must list it in Access-Control-Expose-Headers"
            ),
        })?;
        let want = len.min(total.saturating_sub(begin));
        let bytes = self.read_body(response, url, Some(want), Some(want), file, counted).await?;
        if (bytes.len() as u64) < want {
            return Err(Error::Download {
                url: url.into(),
                detail: format!(
                    "bytes {begin}..{} of the {total}-byte file came back {} bytes short; the download broke off or the file is truncated",
                    begin + want,
                    want - bytes.len() as u64
                ),
            });
        }
        Ok((bytes, total))
    }
}

/// The GGUF's tensor data by range, for `GgufStream`, noting the largest range held.
struct Ranges<'a, 'l> {
    loader: &'a Loader<'l>,
    url: &'a str,
    file: &'a str,
    largest: Cell<u64>,
}

impl RangeSource for Ranges<'_, '_> {
    async fn range(&self, begin: u64, len: u64) -> Result<Vec<u8>> {
        self.loader.check_abort()?;
        self.largest.set(self.largest.get().max(len));
        let (bytes, total) = self.loader.fetch_range(self.url, begin, len, self.file, true).await?;
        if bytes.len() as u64 != len {
            return Err(Error::Download {
                url: self.url.into(),
                detail: format!("the file is {total} bytes, which ends inside tensor data at byte {begin}: it is truncated"),
            });
        }
        Ok(bytes)
    }
}
