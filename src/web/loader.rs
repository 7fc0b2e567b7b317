//! Loading a converted model by URL: the manifest, then the tokenizer and the shards with
//! bounded parallelism, each streamed from the network (or read from the browser cache),
//! checked against its size and SHA-256 and uploaded to the GPU before the next one is
//! fetched by that worker. A shard that fails its check is fetched once more, then the load
//! fails naming it; network errors are retried twice with a pause.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use js_sys::{Function, Object, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{AbortSignal, ReadableStreamDefaultReader, Response};

use super::cache::{self, Meta, ModelCache};
use super::js::{self, await_promise, describe, is_abort};
use crate::error::{Error, Result};
use crate::format::{self, Manifest, MANIFEST_FILE};
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
}

/// Load the model at `url` (a directory URL holding `manifest.json`).
pub(crate) async fn load(url: &str, opts: &LoadOptions) -> Result<Session> {
    let base = if url.ends_with('/') { url.to_string() } else { format!("{url}/") };
    let base = absolute(&base);
    let l = Loader {
        opts,
        base,
        progress: Progress { callback: opts.on_progress.clone(), total: Cell::new(0), loaded: Cell::new(0), reported: Cell::new(0) },
        cache: RefCell::new(None),
    };
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
        self.progress.report("manifest", MANIFEST_FILE, None);
        let manifest_url = format!("{}{MANIFEST_FILE}", self.base);
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
        let manifest = Manifest::from_json(&text)?;
        let total: u64 = manifest.shards.iter().map(|s| s.size).sum();
        self.progress.total.set(total);
        if self.opts.cache {
            match ModelCache::open(&format::sha256_hex(text.as_bytes()), &self.base).await {
                Ok(c) => {
                    let meta = Meta { url: self.base.clone(), bytes: total, files: manifest.shards.len() as u32, complete: false };
                    let stored = async {
                        c.put(&manifest_url, text.as_bytes()).await?;
                        c.write_meta(&meta).await
                    };
                    match stored.await {
                        Ok(()) => *self.cache.borrow_mut() = Some(c),
                        Err(e) => self.progress.warn(MANIFEST_FILE, &format!("the browser cache refused the model ({e}); loading without caching")),
                    }
                }
                Err(e) => self.progress.warn(MANIFEST_FILE, &format!("the browser cache is unavailable ({e}); loading without caching")),
            }
        }

        // Bad options fail before anything is downloaded.
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

        let tokenizer = self.tokenizer(&manifest).await?;
        let engine = load::load(ctx, &manifest, &Shards { loader: self, manifest: &manifest }, self.opts.engine).await?;
        self.check_abort()?;
        self.finish_cache(total, manifest.shards.len() as u32).await;
        self.progress.report("ready", "", None);
        Ok(Session::new(engine, Some(Rc::new(tokenizer))))
    }

    fn cache(&self) -> Option<ModelCache> {
        self.cache.borrow().clone()
    }

    /// Mark the cached copy complete and drop older versions of the same model.
    async fn finish_cache(&self, bytes: u64, files: u32) {
        let Some(c) = self.cache() else { return };
        let meta = Meta { url: self.base.clone(), bytes, files, complete: true };
        if let Err(e) = c.write_meta(&meta).await {
            self.progress.warn("", &format!("could not mark the cached model complete ({e})"));
        }
        if let Ok(all) = cache::list().await {
            for (other, m) in all {
                if other != c.name && m.is_some_and(|m| m.url == self.base) {
                    let _ = cache::delete(&other).await;
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
                Ok(t) => return Ok(t),
                Err(_) => {
                    self.progress.warn(file, &format!("the cached {file} was damaged; downloading it again"));
                    self.cache_delete(&url).await;
                }
            }
        }
        self.progress.report("download", file, None);
        let bytes = self.fetch_bytes(&url, None, file, false).await?;
        let tokenizer = Tokenizer::from_json(&bytes, bos)?;
        self.cache_put(&url, file, &bytes).await;
        Ok(tokenizer)
    }

    async fn cache_get(&self, url: &str) -> Option<Vec<u8>> {
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
        let init = Object::new();
        if let Some(s) = &self.opts.signal {
            js::set(&init, "signal", s.clone());
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
        String::from_utf8(bytes).map_err(|_| Error::Format(format!("{url} is not UTF-8 text")))
    }

    /// The body of `url`, streamed chunk by chunk (progress counts the chunks when `counted`).
    async fn fetch_bytes(&self, url: &str, size: Option<u64>, file: &str, counted: bool) -> Result<Vec<u8>> {
        let response = self.fetch_response(url).await?;
        let mut out = Vec::with_capacity(size.unwrap_or(0) as usize);
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
            LoadPhase::Compile => self.loader.progress.report("compile", "", None),
        }
    }
}

/// The manifest stored with a completely cached copy of the model at `base` (for offline use).
async fn offline_manifest(base: &str, manifest_url: &str) -> Option<String> {
    for (name, meta) in cache::list().await.ok()? {
        if meta.is_some_and(|m| m.url == base && m.complete) {
            let c = ModelCache::open(name.trim_start_matches(cache::PREFIX), base).await.ok()?;
            let bytes = c.get(manifest_url).await?;
            return String::from_utf8(bytes).ok();
        }
    }
    None
}
