//! Shards persisted in the browser's Cache API. One cache per model version, named
//! `gemma-webgpu/<first 16 hex digits of the manifest's SHA-256>`, so an upgraded model never
//! mixes with stale shards; inside it, entries are keyed by each file's absolute URL, plus a
//! small metadata entry (model URL, bytes, whether every shard is stored) for listing.
//!
//! Tabs (and loads in one page) coordinate through Web Locks named after a version's cache:
//! every load of a version, and every model loaded from it for as long as it lives, holds the
//! lock `<cache name>` shared, and a cleanup deletes an old version only if it can take that
//! lock exclusively at once; a load that has files to fetch holds `<cache name>/download`
//! exclusively, so a second load of the same version waits for the first one's download and
//! then reads the files from the cache. Without Web Locks (old browsers, some workers) each load
//! goes its own way, as if alone.

use js_sys::{Array, Function, Object, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen::JsValue;
use web_sys::{AbortSignal, Cache, CacheStorage, Response};

use super::js::{self, await_promise, describe};

pub(crate) const PREFIX: &str = "gemma-webgpu/";
/// File name of the metadata entry, next to the manifest.
const META: &str = "gemma-webgpu-cache.json";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Meta {
    pub url: String,
    pub bytes: u64,
    pub files: u32,
    pub complete: bool,
}

fn storage() -> Result<CacheStorage, String> {
    let caches = js::get(&js::global(), "caches");
    caches.dyn_into::<CacheStorage>().map_err(|_| "this page has no Cache API (it needs a secure context: https or localhost)".to_string())
}

#[derive(Clone)]
pub(crate) struct ModelCache {
    cache: Cache,
    pub name: String,
    base: String,
}

/// The cache of the model version whose manifest (or, for a GGUF, whose identity) has the
/// SHA-256 `manifest_sha` (hex).
pub(crate) fn cache_name(manifest_sha: &str) -> String {
    format!("{PREFIX}{}", manifest_sha.get(..16).unwrap_or(manifest_sha))
}

impl ModelCache {
    pub(crate) async fn open(manifest_sha: &str, base: &str) -> Result<Self, String> {
        let name = cache_name(manifest_sha);
        let opened = await_promise(storage()?.open(&name)).await.map_err(|e| describe(&e))?;
        let cache = opened.dyn_into::<Cache>().map_err(|e| describe(&e))?;
        Ok(Self { cache, name, base: base.to_string() })
    }

    /// The stored bytes for `url`, if any.
    pub(crate) async fn get(&self, url: &str) -> Option<Vec<u8>> {
        let found = await_promise(self.cache.match_with_str(url)).await.ok()?;
        let response = found.dyn_into::<Response>().ok()?;
        let buffer = await_promise(response.array_buffer().ok()?).await.ok()?;
        Some(Uint8Array::new(&buffer).to_vec())
    }

    /// Store `bytes` under `url`; the error text says why not (e.g. the quota).
    pub(crate) async fn put(&self, url: &str, bytes: &[u8]) -> Result<(), String> {
        // The Response copies the bytes, so the view into wasm memory may be short-lived.
        let view = unsafe { Uint8Array::view(bytes) };
        let response = Response::new_with_opt_buffer_source(Some(&view)).map_err(|e| describe(&e))?;
        await_promise(self.cache.put_with_str(url, &response)).await.map(|_| ()).map_err(|e| describe(&e))
    }

    pub(crate) async fn delete(&self, url: &str) {
        let _ = await_promise(self.cache.delete_with_str(url)).await;
    }

    pub(crate) async fn write_meta(&self, meta: &Meta) -> Result<(), String> {
        let json = serde_json::to_string(meta).map_err(|e| e.to_string())?;
        self.put(&format!("{}{META}", self.base), json.as_bytes()).await
    }

    /// The stored metadata entry, if any (and readable).
    pub(crate) async fn meta(&self) -> Option<Meta> {
        serde_json::from_slice(&self.get(&format!("{}{META}", self.base)).await?).ok()
    }
}

/// A Web Lock this page holds (`navigator.locks`); released when dropped.
pub(crate) struct HeldLock(Function);

impl Drop for HeldLock {
    fn drop(&mut self) {
        let _ = self.0.call0(&JsValue::NULL);
    }
}

/// What a lock request got.
pub(crate) enum Lock {
    Held(HeldLock),
    /// Asked only if available, and another holder (this page or another) has it.
    Busy,
    /// This context has no Web Locks: go without.
    Unsupported,
}

/// Request the Web Lock `name`, exclusive or shared. With `if_available` it answers at once
/// (`Busy` when another holder has it); else it waits, and `signal` aborts the wait (`Err`, the
/// only error: an abort).
pub(crate) async fn lock(name: &str, exclusive: bool, if_available: bool, signal: Option<&AbortSignal>) -> Result<Lock, JsValue> {
    let signal: JsValue = signal.map_or(JsValue::UNDEFINED, |s| s.clone().into());
    let got = await_promise(js::request_lock(name, exclusive, if_available, &signal)).await?;
    if got.is_null() {
        return Ok(Lock::Busy);
    }
    Ok(got.dyn_into::<Function>().map_or(Lock::Unsupported, |f| Lock::Held(HeldLock(f))))
}

/// The lock a version's downloads take exclusively (its users hold the cache's own name).
pub(crate) fn download_lock_name(cache_name: &str) -> String {
    format!("{cache_name}/download")
}

async fn read_meta(cache: &Cache) -> Option<Meta> {
    let keys = await_promise(cache.keys()).await.ok()?;
    for request in Array::from(&keys).iter() {
        let url = js::get(&request, "url").as_string().unwrap_or_default();
        if url.ends_with(META) {
            let found = await_promise(cache.match_with_str(&url)).await.ok()?;
            let text = await_promise(found.dyn_into::<Response>().ok()?.text().ok()?).await.ok()?;
            return serde_json::from_str(&text.as_string()?).ok();
        }
    }
    None
}

/// Every cached model: `(cache name, metadata)`.
pub(crate) async fn list() -> Result<Vec<(String, Option<Meta>)>, String> {
    let storage = storage()?;
    let names = await_promise(storage.keys()).await.map_err(|e| describe(&e))?;
    let mut out = Vec::new();
    for name in Array::from(&names).iter().filter_map(|n| n.as_string()) {
        if !name.starts_with(PREFIX) {
            continue;
        }
        let meta = match await_promise(storage.open(&name)).await.ok().and_then(|c| c.dyn_into::<Cache>().ok()) {
            Some(cache) => read_meta(&cache).await,
            None => None,
        };
        out.push((name, meta));
    }
    Ok(out)
}

pub(crate) async fn delete(name: &str) -> Result<bool, String> {
    if !name.starts_with(PREFIX) {
        return Ok(false);
    }
    let deleted = await_promise(storage()?.delete(name)).await.map_err(|e| describe(&e))?;
    Ok(deleted.as_bool().unwrap_or(false))
}

/// A listing entry for JS: `{ key, url, bytes, files, complete }`.
pub(crate) fn entry(name: &str, meta: &Option<Meta>) -> Object {
    let o = Object::new();
    js::set(&o, "key", name);
    match meta {
        Some(m) => {
            js::set(&o, "url", m.url.as_str());
            js::set(&o, "bytes", m.bytes as f64);
            js::set(&o, "files", m.files);
            js::set(&o, "complete", m.complete);
        }
        None => {
            js::set(&o, "url", JsValue::NULL);
            js::set(&o, "bytes", 0.0);
            js::set(&o, "files", 0);
            js::set(&o, "complete", false);
        }
    }
    o
}
