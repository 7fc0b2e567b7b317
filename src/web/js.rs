//! Small helpers for talking to JavaScript: reading option objects with type checks, awaiting
//! promises, describing thrown values, and the inline JS helpers (the async iterator behind
//! `gemma.stream`, a pause, and Web Locks).

use js_sys::{Function, Object, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::error::{Error, Result};

#[wasm_bindgen(inline_js = r#"
// An async iterator over the text pieces of one generation. It starts on the first next(),
// forwards the caller's signal, and aborts the generation if the loop is left early.
export function makeStream(model, prompt, options) {
  const opts = options || {};
  const queue = [];
  const controller = new AbortController();
  const user = opts.signal;
  const onUserAbort = () => controller.abort(user.reason);
  let wake = null, started = false, finished = false, closed = false, failure = null;
  const notify = () => { if (wake) { const w = wake; wake = null; w(); } };
  const start = () => {
    started = true;
    if (user) {
      if (user.aborted) controller.abort(user.reason);
      else user.addEventListener('abort', onUserAbort, { once: true });
    }
    model.generate(prompt, {
      ...opts,
      signal: controller.signal,
      onToken: (text) => { queue.push(text); if (opts.onToken) opts.onToken(text); notify(); },
    }).then(() => { finished = true; notify(); }, (e) => { failure = e; finished = true; notify(); })
      .finally(() => { if (user) user.removeEventListener('abort', onUserAbort); });
  };
  return {
    [Symbol.asyncIterator]() { return this; },
    async next() {
      if (!started) start();
      for (;;) {
        if (closed) return { value: undefined, done: true };
        if (queue.length) return { value: queue.shift(), done: false };
        if (failure) { const e = failure; failure = null; closed = true; throw e; }
        if (finished) { closed = true; return { value: undefined, done: true }; }
        await new Promise((resolve) => { wake = resolve; });
      }
    },
    async return(value) {
      closed = true;
      if (started && !finished) controller.abort();
      return { value, done: true };
    },
  };
}

// Bytes this origin may still store (navigator.storage.estimate: quota - usage), or undefined
// where the browser does not say.
export async function storageFree() {
  const storage = globalThis.navigator && globalThis.navigator.storage;
  if (!storage || typeof storage.estimate !== 'function') return undefined;
  try {
    const { quota, usage } = await storage.estimate();
    return typeof quota === 'number' && typeof usage === 'number' ? Math.max(0, quota - usage) : undefined;
  } catch (e) {
    return undefined;
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Request the Web Lock `name` (exclusive or shared) and hold it until the function this resolves
// to is called. With `ifAvailable`, resolves to null at once when another holder has it; else it
// waits, and `signal` (when given) aborts the wait: the only rejection. Resolves to undefined
// where there are no Web Locks (an old browser, a worker without them, an opaque origin): the
// caller goes without.
export function requestLock(name, exclusive, ifAvailable, signal) {
  const locks = globalThis.navigator && globalThis.navigator.locks;
  if (!locks || typeof locks.request !== 'function') return Promise.resolve(undefined);
  return new Promise((resolve, reject) => {
    const options = { mode: exclusive ? 'exclusive' : 'shared' };
    if (ifAvailable) options.ifAvailable = true;
    else if (signal) options.signal = signal;
    let release;
    const held = new Promise((r) => { release = r; });
    const granted = (lock) => {
      if (!lock) { resolve(null); return undefined; }
      resolve(() => release());
      return held;
    };
    const refused = (e) => {
      if ((e && e.name === 'AbortError') || (signal && signal.aborted)) reject(e);
      else resolve(undefined);
    };
    try {
      locks.request(name, options, granted).catch(refused);
    } catch (e) {
      refused(e);
    }
  });
}
"#)]
extern "C" {
    #[wasm_bindgen(js_name = makeStream)]
    pub(crate) fn make_stream(model: JsValue, prompt: &str, options: &JsValue) -> JsValue;
    pub(crate) fn sleep(ms: u32) -> Promise;
    #[wasm_bindgen(js_name = storageFree)]
    pub(crate) fn storage_free() -> Promise;
    #[wasm_bindgen(js_name = requestLock)]
    pub(crate) fn request_lock(name: &str, exclusive: bool, if_available: bool, signal: &JsValue) -> Promise;
}

/// `obj[key]`, or undefined.
pub(crate) fn get(obj: &JsValue, key: &str) -> JsValue {
    if !obj.is_object() && !obj.is_function() {
        return JsValue::UNDEFINED;
    }
    Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

pub(crate) fn set(obj: &Object, key: &str, value: impl Into<JsValue>) {
    let _ = Reflect::set(obj, &JsValue::from_str(key), &value.into());
}

fn present(v: &JsValue) -> bool {
    !v.is_undefined() && !v.is_null()
}

/// Option readers: absent (undefined or null) is `None`; the wrong type is an error naming the
/// option.
pub(crate) fn opt_f64(opts: &JsValue, key: &'static str) -> Result<Option<f64>> {
    let v = get(opts, key);
    if !present(&v) {
        return Ok(None);
    }
    match v.as_f64() {
        Some(x) if x.is_finite() => Ok(Some(x)),
        _ => Err(Error::invalid(key, format!("must be a finite number, got {}", describe(&v)))),
    }
}

pub(crate) fn opt_u32(opts: &JsValue, key: &'static str) -> Result<Option<u32>> {
    match opt_f64(opts, key)? {
        None => Ok(None),
        Some(x) if x >= 0.0 && x <= u32::MAX as f64 && x.fract() == 0.0 => Ok(Some(x as u32)),
        Some(x) => Err(Error::invalid(key, format!("must be a whole number from 0 to {}, got {x}", u32::MAX))),
    }
}

pub(crate) fn opt_bool(opts: &JsValue, key: &'static str) -> Result<Option<bool>> {
    let v = get(opts, key);
    if !present(&v) {
        return Ok(None);
    }
    v.as_bool().map(Some).ok_or_else(|| Error::invalid(key, format!("must be true or false, got {}", describe(&v))))
}

pub(crate) fn opt_function(opts: &JsValue, key: &'static str) -> Result<Option<Function>> {
    let v = get(opts, key);
    if !present(&v) {
        return Ok(None);
    }
    v.dyn_into::<Function>().map(Some).map_err(|v| Error::invalid(key, format!("must be a function, got {}", describe(&v))))
}

pub(crate) fn opt_signal(opts: &JsValue) -> Result<Option<web_sys::AbortSignal>> {
    let v = get(opts, "signal");
    if !present(&v) {
        return Ok(None);
    }
    v.dyn_into::<web_sys::AbortSignal>().map(Some).map_err(|v| Error::invalid("signal", format!("must be an AbortSignal, got {}", describe(&v))))
}

pub(crate) fn opt_strings(opts: &JsValue, key: &'static str) -> Result<Vec<String>> {
    let v = get(opts, key);
    if !present(&v) {
        return Ok(Vec::new());
    }
    if let Some(s) = v.as_string() {
        return Ok(vec![s]);
    }
    if !js_sys::Array::is_array(&v) {
        return Err(Error::invalid(key, format!("must be a string or an array of strings, got {}", describe(&v))));
    }
    js_sys::Array::from(&v)
        .iter()
        .map(|s| s.as_string().ok_or_else(|| Error::invalid(key, format!("must contain only strings, got {}", describe(&s)))))
        .collect()
}

/// Token ids from a `Uint32Array` or an array of numbers.
pub(crate) fn ids(v: &JsValue) -> Result<Vec<u32>> {
    if let Some(a) = v.dyn_ref::<js_sys::Uint32Array>() {
        return Ok(a.to_vec());
    }
    if !js_sys::Array::is_array(v) && !v.is_instance_of::<js_sys::Int32Array>() {
        return Err(Error::invalid("ids", format!("must be a Uint32Array or an array of token ids, got {}", describe(v))));
    }
    js_sys::Array::from(v)
        .iter()
        .map(|x| match x.as_f64() {
            Some(f) if f >= 0.0 && f <= u32::MAX as f64 && f.fract() == 0.0 => Ok(f as u32),
            _ => Err(Error::invalid("ids", format!("{} is not a token id", describe(&x)))),
        })
        .collect()
}

/// A readable description of a thrown value: `name: message` for errors.
pub(crate) fn describe(v: &JsValue) -> String {
    if let Some(e) = v.dyn_ref::<js_sys::Error>() {
        return format!("{}: {}", String::from(e.name()), String::from(e.message()));
    }
    if let Some(s) = v.as_string() {
        return format!("'{s}'");
    }
    if let Some(s) = js_sys::JSON::stringify(v).ok().and_then(|s| s.as_string()) {
        return s;
    }
    format!("{v:?}")
}

/// Whether a thrown value is an `AbortError` (a `DOMException` from `fetch`, or ours).
pub(crate) fn is_abort(v: &JsValue) -> bool {
    get(v, "name").as_string().as_deref() == Some("AbortError")
}

pub(crate) async fn await_promise(p: Promise) -> std::result::Result<JsValue, JsValue> {
    JsFuture::from(p).await
}

/// The global object (window or a worker's global scope).
pub(crate) fn global() -> JsValue {
    js_sys::global().into()
}
