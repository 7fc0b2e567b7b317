//! The JavaScript API (`Gemma` as JS sees it: every call goes through the JS object's methods)
//! in headless Chromium's WebGPU, on the tiny HF fixture converted in memory with a
//! Gemma-shaped 512-token tokenizer (tools/make_tiny_tokenizer.py). The model is served by a
//! `fetch` replacement that counts requests and can corrupt or drop files.
#![cfg(target_arch = "wasm32")]

mod support;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use gemma_webgpu::convert::{convert_in_memory, safetensors::Checkpoint};
use gemma_webgpu::quant::DType;
use gemma_webgpu::web::Gemma;
use js_sys::{Array, Function, Object, Promise, Reflect, Uint32Array, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const CONFIG: &str = include_str!("fixtures/tiny-f32/config.json");
const WEIGHTS: &[u8] = include_bytes!("fixtures/tiny-f32/model.safetensors");
const REFERENCE: &[u8] = include_bytes!("fixtures/tiny-f32/reference.safetensors");
const TOKENIZER: &[u8] = include_bytes!("fixtures/tiny-tokenizer.json");

/// An in-memory model server.
#[derive(Default)]
struct Server {
    files: HashMap<String, Vec<u8>>,
    requests: Vec<String>,
    /// file → how many more times to serve it with a flipped byte.
    corrupt: HashMap<String, u32>,
    /// file → how many more requests for it fail as a network failure would (a rejected
    /// promise, no response).
    fail: HashMap<String, u32>,
}

impl Server {
    fn count(&self, prefix: &str) -> usize {
        self.requests.iter().filter(|r| r.starts_with(prefix)).count()
    }
}

struct Model {
    url: String,
    server: Rc<RefCell<Server>>,
    fetch: Function,
    shards: Vec<String>,
}

/// Convert the fixture (f32 or int4 weights) into several small shards served under `url`.
fn model(url: &str, quant: DType) -> Model {
    let mut ck = Checkpoint::default();
    ck.add_bytes("model.safetensors", WEIGHTS.to_vec()).expect("fixture");
    let shard_bytes = if quant == DType::Int4 { 12 << 10 } else { 96 << 10 };
    let (mut manifest, shards) = convert_in_memory(CONFIG, &ck, quant, shard_bytes).expect("convert");
    manifest.tokenizer = Some("tokenizer.json".into());
    let mut server = Server::default();
    server.files.insert("manifest.json".into(), manifest.to_json().into_bytes());
    server.files.insert("tokenizer.json".into(), TOKENIZER.to_vec());
    for (entry, bytes) in manifest.shards.iter().zip(shards) {
        server.files.insert(entry.file.clone(), bytes);
    }
    assert!(manifest.shards.len() >= 3, "the test wants several shards");
    let server = Rc::new(RefCell::new(server));
    let base = url.to_string();
    let s = server.clone();
    let fetch = Closure::<dyn FnMut(String, JsValue) -> Promise>::new(move |u: String, _init: JsValue| {
        let file = u.strip_prefix(&base).unwrap_or(&u).to_string();
        let mut s = s.borrow_mut();
        s.requests.push(file.clone());
        if let Some(n) = s.fail.get_mut(&file).filter(|n| **n > 0) {
            *n -= 1;
            return Promise::reject(&js_sys::TypeError::new("Failed to fetch").into());
        }
        let init = web_sys::ResponseInit::new();
        let body = match s.files.get(&file).cloned() {
            Some(mut b) => {
                if let Some(n) = s.corrupt.get_mut(&file).filter(|n| **n > 0) {
                    *n -= 1;
                    let mid = b.len() / 2;
                    b[mid] ^= 0x5a;
                }
                Some(b)
            }
            None => None,
        };
        let response = match body {
            Some(b) => web_sys::Response::new_with_opt_buffer_source_and_init(Some(&Uint8Array::from(b.as_slice())), &init),
            None => {
                init.set_status(404);
                init.set_status_text("Not Found");
                web_sys::Response::new_with_opt_str_and_init(Some("not found"), &init)
            }
        };
        match response {
            Ok(r) => Promise::resolve(&JsValue::from(r)),
            Err(e) => Promise::reject(&e),
        }
    })
    .into_js_value()
    .unchecked_into::<Function>();
    let shards = server.borrow().files.keys().filter(|f| f.starts_with("model-")).cloned().collect();
    Model { url: url.into(), server, fetch, shards }
}

fn obj(pairs: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    for (k, v) in pairs {
        Reflect::set(&o, &(*k).into(), v).expect("set");
    }
    o.into()
}

fn get(o: &JsValue, k: &str) -> JsValue {
    Reflect::get(o, &k.into()).expect("get")
}

/// Call `o.method(...args)` the way JavaScript would.
fn call(o: &JsValue, method: &str, args: &[JsValue]) -> Result<JsValue, JsValue> {
    let f: Function = get(o, method).dyn_into().expect("method");
    f.apply(o, &args.iter().collect::<Array>())
}

async fn call_async(o: &JsValue, method: &str, args: &[JsValue]) -> Result<JsValue, JsValue> {
    let p: Promise = call(o, method, args)?.dyn_into().expect("promise");
    JsFuture::from(p).await
}

fn err_name(e: &JsValue) -> String {
    get(e, "name").as_string().unwrap_or_default()
}

fn err_message(e: &JsValue) -> String {
    get(e, "message").as_string().unwrap_or_default()
}

/// The (phase, message) pairs an `onProgress` callback received.
type Events = Rc<RefCell<Vec<(String, String)>>>;

/// An `onProgress` callback and what it receives.
fn recorder() -> (JsValue, Events) {
    let events: Events = Rc::default();
    let ev = events.clone();
    let f = Closure::<dyn FnMut(JsValue)>::new(move |p: JsValue| {
        ev.borrow_mut().push((get(&p, "phase").as_string().unwrap_or_default(), get(&p, "message").as_string().unwrap_or_default()));
    })
    .into_js_value();
    (f, events)
}

/// The messages of the 'warning' events.
fn warnings(events: &Events) -> Vec<String> {
    events.borrow().iter().filter(|e| e.0 == "warning").map(|e| e.1.clone()).collect()
}

async fn load(m: &Model, extra: &[(&str, JsValue)]) -> Result<JsValue, JsValue> {
    let mut opts = vec![("fetch", m.fetch.clone().into()), ("cache", false.into())];
    opts.extend(extra.iter().cloned());
    JsFuture::from(Gemma::load(m.url.clone(), Some(obj(&opts)))).await
}

async fn generate(g: &JsValue, prompt: &str, opts: &[(&str, JsValue)]) -> Result<String, JsValue> {
    Ok(call_async(g, "generate", &[prompt.into(), obj(opts)]).await?.as_string().expect("string"))
}

fn sampled(seed: u32, max_tokens: u32) -> Vec<(&'static str, JsValue)> {
    vec![("temperature", 1.0.into()), ("topK", 0.into()), ("topP", 1.0.into()), ("seed", seed.into()), ("maxTokens", max_tokens.into())]
}

fn stats(g: &JsValue) -> JsValue {
    call(g, "stats", &[]).expect("stats")
}

fn num(o: &JsValue, k: &str) -> f64 {
    get(o, k).as_f64().unwrap_or_else(|| panic!("{k} is not a number"))
}

#[wasm_bindgen_test]
async fn api_loads_with_progress_and_matches_hugging_face() {
    let m = model("https://models.test/tiny-f32/", DType::F32);
    let events: Rc<RefCell<Vec<(String, f64, f64)>>> = Rc::default();
    let ev = events.clone();
    let on_progress = Closure::<dyn FnMut(JsValue)>::new(move |p: JsValue| {
        ev.borrow_mut().push((get(&p, "phase").as_string().unwrap_or_default(), num(&p, "loadedBytes"), num(&p, "totalBytes")));
    })
    .into_js_value();
    let g = load(&m, &[("onProgress", on_progress), ("kvF32", true.into()), ("maxContext", 64.into())]).await.expect("load");
    let events = events.borrow().clone();
    let phases: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    for phase in ["manifest", "download", "upload", "compile", "ready"] {
        assert!(phases.contains(&phase), "no '{phase}' progress event in {phases:?}");
    }
    let last = events.last().expect("events");
    assert_eq!(last.0, "ready");
    assert!(last.1 == last.2 && last.2 > 0.0, "ready at {} of {} bytes", last.1, last.2);
    assert!(events.windows(2).all(|w| w[0].1 <= w[1].1), "loadedBytes went backwards");
    {
        let s = m.server.borrow();
        for shard in &m.shards {
            assert_eq!(s.count(shard), 1, "{shard} requested {} times", s.count(shard));
        }
    }

    // Logits for every position through the JS API, against Hugging Face.
    let reference = support::Reference::from_bytes(REFERENCE);
    let (ids, want) = (reference.ids("input_ids"), reference.f32("logits"));
    let got = call_async(&g, "logits", &[js_sys::Uint32Array::from(ids.as_slice()).into()]).await.expect("logits");
    let got = got.dyn_into::<js_sys::Float32Array>().expect("Float32Array").to_vec();
    assert_eq!(got.len(), want.len());
    let err = support::max_abs_diff(&got, &want);
    console_log!("JS API logits(): max |logit - HF| {err:.2e} over {} positions", ids.len());
    // Measured 1.23e-4 in Chromium on SwiftShader (2026-12-01); bounded as tests/reference.rs.
    assert!(err <= 4.5e-4, "logits differ from HF by {err}");

    // Tokenizer: BOS first, byte fallback for characters outside the vocabulary.
    let ids = call(&g, "tokenize", &["Hello world, é!".into()]).expect("tokenize").dyn_into::<js_sys::Uint32Array>().expect("Uint32Array").to_vec();
    assert_eq!(ids[0], 2, "BOS first: {ids:?}");
    assert!(ids.len() > 5);
    let text = call(&g, "detokenize", &[js_sys::Uint32Array::from(ids.as_slice()).into()]).expect("detokenize");
    assert_eq!(text.as_string().as_deref(), Some("Hello world, é!"));
    let bad = call(&g, "detokenize", &["nope".into()]).expect_err("a string is not ids");
    assert_eq!(err_name(&bad), "InvalidArgumentError");
}

#[wasm_bindgen_test]
async fn generate_is_seeded_streams_whole_text_and_honours_stop_strings() {
    let m = model("https://models.test/gen/", DType::F32);
    let g = load(&m, &[]).await.expect("load");
    let a = generate(&g, "Hello", &sampled(7, 24)).await.expect("generate");
    let b = generate(&g, "Hello", &sampled(7, 24)).await.expect("generate");
    let c = generate(&g, "Hello", &sampled(8, 24)).await.expect("generate");
    console_log!("seed 7: {a:?}\nseed 8: {c:?}");
    assert_eq!(a, b, "same seed, same text");
    assert_ne!(a, c, "another seed, other text");
    assert!(a.chars().count() >= 8, "too short to test with: {a:?}");
    let s = stats(&g);
    assert_eq!(get(&s, "finishReason").as_string().as_deref(), Some("length"));
    assert_eq!(num(&s, "decodeTokens"), 24.0);
    assert!(num(&s, "decodeTokensPerSecond") > 0.0 && num(&s, "prefillTokensPerSecond") > 0.0);

    // onToken pieces add up to the result.
    let pieces: Rc<RefCell<Vec<String>>> = Rc::default();
    let p = pieces.clone();
    let on_token = Closure::<dyn FnMut(String)>::new(move |t: String| p.borrow_mut().push(t)).into_js_value();
    let mut opts = sampled(7, 24);
    opts.push(("onToken", on_token));
    let d = generate(&g, "Hello", &opts).await.expect("generate");
    assert_eq!(d, a);
    assert_eq!(pieces.borrow().concat(), a);
    assert!(pieces.borrow().len() > 1);

    // stream(): an async iterator of the same pieces.
    let it = call(&g, "stream", &["Hello".into(), obj(&sampled(7, 24))]).expect("stream");
    let mut streamed = Vec::new();
    loop {
        let r = call_async(&it, "next", &[]).await.expect("next");
        if get(&r, "done").as_bool() == Some(true) {
            break;
        }
        streamed.push(get(&r, "value").as_string().expect("text"));
    }
    assert_eq!(streamed.concat(), a);

    // A stop string: the text ends right before its first occurrence.
    let chars: Vec<char> = a.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = a.find(&stop).expect("stop occurs");
    let mut opts = sampled(7, 24);
    opts.push(("stop", Array::of2(&"never-there".into(), &stop.clone().into()).into()));
    let e = generate(&g, "Hello", &opts).await.expect("generate");
    assert_eq!(e, a[..cut], "stop {stop:?}");
    assert_eq!(get(&stats(&g), "finishReason").as_string().as_deref(), Some("stop"));

    // Leaving a stream early stops the generation; the model stays usable.
    let it = call(&g, "stream", &["Hello".into(), obj(&sampled(7, 200))]).expect("stream");
    call_async(&it, "next", &[]).await.expect("next");
    call_async(&it, "return", &[]).await.expect("return");
    assert_eq!(generate(&g, "Hello", &sampled(7, 24)).await.expect("generate"), a);
}

#[wasm_bindgen_test]
async fn abort_queueing_and_chat_cache_reuse() {
    let m = model("https://models.test/chat/", DType::F32);
    let g = load(&m, &[]).await.expect("load");
    let reference = generate(&g, "Why is the sky blue?", &sampled(3, 16)).await.expect("generate");

    // Abort after a few pieces: AbortError, and the engine is still usable.
    let controller = web_sys::AbortController::new().expect("controller");
    let signal = controller.signal();
    let count = Rc::new(RefCell::new(0));
    let c = count.clone();
    let on_token = Closure::<dyn FnMut(String)>::new(move |_t: String| {
        *c.borrow_mut() += 1;
        if *c.borrow() == 3 {
            controller.abort();
        }
    })
    .into_js_value();
    let mut opts = sampled(3, 200);
    opts.extend([("onToken", on_token), ("signal", signal.into())]);
    let e = generate(&g, "Why is the sky blue?", &opts).await.expect_err("aborted");
    assert_eq!(err_name(&e), "AbortError", "{}", err_message(&e));
    assert_eq!(*count.borrow(), 3, "no text after the abort");
    assert_eq!(get(&stats(&g), "finishReason").as_string().as_deref(), Some("abort"));
    assert_eq!(generate(&g, "Why is the sky blue?", &sampled(3, 16)).await.expect("after abort"), reference);

    // Two calls at once run one after the other: the same text as alone, never interleaved.
    let order: Rc<RefCell<Vec<char>>> = Rc::default();
    let tagged = |tag: char| {
        let o = order.clone();
        let mut opts = sampled(3, 16);
        opts.push(("onToken", Closure::<dyn FnMut(String)>::new(move |_t: String| o.borrow_mut().push(tag)).into_js_value()));
        call(&g, "generate", &["Why is the sky blue?".into(), obj(&opts)]).expect("generate").dyn_into::<Promise>().expect("promise")
    };
    let (p1, p2) = (tagged('a'), tagged('b'));
    let (r1, r2) = (JsFuture::from(p1).await.expect("first"), JsFuture::from(p2).await.expect("second"));
    assert_eq!((r1.as_string().expect("s"), r2.as_string().expect("s")), (reference.clone(), reference.clone()));
    let order = order.borrow().clone();
    let first_b = order.iter().position(|c| *c == 'b').expect("b ran");
    assert!(order[first_b..].iter().all(|c| *c == 'b'), "interleaved: {order:?}");

    // Chat: the second turn extends the first, so its prefix comes from the cache, and the
    // reply equals a fresh prefill's.
    let greedy = || vec![("temperature", JsValue::from(0.0)), ("maxTokens", 10.into())];
    let msg = |role: &str, content: &str| obj(&[("role", role.into()), ("content", content.into())]);
    let turn1 = Array::of2(&msg("system", "Answer briefly."), &msg("user", "What is the capital of France?"));
    call(&g, "reset", &[]).expect("reset");
    let r1 = call_async(&g, "chat", &[turn1.clone().into(), obj(&greedy())]).await.expect("chat 1").as_string().expect("s");
    let turn2 = turn1.concat(&Array::of2(&msg("assistant", &r1), &msg("user", "Why?")));
    let r2 = call_async(&g, "chat", &[turn2.clone().into(), obj(&greedy())]).await.expect("chat 2").as_string().expect("s");
    let s = stats(&g);
    let (prompt, reused, prefilled) = (num(&s, "promptTokens"), num(&s, "reusedTokens"), num(&s, "prefillTokens"));
    console_log!("chat turn 2: {prompt} prompt tokens, {reused} reused from the cache, {prefilled} prefilled");
    assert!(reused > 10.0 && prefilled < prompt && reused + prefilled == prompt, "{reused} + {prefilled} vs {prompt}");
    call(&g, "reset", &[]).expect("reset");
    let fresh = call_async(&g, "chat", &[turn2.into(), obj(&greedy())]).await.expect("fresh").as_string().expect("s");
    assert_eq!(num(&stats(&g), "reusedTokens"), 0.0, "reset empties the cache");
    assert_eq!(fresh, r2, "a reused cache gives the same reply as a fresh prefill");

    let bad = call_async(&g, "chat", &[Array::of1(&msg("model", "hi")).into(), obj(&[])]).await.expect_err("bad role");
    assert_eq!(err_name(&bad), "InvalidArgumentError");
    assert!(err_message(&bad).contains("role"), "{}", err_message(&bad));
}

#[wasm_bindgen_test]
async fn errors_are_named_and_leave_the_engine_usable() {
    let m = model("https://models.test/errors/", DType::Int4);
    let g = load(&m, &[("maxContext", 32.into())]).await.expect("load");
    let long = "the ".repeat(40);
    let e = generate(&g, &long, &sampled(1, 4)).await.expect_err("overflow");
    assert_eq!(err_name(&e), "ContextOverflowError", "{}", err_message(&e));
    assert!(err_message(&e).contains("32-token context"), "{}", err_message(&e));
    generate(&g, "Hello", &sampled(1, 4)).await.expect("usable after a context overflow");
    assert_eq!(num(&stats(&g), "decodeTokens"), 4.0, "the call after the overflow generated");
    let e = generate(&g, "Hello", &[("temperature", "hot".into())]).await.expect_err("bad option");
    assert_eq!(err_name(&e), "InvalidArgumentError");
    assert!(err_message(&e).contains("temperature"), "{}", err_message(&e));
    let e = generate(&g, "Hello", &[("topP", 2.0.into())]).await.expect_err("bad top-p");
    assert_eq!(err_name(&e), "InvalidArgumentError", "{}", err_message(&e));
    call(&g, "dispose", &[]).expect("dispose");
    let e = generate(&g, "Hello", &[]).await.expect_err("disposed");
    assert_eq!(err_name(&e), "DisposedError");

    // A zero prefill chunk is refused before anything is downloaded.
    let e = load(&m, &[("prefillChunk", 0.into())]).await.expect_err("prefillChunk 0");
    assert_eq!(err_name(&e), "InvalidArgumentError", "{}", err_message(&e));
    assert!(err_message(&e).contains("prefillChunk"), "{}", err_message(&e));

    // A missing model: DownloadError naming the URL.
    let missing = Model { url: "https://models.test/nothing-here/".into(), ..model("https://models.test/nothing-here-x/", DType::Int4) };
    let e = load(&missing, &[]).await.expect_err("404");
    assert_eq!(err_name(&e), "DownloadError", "{}", err_message(&e));
    assert!(err_message(&e).contains("manifest.json") && err_message(&e).contains("404"), "{}", err_message(&e));

    // A shard corrupt once is fetched again; corrupt every time, the load fails naming it.
    let shard = m.shards[1].clone();
    m.server.borrow_mut().requests.clear();
    m.server.borrow_mut().corrupt.insert(shard.clone(), 1);
    load(&m, &[]).await.expect("recovers from one bad download");
    assert_eq!(m.server.borrow().count(&shard), 2);
    m.server.borrow_mut().corrupt.insert(shard.clone(), 2);
    let e = load(&m, &[]).await.expect_err("corrupt twice");
    assert_eq!(err_name(&e), "ShardCorruptError", "{}", err_message(&e));
    assert!(err_message(&e).contains(&shard), "{}", err_message(&e));

    // A device whose bindings are smaller than the model's largest weight part.
    let e = load(&m, &[("maxStorageBinding", 1024.into())]).await.expect_err("limits");
    assert_eq!(err_name(&e), "AdapterLimitsError", "{}", err_message(&e));
    assert!(err_message(&e).contains("maxStorageBufferBindingSize") && err_message(&e).contains("allows 1024"), "{}", err_message(&e));

    // Aborting a load.
    let controller = web_sys::AbortController::new().expect("controller");
    controller.abort();
    let e = load(&m, &[("signal", controller.signal().into())]).await.expect_err("aborted");
    assert_eq!(err_name(&e), "AbortError");
}

async fn clear_cache() {
    let list = JsFuture::from(Gemma::list_cached_models()).await.expect("list");
    for entry in Array::from(&list).iter() {
        JsFuture::from(Gemma::delete_cached_model(get(&entry, "key").as_string().expect("key"))).await.expect("delete");
    }
}

#[wasm_bindgen_test]
async fn shards_persist_in_the_browser_cache() {
    clear_cache().await;
    let m = model("https://models.test/cached/", DType::Int4);
    let cached = [("cache", JsValue::TRUE)];
    let g = load(&m, &cached).await.expect("first load");
    let first = generate(&g, "Hello", &sampled(5, 8)).await.expect("generate");
    call(&g, "dispose", &[]).expect("dispose");
    for shard in &m.shards {
        assert_eq!(m.server.borrow().count(shard), 1);
    }
    let list = JsFuture::from(Gemma::list_cached_models()).await.expect("list");
    let entries: Vec<JsValue> = Array::from(&list).iter().collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(get(&entries[0], "url").as_string().as_deref(), Some(m.url.as_str()));
    assert_eq!(get(&entries[0], "complete").as_bool(), Some(true));
    assert_eq!(num(&entries[0], "files") as usize, m.shards.len());

    // Again, offline (the server has lost the manifest): the complete cached copy is used,
    // every shard comes from the cache ('cache' progress events), none from the network.
    m.server.borrow_mut().requests.clear();
    let manifest = m.server.borrow_mut().files.remove("manifest.json").expect("manifest");
    let (on_progress, events) = recorder();
    let g = load(&m, &[("cache", JsValue::TRUE), ("onProgress", on_progress)]).await.expect("offline load");
    m.server.borrow_mut().files.insert("manifest.json".into(), manifest);
    assert_eq!(m.server.borrow().count("model-"), 0, "shard requests: {:?}", m.server.borrow().requests);
    assert_eq!(m.server.borrow().count("manifest.json"), 1, "{:?}", m.server.borrow().requests);
    let cache_events = events.borrow().iter().filter(|e| e.0 == "cache").count();
    assert!(cache_events >= m.shards.len(), "{cache_events} 'cache' events for {} shards", m.shards.len());
    let warned = warnings(&events);
    assert!(warned.iter().any(|w| w.contains("404") && w.contains("using the copy in the browser cache")), "{warned:?}");
    assert_eq!(generate(&g, "Hello", &sampled(5, 8)).await.expect("generate"), first);
    call(&g, "dispose", &[]).expect("dispose");

    // A damaged cached shard is detected and fetched again (only that one).
    let key = get(&entries[0], "key").as_string().expect("key");
    let caches: web_sys::CacheStorage = get(&js_sys::global(), "caches").dyn_into().expect("caches");
    let cache: web_sys::Cache = JsFuture::from(caches.open(&key)).await.expect("open").dyn_into().expect("cache");
    let victim = format!("{}{}", m.url, m.shards[0]);
    let garbage = web_sys::Response::new_with_opt_str(Some("garbage")).expect("response");
    JsFuture::from(cache.put_with_str(&victim, &garbage)).await.expect("put");
    m.server.borrow_mut().requests.clear();
    let g = load(&m, &cached).await.expect("third load");
    assert_eq!(m.server.borrow().count("model-"), 1, "{:?}", m.server.borrow().requests);
    assert_eq!(generate(&g, "Hello", &sampled(5, 8)).await.expect("generate"), first);
    call(&g, "dispose", &[]).expect("dispose");

    // An interrupted download resumes: the shards stored before the failure are not fetched
    // again. (One shard at a time, the last one missing on the server.)
    clear_cache().await;
    let mut sorted = m.shards.clone();
    sorted.sort();
    let last = sorted.last().expect("shards").clone();
    let saved = m.server.borrow_mut().files.remove(&last).expect("last shard");
    m.server.borrow_mut().requests.clear();
    let one = [("cache", JsValue::TRUE), ("concurrency", 1.into())];
    let e = load(&m, &one).await.expect_err("a shard is missing");
    assert_eq!(err_name(&e), "DownloadError", "{}", err_message(&e));
    assert!(err_message(&e).contains(&last) && err_message(&e).contains("404"), "{}", err_message(&e));
    m.server.borrow_mut().files.insert(last.clone(), saved);
    m.server.borrow_mut().requests.clear();
    let g = load(&m, &one).await.expect("resumed load");
    call(&g, "dispose", &[]).expect("dispose");
    let requested: Vec<String> = m.server.borrow().requests.iter().filter(|r| r.starts_with("model-")).cloned().collect();
    assert_eq!(requested, vec![last.clone()], "only the shard that was missing is downloaded");

    // An upgraded model (another manifest) replaces the stale copy.
    let m2 = model("https://models.test/cached/", DType::F32);
    load(&m2, &cached).await.expect("upgraded load");
    let list = JsFuture::from(Gemma::list_cached_models()).await.expect("list");
    let entries: Vec<JsValue> = Array::from(&list).iter().collect();
    assert_eq!(entries.len(), 1, "the old version is dropped once the new one is complete");
    assert_ne!(get(&entries[0], "key").as_string(), Some(key));

    clear_cache().await;
    let list = JsFuture::from(Gemma::list_cached_models()).await.expect("list");
    assert_eq!(Array::from(&list).length(), 0);
}

/// The README's load paths that the other tests do not take: network failures retried twice
/// (and a third failure ends the load), a storage quota error that turns caching off for the
/// load with a warning, and the errors a bad manifest or a browser without WebGPU give through
/// the JS API, each by name, before anything is downloaded.
#[wasm_bindgen_test]
async fn retries_quota_and_named_load_errors() {
    clear_cache().await;
    let m = model("https://models.test/retry/", DType::Int4);
    let shard = m.shards[0].clone();

    // One network failure of a shard and a cache whose every put fails with the quota error.
    m.server.borrow_mut().fail.insert(shard.clone(), 1);
    let proto = get(&get(&js_sys::global(), "Cache"), "prototype");
    let put = get(&proto, "put");
    let quota = Function::new_no_args("return Promise.reject(new DOMException('The quota has been exceeded.', 'QuotaExceededError'))");
    Reflect::set(&proto, &"put".into(), &quota).expect("replace Cache.put");
    let (on_progress, events) = recorder();
    let loaded = load(&m, &[("cache", JsValue::TRUE), ("onProgress", on_progress)]).await;
    Reflect::set(&proto, &"put".into(), &put).expect("restore Cache.put");
    let g = loaded.expect("the load survives a network failure and a full quota");
    assert_eq!(m.server.borrow().count(&shard), 2, "one failure, one retry: {:?}", m.server.borrow().requests);
    let warned = warnings(&events);
    assert!(warned.iter().any(|w| w.contains(&shard) && w.contains("Failed to fetch") && w.contains("retrying")), "{warned:?}");
    assert!(warned.iter().any(|w| w.contains("QuotaExceededError") && w.contains("without caching")), "{warned:?}");
    assert!(!generate(&g, "Hello", &sampled(5, 4)).await.expect("generate").is_empty());
    call(&g, "dispose", &[]).expect("dispose");
    let list = JsFuture::from(Gemma::list_cached_models()).await.expect("list");
    let complete = Array::from(&list).iter().filter(|e| get(e, "complete").as_bool() == Some(true)).count();
    assert_eq!(complete, 0, "caching was off for that load");

    // Three network failures in a row: DownloadError naming the file and the three tries.
    m.server.borrow_mut().fail.insert(shard.clone(), 3);
    let e = load(&m, &[]).await.expect_err("three failures");
    assert_eq!(err_name(&e), "DownloadError", "{}", err_message(&e));
    assert!(err_message(&e).contains(&shard) && err_message(&e).contains("tried 3 times"), "{}", err_message(&e));

    // Bad manifests: ModelFormatError (an HTML page, another format version) and
    // ModelConfigError (a config no Gemma has), before any shard is requested.
    let manifest = m.server.borrow().files["manifest.json"].clone();
    let text = String::from_utf8(manifest.clone()).expect("utf-8");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["format_version"] = 99.into();
    let other_version = v.to_string();
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["config"]["head_dim"] = 12.into();
    let bad_head_dim = v.to_string();
    for (body, name, needle) in [
        ("<!doctype html><title>Not here</title>".to_string(), "ModelFormatError", "is a web page"),
        (other_version, "ModelFormatError", "version 99"),
        (bad_head_dim, "ModelConfigError", "head_dim"),
    ] {
        m.server.borrow_mut().files.insert("manifest.json".into(), body.into_bytes());
        m.server.borrow_mut().requests.clear();
        let e = load(&m, &[]).await.expect_err(name);
        assert_eq!(err_name(&e), name, "{}", err_message(&e));
        assert!(err_message(&e).contains(needle), "{name}: {}", err_message(&e));
        assert_eq!(m.server.borrow().count("model-"), 0, "{:?}", m.server.borrow().requests);
    }
    m.server.borrow_mut().files.insert("manifest.json".into(), manifest);

    // A browser without WebGPU: NoWebGPUError before the manifest is fetched.
    let navigator = get(&js_sys::global(), "navigator");
    let hide = Function::new_with_args("n", "Object.defineProperty(n, 'gpu', { value: undefined, configurable: true })");
    hide.call1(&JsValue::NULL, &navigator).expect("hide navigator.gpu");
    m.server.borrow_mut().requests.clear();
    let e = load(&m, &[]).await;
    Function::new_with_args("n", "delete n.gpu").call1(&JsValue::NULL, &navigator).expect("restore navigator.gpu");
    assert!(get(&navigator, "gpu").is_object(), "navigator.gpu is back");
    let e = e.expect_err("no WebGPU");
    assert_eq!(err_name(&e), "NoWebGPUError", "{}", err_message(&e));
    assert!(err_message(&e).contains("navigator.gpu"), "{}", err_message(&e));
    assert!(m.server.borrow().requests.is_empty(), "{:?}", m.server.borrow().requests);
}

#[wasm_bindgen_test]
async fn an_abort_stops_a_long_prefill_within_a_chunk_and_empty_prompts_are_refused() {
    let m = model("https://models.test/prefill-abort/", DType::F32);
    let g = load(&m, &[("prefillChunk", 8.into())]).await.expect("load");
    let prompt = "Why is the sky blue? Because light scatters. ".repeat(3);
    let n = Uint32Array::from(call(&g, "tokenize", &[prompt.as_str().into()]).expect("tokenize")).length();
    assert!((90..=120).contains(&n), "{n} prompt tokens");
    let reference = generate(&g, &prompt, &sampled(5, 4)).await.expect("generate");
    call(&g, "reset", &[]).expect("reset");

    // Aborted from a timer as soon as the page runs: the prefill stops after the chunk that
    // was running then (before chunking, the whole prompt ran first).
    let controller = web_sys::AbortController::new().expect("controller");
    let signal = controller.signal();
    let abort = Closure::once_into_js(move || controller.abort());
    web_sys::window().expect("window").set_timeout_with_callback(abort.unchecked_ref()).expect("timer");
    let mut opts = sampled(5, 4);
    opts.push(("signal", signal.into()));
    let e = generate(&g, &prompt, &opts).await.expect_err("aborted");
    assert_eq!(err_name(&e), "AbortError", "{}", err_message(&e));
    let s = stats(&g);
    console_log!("aborted a {n}-token prefill with {} tokens in the cache", num(&s, "contextTokens"));
    assert!(num(&s, "contextTokens") <= 16.0, "at most the two chunks queued when the abort came: {}", num(&s, "contextTokens"));
    assert_eq!(get(&s, "finishReason").as_string().as_deref(), Some("abort"));
    // Usable, and the prefix that ran is reused.
    assert_eq!(generate(&g, &prompt, &sampled(5, 4)).await.expect("after abort"), reference);

    let e = generate(&g, "", &sampled(5, 4)).await.expect_err("empty");
    assert_eq!(err_name(&e), "InvalidArgumentError", "{}", err_message(&e));
    assert!(err_message(&e).contains("empty"), "{}", err_message(&e));
}

#[wasm_bindgen_test]
async fn dispose_with_a_call_in_flight_and_one_waiting_frees_the_model() {
    use gemma_webgpu::model::engine::Engine;
    let m = model("https://models.test/dispose-queued/", DType::F32);
    let before = Engine::live();
    let g = load(&m, &[]).await.expect("load");
    // This model's engine: the one that is new (others may only have been freed meanwhile).
    let ours: Vec<u64> = Engine::live().into_iter().filter(|e| !before.contains(e)).collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    // The first call disposes the model at its first token, while the second waits its turn.
    let gc = g.clone();
    let on_token = Closure::<dyn FnMut(String)>::new(move |_t: String| {
        call(&gc, "dispose", &[]).expect("dispose");
    })
    .into_js_value();
    let mut opts = sampled(1, 6);
    opts.push(("onToken", on_token));
    let first = call(&g, "generate", &["Hello".into(), obj(&opts)]).expect("generate").dyn_into::<Promise>().expect("promise");
    let second = call(&g, "generate", &["Hello".into(), obj(&sampled(1, 6))]).expect("generate").dyn_into::<Promise>().expect("promise");
    let text = JsFuture::from(first).await.expect("the call in flight finishes");
    assert!(!text.as_string().unwrap_or_default().is_empty());
    let e = JsFuture::from(second).await.expect_err("the waiting call");
    assert_eq!(err_name(&e), "DisposedError", "{}", err_message(&e));
    // Before, the waiting call left the session (and its GPU memory) behind.
    assert!(!Engine::live().contains(&ours[0]), "the model's engine is dropped");
    let e = generate(&g, "Hello", &[]).await.expect_err("disposed");
    assert_eq!(err_name(&e), "DisposedError");
}

#[wasm_bindgen_test]
async fn a_lost_device_rejects_by_name_and_the_model_loads_again_from_the_cache_offline() {
    use gemma_webgpu::model::engine::Engine;
    clear_cache().await;
    let m = model("https://models.test/device-lost/", DType::Int4);
    let cached = [("cache", JsValue::TRUE)];
    let before = Engine::live();
    let g = load(&m, &cached).await.expect("load");
    let ours: Vec<u64> = Engine::live().into_iter().filter(|e| !before.contains(e)).collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    let want = generate(&g, "Hello", &sampled(5, 8)).await.expect("generate");
    // The device is lost at the first token of a generation (as a GPU reset would lose it).
    let gc = g.clone();
    let on_token = Closure::<dyn FnMut(String)>::new(move |_t: String| {
        call(&gc, "__loseDevice", &[]).expect("lose the device");
    })
    .into_js_value();
    let mut opts = sampled(5, 8);
    opts.push(("onToken", on_token));
    let e = generate(&g, "Hello", &opts).await.expect_err("lost");
    console_log!("{}: {}", err_name(&e), err_message(&e));
    assert_eq!(err_name(&e), "DeviceLostError", "{}", err_message(&e));
    assert!(err_message(&e).contains("load the model again"), "{}", err_message(&e));
    assert!(!Engine::live().contains(&ours[0]), "the lost model's engine is dropped");
    let e = generate(&g, "Hello", &sampled(5, 8)).await.expect_err("still lost");
    assert_eq!(err_name(&e), "DeviceLostError", "{}", err_message(&e));

    // Loading again works with the server gone (every file a 404): from the cache.
    let files = std::mem::take(&mut m.server.borrow_mut().files);
    m.server.borrow_mut().requests.clear();
    let g = load(&m, &cached).await.expect("load again, offline");
    assert_eq!(m.server.borrow().count("model-"), 0, "{:?}", m.server.borrow().requests);
    assert_eq!(generate(&g, "Hello", &sampled(5, 8)).await.expect("generate"), want);
    m.server.borrow_mut().files = files;
    call(&g, "dispose", &[]).expect("dispose");
    clear_cache().await;
}

/// Make the browser's WebGPU report out-of-memory for buffers whose label starts with
/// `label` (`None`: stop), as a GPU without room for them would: the allocation's error scope
/// resolves to a `GPUOutOfMemoryError`. (No GPU here runs out on purpose; this is the same
/// report at the same place.)
fn simulate_oom(label: Option<&str>) {
    const PATCH: &str = r#"
      if (!globalThis.__oom) {
        const P = GPUDevice.prototype, push = P.pushErrorScope, pop = P.popErrorScope, create = P.createBuffer;
        const scopes = new WeakMap();
        globalThis.__oom = { label: null, hits: 0 };
        P.pushErrorScope = function (filter) {
          const s = scopes.get(this) || [];
          s.push({ filter, failed: false });
          scopes.set(this, s);
          return push.call(this, filter);
        };
        P.popErrorScope = function () {
          const top = (scopes.get(this) || []).pop();
          const real = pop.call(this);
          return top && top.failed ? real.then(() => new GPUOutOfMemoryError('out of memory (simulated)')) : real;
        };
        P.createBuffer = function (d) {
          const o = globalThis.__oom;
          if (o.label && d && typeof d.label === 'string' && d.label.startsWith(o.label)) {
            const s = scopes.get(this) || [];
            const oom = s.findLast((x) => x.filter === 'out-of-memory');
            if (oom) { oom.failed = true; o.hits++; }
          }
          return create.call(this, d);
        };
      }
    "#;
    Function::new_no_args(PATCH).call0(&JsValue::NULL).expect("patch");
    let state = get(&js_sys::global(), "__oom");
    Reflect::set(&state, &"label".into(), &label.map_or(JsValue::NULL, JsValue::from)).expect("set");
}

#[wasm_bindgen_test]
async fn out_of_gpu_memory_is_named_and_a_kv_cache_that_does_not_fit_is_refused_before_the_download() {
    let m = model("https://models.test/oom/", DType::Int4);
    // The KV cache is allocated before any shard is fetched.
    simulate_oom(Some("kv"));
    let e = load(&m, &[]).await.expect_err("no room for the KV cache");
    console_log!("{}: {}", err_name(&e), err_message(&e));
    assert_eq!(err_name(&e), "OutOfMemoryError", "{}", err_message(&e));
    assert!(err_message(&e).contains("KV cache") && err_message(&e).contains("maxContext"), "{}", err_message(&e));
    assert_eq!(m.server.borrow().count("model-"), 0, "nothing downloaded: {:?}", m.server.borrow().requests);
    // A weight that does not fit names its shard.
    simulate_oom(Some("model.layers.2."));
    let e = load(&m, &[]).await.expect_err("no room for a weight");
    console_log!("{}: {}", err_name(&e), err_message(&e));
    assert_eq!(err_name(&e), "OutOfMemoryError", "{}", err_message(&e));
    assert!(err_message(&e).contains("the weights of model-"), "{}", err_message(&e));
    // With room again, the same load works.
    simulate_oom(None);
    let g = load(&m, &[]).await.expect("load");
    generate(&g, "Hello", &sampled(5, 4)).await.expect("generate");
}

/// `gemma.chat.completions`'s `create` (the OpenAI-shaped chat completions).
async fn create(g: &JsValue, request: &JsValue) -> Result<JsValue, JsValue> {
    let completions = get(&get(g, "chat"), "completions");
    call_async(&completions, "create", std::slice::from_ref(request)).await
}

/// Every chunk of a streamed completion.
async fn chunks(iterable: &JsValue) -> Result<Vec<JsValue>, JsValue> {
    let mut out = Vec::new();
    loop {
        let step = call_async(iterable, "next", &[]).await?;
        if get(&step, "done").as_bool() == Some(true) {
            return Ok(out);
        }
        out.push(get(&step, "value"));
    }
}

fn json(v: &JsValue) -> String {
    js_sys::JSON::stringify(v).map(String::from).unwrap_or_default()
}

#[wasm_bindgen_test]
async fn openai_chat_completions_streamed_and_not_with_usage_logprobs_and_bias() {
    let m = model("https://models.test/openai/", DType::F32);
    let g = load(&m, &[]).await.expect("load");
    let messages = js_sys::JSON::parse(r#"[{"role":"system","content":"Be brief."},{"role":"user","content":"Why is the sky blue?"}]"#).expect("json");
    let request = |extra: &str| {
        js_sys::JSON::parse(&format!(r#"{{"model":"tiny","max_tokens":8,"seed":5{extra}}}"#)).inspect(|r| {
            Reflect::set(r, &"messages".into(), &messages).expect("set");
        })
    };
    // The same reply as `chat` with OpenAI's defaults (temperature 1, top_p 1, no top-k).
    let opts = [("temperature", 1.0.into()), ("topK", 0.into()), ("topP", 1.0.into()), ("seed", 5.into()), ("maxTokens", 8.into())];
    let text = call_async(&g, "chat", &[messages.clone(), obj(&opts)]).await.expect("chat").as_string().expect("text");
    call(&g, "reset", &[]).expect("reset");
    let c = create(&g, &request(r#","logprobs":true,"top_logprobs":3"#).expect("req")).await.expect("create");
    console_log!("completion: {}", json(&c));
    assert_eq!(get(&c, "object").as_string().as_deref(), Some("chat.completion"));
    let choice = Array::from(&get(&c, "choices")).get(0);
    assert_eq!(get(&get(&choice, "message"), "content").as_string().as_deref(), Some(text.as_str()));
    assert_eq!(get(&get(&choice, "message"), "role").as_string().as_deref(), Some("assistant"));
    let usage = get(&c, "usage");
    assert_eq!(num(&usage, "total_tokens"), num(&usage, "prompt_tokens") + num(&usage, "completion_tokens"));
    assert!(num(&get(&usage, "gemma_webgpu"), "decode_tokens_per_second") > 0.0);
    let finish = get(&choice, "finish_reason").as_string().expect("finish");
    assert_eq!(finish, if num(&usage, "completion_tokens") == 8.0 { "length" } else { "stop" });
    let content = Array::from(&get(&get(&choice, "logprobs"), "content"));
    assert_eq!(content.length() as f64, num(&usage, "completion_tokens"));
    let joined: String = content.iter().map(|t| get(&t, "token").as_string().unwrap_or_default()).collect();
    assert_eq!(joined.trim(), text.trim(), "the tokens spell the text");
    for t in content.iter() {
        let top = Array::from(&get(&t, "top_logprobs"));
        assert_eq!(top.length(), 3);
        assert!(num(&t, "logprob") <= 0.0 && num(&top.get(0), "logprob") >= num(&top.get(2), "logprob"));
    }

    // Streamed: role first, the same text in pieces, the finish reason on the last content
    // chunk, then the usage alone.
    call(&g, "reset", &[]).expect("reset");
    let it = create(&g, &request(r#","stream":true,"stream_options":{"include_usage":true}"#).expect("req")).await.expect("stream");
    let all = chunks(&it).await.expect("chunks");
    console_log!("{} chunks; first {}; last two {} {}", all.len(), json(&all[0]), json(&all[all.len() - 2]), json(&all[all.len() - 1]));
    let delta = |c: &JsValue| get(&Array::from(&get(c, "choices")).get(0), "delta");
    assert_eq!(get(&delta(&all[0]), "role").as_string().as_deref(), Some("assistant"));
    let streamed: String = all[..all.len() - 1].iter().filter_map(|c| get(&delta(c), "content").as_string()).collect();
    assert_eq!(streamed, text);
    let last_content = &all[all.len() - 2];
    assert_eq!(get(&Array::from(&get(last_content, "choices")).get(0), "finish_reason").as_string().as_deref(), Some(finish.as_str()));
    for c in &all[..all.len() - 2] {
        assert!(get(&Array::from(&get(c, "choices")).get(0), "finish_reason").is_null(), "{}", json(c));
    }
    let tail = &all[all.len() - 1];
    assert_eq!(Array::from(&get(tail, "choices")).length(), 0);
    assert_eq!(num(&get(tail, "usage"), "completion_tokens"), num(&usage, "completion_tokens"));

    // logit_bias +100 on a token makes it the reply; unsupported fields are named errors.
    let forced = Uint32Array::from(call(&g, "tokenize", &[" blue".into()]).expect("tokenize")).get_index(1);
    let c = create(&g, &request(&format!(r#","max_tokens":3,"logit_bias":{{"{forced}":100}}"#)).expect("req")).await.expect("biased");
    let content = get(&get(&Array::from(&get(&c, "choices")).get(0), "message"), "content").as_string().expect("text");
    let want = call(&g, "detokenize", &[Array::of3(&forced.into(), &forced.into(), &forced.into()).into()]).expect("detokenize").as_string().expect("text");
    assert_eq!(content.trim(), want.trim(), "{}", json(&c));
    for (extra, field) in [
        (r#","n":2"#, "n"),
        (r#","tools":[{"type":"retrieval"}]"#, "tools"),
        (r#","response_format":{"type":"json_schema"}"#, "response_format"),
        (r#","foo":1"#, "foo"),
    ] {
        let e = create(&g, &request(extra).expect("req")).await.expect_err(field);
        assert_eq!(err_name(&e), "InvalidArgumentError", "{}", err_message(&e));
        assert!(err_message(&e).contains(field), "{}", err_message(&e));
    }
    let e = create(&g, &request(r#","frequency_penalty":3"#).expect("req")).await.expect_err("range");
    assert_eq!(err_name(&e), "InvalidArgumentError", "{}", err_message(&e));

    // Leaving a stream early aborts the generation; the model stays usable.
    let it = create(&g, &request(r#","stream":true,"max_tokens":200"#).expect("req")).await.expect("stream");
    call_async(&it, "next", &[]).await.expect("role chunk");
    call_async(&it, "next", &[]).await.expect("a content chunk");
    call_async(&it, "return", &[]).await.expect("return");
    let c = create(&g, &request("").expect("req")).await.expect("after an early exit");
    assert_eq!(get(&c, "object").as_string().as_deref(), Some("chat.completion"));
    assert_eq!(get(&stats(&g), "finishReason").as_string().as_deref().map(|f| f != "abort"), Some(true));
}

#[wasm_bindgen_test]
async fn a_model_the_sites_storage_cannot_hold_loads_without_caching() {
    clear_cache().await;
    let m = model("https://models.test/no-room/", DType::Int4);
    // The browser says 50 kB are left for this site (less than the model's shards).
    let storage = get(&get(&js_sys::global(), "navigator"), "storage");
    let estimate = get(&storage, "estimate");
    let small = Function::new_no_args("return Promise.resolve({ quota: 1000000, usage: 950000 });");
    Reflect::set(&storage, &"estimate".into(), &small).expect("patch");
    let (on_progress, events) = recorder();
    let loaded = load(&m, &[("cache", JsValue::TRUE), ("onProgress", on_progress)]).await;
    Reflect::delete_property(storage.unchecked_ref::<Object>(), &"estimate".into()).expect("restore");
    assert!(get(&storage, "estimate") == estimate || get(&storage, "estimate").is_function());
    let g = loaded.expect("loads anyway");
    let warned = warnings(&events);
    console_log!("{warned:?}");
    assert!(warned.iter().any(|w| w.contains("50 kB free") && w.contains("without caching")), "{warned:?}");
    generate(&g, "Hello", &sampled(5, 4)).await.expect("generate");
    let list = JsFuture::from(Gemma::list_cached_models()).await.expect("list");
    assert_eq!(Array::from(&list).length(), 0, "nothing was cached: {}", json(&list));
    call(&g, "dispose", &[]).expect("dispose");
}

/// The nested schema of the structured-output tests. (Its whitespace between JSON tokens is one
/// optional space: a random model picks the default's line breaks and indentation as often as
/// anything, and the tiny model's context is 128 tokens.)
const PERSON_SCHEMA: &str = r#"{"type":"object","x-guidance":{"whitespace_pattern":" ?"},"properties":{
  "name":{"type":"string","maxLength":12},
  "age":{"type":"integer","minimum":0,"maximum":120},
  "role":{"enum":["admin","user","guest"]},
  "tags":{"type":"array","items":{"type":"string","maxLength":6},"maxItems":3},
  "address":{"type":"object","properties":{"city":{"type":"string","maxLength":10},"zip":{"type":"integer","minimum":0,"maximum":99999}},"required":["city"],"additionalProperties":false}
},"required":["name","age","role","address"],"additionalProperties":false}"#;

/// Whether `v` is valid against PERSON_SCHEMA (written out by hand).
fn is_person(v: &serde_json::Value) -> bool {
    let Some(o) = v.as_object() else { return false };
    let allowed = ["name", "age", "role", "tags", "address"];
    let str_max = |v: &serde_json::Value, n: usize| v.as_str().is_some_and(|s| s.chars().count() <= n);
    o.keys().all(|k| allowed.contains(&k.as_str()))
        && o.get("name").is_some_and(|n| str_max(n, 12))
        && o.get("age").and_then(|a| a.as_i64()).is_some_and(|a| (0..=120).contains(&a))
        && o.get("role").and_then(|r| r.as_str()).is_some_and(|r| ["admin", "user", "guest"].contains(&r))
        && o.get("tags").is_none_or(|t| t.as_array().is_some_and(|a| a.len() <= 3 && a.iter().all(|s| str_max(s, 6))))
        && o.get("address").and_then(|a| a.as_object()).is_some_and(|a| {
            a.keys().all(|k| k == "city" || k == "zip")
                && a.get("city").is_some_and(|c| str_max(c, 10))
                && a.get("zip").is_none_or(|z| z.as_i64().is_some_and(|z| (0..=99999).contains(&z)))
        })
}

#[wasm_bindgen_test]
async fn structured_output_and_tool_calls_in_the_browser() {
    let m = model("https://models.test/structured/", DType::F32);
    let g = load(&m, &[]).await.expect("load");
    let format = js_sys::JSON::parse(&format!(r#"{{"type":"json_schema","json_schema":{{"name":"person","schema":{PERSON_SCHEMA}}}}}"#)).expect("json");
    let mut lengths = Vec::new();
    for seed in 0..12u32 {
        let opts = [("temperature", 1.0.into()), ("topK", 0.into()), ("seed", seed.into()), ("maxTokens", 110.into()), ("responseFormat", format.clone())];
        let text = generate(&g, "A person:", &opts).await.expect("generate");
        let finish = get(&stats(&g), "finishReason").as_string().unwrap_or_default();
        assert_eq!(finish, "eos", "seed {seed}: the object is complete within the budget: {text:?}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("seed {seed} ({finish}): {e}: {text:?}"));
        assert!(is_person(&v), "seed {seed}: {text}");
        lengths.push(text.len());
    }
    console_log!("12 seeds, all valid; text lengths {lengths:?}");
    // A regular expression and a Lark grammar, the same way.
    let rx = js_sys::JSON::parse(r#"{"type":"regex","regex":"(yes|no), [0-9]{2,3} (cats|dogs)"}"#).expect("json");
    let lark = js_sys::JSON::parse(r#"{"type":"grammar","grammar":"start: greeting \" \" NAME \"!\"\ngreeting: \"hello\" | \"hi\"\nNAME: /[a-z]{2,8}/"}"#)
        .expect("json");
    for seed in 0..6u32 {
        let opts =
            |f: &JsValue| vec![("temperature", 1.0.into()), ("topK", 0.into()), ("seed", seed.into()), ("maxTokens", 40.into()), ("responseFormat", f.clone())];
        let a = generate(&g, "Answer:", &opts(&rx)).await.expect("regex");
        let re = js_sys::RegExp::new("^(yes|no), [0-9]{2,3} (cats|dogs)$", "");
        assert!(re.test(&a), "seed {seed}: {a:?}");
        let b = generate(&g, "Say hi:", &opts(&lark)).await.expect("lark");
        let re = js_sys::RegExp::new("^(hello|hi) [a-z]{2,8}!$", "");
        assert!(re.test(&b), "seed {seed}: {b:?}");
    }
    // The budget running out inside the structure ends with 'length'.
    let opts = [("temperature", 1.0.into()), ("seed", 1.into()), ("maxTokens", 3.into()), ("responseFormat", format.clone())];
    let short = generate(&g, "A person:", &opts).await.expect("short");
    assert_eq!(get(&stats(&g), "finishReason").as_string().as_deref(), Some("length"), "{short:?}");
    let bad = js_sys::JSON::parse(r##"{"type":"json_schema","json_schema":{"schema":{"type":"object","properties":{"a":{"$ref":"#/nope"}}}}}"##).expect("json");
    let e = generate(&g, "x", &[("responseFormat", bad)]).await.expect_err("bad schema");
    assert_eq!(err_name(&e), "InvalidArgumentError", "{}", err_message(&e));

    // Tools are checked by name before anything runs (a call itself is tested with the real
    // 270M in tests/e2e/gemma3.test.mjs: the tools' prompt does not fit this model's context).
    for (extra, field) in [(r#""tool_choice":"required""#, "tool_choice"), (r#""tools":[{"type":"retrieval"}]"#, "tools")] {
        let r = js_sys::JSON::parse(&format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],{extra}}}"#)).expect("json");
        let e = create(&g, &r).await.expect_err(field);
        assert_eq!(err_name(&e), "InvalidArgumentError", "{}", err_message(&e));
        assert!(err_message(&e).contains(field), "{}", err_message(&e));
    }
}
