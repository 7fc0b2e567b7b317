//! The `gemma` binary end to end on a tiny fixture: convert, logits (.npy, prefill and decode
//! against Hugging Face's logits), generate (greedy against Hugging Face's continuation, and
//! --json), bench --json; and its errors: one line, non-zero exit, no panic — including a
//! corrupt and a truncated shard, and a prompt longer than the context. As a command line:
//! --help, --version, suggestions for typos, progress without carriage returns in a log, and
//! --quiet.
#![cfg(not(target_arch = "wasm32"))]

mod support;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn gemma(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gemma")).args(args).env("XDG_RUNTIME_DIR", std::env::temp_dir()).output().expect("run gemma")
}

fn ok(args: &[&str]) -> String {
    let out = gemma(args);
    assert!(out.status.success(), "gemma {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command fails with exactly one `error:` line mentioning `needle`, and no panic.
fn fails(args: &[&str], needle: &str) {
    let out = gemma(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "gemma {args:?} should fail");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "gemma {args:?} panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ") && !l.contains("XDG_RUNTIME_DIR")).collect();
    assert_eq!(lines.len(), 1, "gemma {args:?}: expected one error line, got: {err}");
    assert!(lines[0].contains(needle), "gemma {args:?}: '{}' should mention '{needle}'", lines[0]);
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gemma-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-f32").display().to_string()
}

fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).expect("npy");
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).expect("header");
    assert!(header.contains("'descr': '<f4'") && header.ends_with('\n') && (10 + hlen).is_multiple_of(64), "{header}");
    let shape: Vec<usize> =
        header.split('(').nth(1).and_then(|s| s.split(')').next()).expect("shape").split(',').filter_map(|d| d.trim().parse().ok()).collect();
    (shape, bytemuck::pod_collect_to_vec(&bytes[10 + hlen..]))
}

#[test]
fn convert_logits_generate_and_bench() {
    let dir = tmp("model");
    let d = dir.display().to_string();
    assert!(gemma(&["convert", &fixture(), &d, "--quant", "f32", "--shard-mb", "1"]).status.success());
    // The fixture's 40 tokens through `logits`, prefill and decode, against HF's logits (f32
    // weights and KV cache, as tests/reference.rs checks through the library): measured 1.25e-4
    // and 1.56e-4 on lavapipe (2026-11-30), bounded as there.
    let r = support::reference("tiny-f32");
    let list = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let (npy_p, npy_d) = (dir.join("prefill.npy"), dir.join("decode.npy"));
    let tokens = list(&r.ids("input_ids"));
    ok(&["logits", &d, "--tokens", &tokens, "--kv-f32", "--out", &npy_p.display().to_string()]);
    ok(&["logits", &d, "--tokens", &tokens, "--kv-f32", "--decode", "--out", &npy_d.display().to_string()]);
    let ((shape, p), (shape_d, q)) = (read_npy(&npy_p), read_npy(&npy_d));
    assert_eq!((shape, shape_d), (vec![40, 512], vec![40, 512]));
    let hf = r.f32("logits");
    let (e_p, e_d) = (support::max_abs_diff(&p, &hf), support::max_abs_diff(&q, &hf));
    println!("gemma logits: max |logit - HF| prefill {e_p:.2e}, --decode {e_d:.2e}");
    assert!(e_p <= 4.5e-4 && e_d <= 4.5e-4, "gemma logits differs from HF by {e_p} (prefill) / {e_d} (--decode)");
    // Greedy generation reproduces HF's 16-token greedy continuation ("id " per token: the
    // model has no tokenizer.json).
    let prompt = list(&r.ids("greedy_prompt"));
    let greedy = ok(&["generate", &d, "--tokens", &prompt, "--max-tokens", "16", "--temperature", "0", "--kv-f32"]);
    assert_eq!(greedy.split_whitespace().map(|t| t.parse::<u32>().expect("an id")).collect::<Vec<_>>(), r.ids("greedy_ids"), "{greedy}");
    let text = ok(&["generate", &d, "--tokens", "2,17,300", "--max-tokens", "6", "--temperature", "0"]);
    let ids: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(ids.len(), 6, "{text}");
    // A stop string ends the text before its first occurrence and is never printed (a model
    // without tokenizer.json prints "id " per token).
    let stop = format!(" {} ", ids[2]);
    let want = &text[..text.find(&stop).expect("the third id is in the text")];
    let stopped = ok(&["generate", &d, "--tokens", "2,17,300", "--max-tokens", "6", "--temperature", "0", "--stop", &stop]);
    assert_eq!(stopped.trim_end_matches('\n'), want, "--stop {stop:?} on {text:?}");
    // --json: one JSON object with the same text, why it ended, the token counts and the
    // timings, and nothing streamed before it. A repeated option takes its last value, as
    // before clap. --quiet drops the stats line from stderr.
    let out = gemma(&["generate", &d, "--tokens", "2,17,300", "--max-tokens", "2", "--max-tokens", "6", "--temperature", "0", "--json", "--quiet"]);
    assert!(out.status.success(), "generate --json: {}", String::from_utf8_lossy(&out.stderr));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().count(), 1, "one line of JSON: {stdout}");
    assert!(!stderr.contains("tok/s"), "--quiet prints no stats line: {stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("generate --json is JSON");
    assert_eq!(v["text"].as_str(), Some(text.trim_end_matches('\n')), "{stdout}");
    assert_eq!(v["finish_reason"], "length", "{stdout}");
    assert_eq!(
        (v["usage"]["prompt_tokens"].as_u64(), v["usage"]["reused_tokens"].as_u64(), v["usage"]["completion_tokens"].as_u64()),
        (Some(3), Some(0), Some(6)),
        "{stdout}"
    );
    for key in ["prefill_seconds", "prefill_tokens_per_second", "decode_seconds", "decode_tokens_per_second"] {
        assert!(v["timings"][key].as_f64().is_some_and(|t| t > 0.0), "timings.{key}: {stdout}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["generate", &d, "--tokens", "2,17,300", "--max-tokens", "6", "--temperature", "0", "--stop", &stop, "--json"]))
            .expect("generate --json is JSON");
    assert_eq!((v["text"].as_str(), v["finish_reason"].as_str()), (Some(want), Some("stop")), "{v}");
    let sampled = ok(&["generate", &d, "--tokens", "2,17,300", "--max-tokens", "6", "--temperature", "1.0", "--top-k", "20", "--top-p", "0.9", "--seed", "7"]);
    assert_eq!(
        sampled,
        ok(&["generate", &d, "--tokens", "2,17,300", "--max-tokens", "6", "--temperature", "1.0", "--top-k", "20", "--top-p", "0.9", "--seed", "7"]),
        "same seed, same tokens"
    );
    let json = ok(&["bench", &d, "--prompt-tokens", "20", "--gen-tokens", "4", "--max-context", "64", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("bench --json is JSON");
    assert_eq!(v["submits_per_token"], 1, "{json}");
    assert_eq!(v["readback_bytes_per_token"], 4, "{json}");
    assert!(v["decode_tok_s"].as_f64().unwrap_or(0.0) > 0.0, "{json}");
    // Dispatches per decoded token, counted from this Gemma 2 model: 8 per layer (q/k/v with
    // RoPE and the KV write; attention's split and combine; o; gate/up with GeGLU; down; two
    // fused residual add + norms, each ending a sub-block and norming the stream for the next,
    // the last one with the final norm), the first layer's input norm, the embedding gather
    // and the LM head (which applies the final soft-cap) once per embedding part, and sampling
    // (each chunk's arg-max, then the merge). Unfused, q/k/v take 6 (three products, two
    // rotations, the KV write) and gate/up 3.
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).expect("manifest")).expect("json");
    let layers = manifest["config"]["num_hidden_layers"].as_u64().expect("layers");
    let embed = manifest["tensors"].as_array().expect("tensors").iter().find(|t| t["name"] == "model.embed_tokens.weight").expect("embedding");
    let parts = embed["parts"].as_array().expect("parts").len() as u64;
    assert_eq!(v["dispatches_per_token"].as_u64(), Some(8 * layers + 2 * parts + 3), "{json}");
    let json = ok(&["bench", &d, "--prompt-tokens", "4", "--gen-tokens", "2", "--max-context", "64", "--unfused", "--json"]);
    let unfused: serde_json::Value = serde_json::from_str(&json).expect("bench --json is JSON");
    assert_eq!(unfused["dispatches_per_token"].as_u64(), Some(15 * layers + 2 * parts + 3), "{json}");
    // Subgroups where the adapter has them (the test script says so for lavapipe), none with
    // --no-subgroups; the dispatches are the same either way.
    if std::env::var("GEMMA_EXPECT_SUBGROUPS").is_ok_and(|e| e == "1") {
        assert_eq!(v["subgroups"], true, "{json}");
    }
    let json = ok(&["bench", &d, "--prompt-tokens", "4", "--gen-tokens", "2", "--max-context", "64", "--no-subgroups", "--json"]);
    let plain: serde_json::Value = serde_json::from_str(&json).expect("bench --json is JSON");
    assert_eq!(plain["subgroups"], false, "{json}");
    assert_eq!(plain["dispatches_per_token"], v["dispatches_per_token"], "{json}");
    // The LM head writes the logits soft-capped and greedy sampling reads them once.
    assert_eq!(v["logit_passes_per_token"], 2, "{json}");
    // A decoded token reads every weight (the embedding as the LM head) and little else: the
    // few activations and this short cache are under 1 MB here.
    let (read, weights) = (v["bytes_read_per_token"].as_f64().unwrap_or(0.0), v["weights_bytes"].as_f64().unwrap_or(f64::MAX));
    assert!(read >= weights && read < weights + 1e6, "bytes read per token {read} against weights of {weights} bytes: {json}");
    // Uniforms rewritten per greedy token: only the per-step one that carries the position
    // (the fused q/k/v product and split attention read it; every other uniform is the same
    // from token to token). Unfused, RoPE of q and k and the KV write rewrite theirs per layer.
    assert_eq!(v["uniform_writes_per_token"], 1, "{json}");
    assert_eq!(unfused["uniform_writes_per_token"].as_u64(), Some(3 * layers + 1), "{json}");
    // Deep in a conversation (the cache taken as holding 40 positions), and with decode
    // attention as one workgroup per query head: one attention dispatch per layer.
    let json = ok(&["bench", &d, "--prompt-tokens", "4", "--gen-tokens", "2", "--max-context", "64", "--depth", "40", "--attention", "blocked", "--json"]);
    let blocked: serde_json::Value = serde_json::from_str(&json).expect("bench --json is JSON");
    assert_eq!(blocked["depth"], 40, "{json}");
    assert_eq!(blocked["dispatches_per_token"].as_u64(), Some(7 * layers + 2 * parts + 3), "{json}");

    // --profile: GPU timestamps per kernel; the decode table accounts for every dispatch.
    let text = ok(&["bench", &d, "--prompt-tokens", "8", "--gen-tokens", "2", "--max-context", "64", "--profile"]);
    let decode = text.split("GPU time, decode").nth(1).expect("a decode profile");
    let rows: Vec<(String, f64, f64)> = decode
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 6 && f[0].contains(".wgsl")).then(|| (f[0].to_string(), f[1].parse().expect("dispatches"), f[2].parse().expect("ms")))
        })
        .collect();
    let counted: f64 = rows.iter().map(|r| r.1).sum();
    assert_eq!(counted as u64, 8 * layers + 2 * parts + 3, "{text}");
    let count = |kernel: &str| rows.iter().find(|r| r.0 == kernel).map_or(0, |r| r.1 as u64);
    assert_eq!(count("layers/matvec.wgsl"), 2 * layers, "o and down: {text}");
    assert_eq!(count("layers/matvec_qkv.wgsl"), layers, "{text}");
    assert_eq!(count("layers/matvec_geglu.wgsl"), layers, "{text}");
    assert!(rows.iter().all(|r| r.2 >= 0.0) && rows.iter().any(|r| r.2 > 0.0), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_are_one_line_and_exit_non_zero() {
    let dir = tmp("errors");
    let d = dir.display().to_string();
    assert!(gemma(&["convert", &fixture(), &d, "--quant", "f32", "--shard-mb", "1"]).status.success());
    // This test's own output path (tests run in parallel); no failing call may write it.
    let out_path = dir.join("x.npy");
    let out = out_path.display().to_string();
    fails(&["frobnicate"], "unrecognized subcommand 'frobnicate'");
    fails(&["logits", "/nonexistent", "--tokens", "1", "--out", &out], "manifest.json");
    fails(&["logits", &d, "--tokens", "1,x", "--out", &out], "not a token id");
    fails(&["logits", &d, "--tokens", "1,9999", "--out", &out], "vocabulary size");
    fails(&["generate", &d, "--prompt", "hello"], "no tokenizer.json");
    fails(&["generate", &d, "--tokens", "2,3,4", "--max-context", "2"], "context is full");
    fails(&["generate", &d, "--tokens", "2,3", "--max-context", "100000"], "max_position_embeddings");
    fails(&["generate", &d, "--tokens", "2,3", "--top-p", "0"], "top_p");
    fails(&["convert", &fixture(), &d, "--quant", "int3"], "--quant");
    fails(&["bench", &d, "--depth", "64", "--max-context", "64"], "no room");
    fails(&["bench", &d, "--depth", "60", "--prompt-tokens", "8", "--max-context", "64"], "context");
    fails(&["bench", &d, "--attention", "fast"], "--attention");
    // A corrupt shard (one flipped byte) and a truncated one.
    let shard = dir.join("model-00000.bin");
    let mut bytes = std::fs::read(&shard).expect("shard");
    bytes[1000] ^= 0x40;
    std::fs::write(&shard, &bytes).expect("write");
    fails(&["logits", &d, "--tokens", "2", "--out", &out], "corrupt");
    bytes[1000] ^= 0x40;
    bytes.truncate(bytes.len() - 8);
    std::fs::write(&shard, &bytes).expect("write");
    fails(&["logits", &d, "--tokens", "2", "--out", &out], "truncated");
    assert!(!out_path.exists(), "a failing `gemma logits` wrote {out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A checkpoint split over several safetensors files with an index converts to the same model.
#[test]
fn sharded_checkpoints_with_an_index_convert() {
    let src = tmp("split-src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::copy(Path::new(&fixture()).join("config.json"), src.join("config.json")).expect("copy");
    // Split the fixture's tensors over two files by rewriting headers.
    let bytes = std::fs::read(Path::new(&fixture()).join("model.safetensors")).expect("read");
    let hlen = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + hlen]).expect("header");
    let data = &bytes[8 + hlen..];
    let names: Vec<&String> = header.as_object().expect("object").keys().filter(|k| *k != "__metadata__").collect();
    let mut weight_map = serde_json::Map::new();
    for (part, chunk) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", part + 1);
        let (mut h, mut body) = (serde_json::Map::new(), Vec::new());
        for name in chunk {
            let info = &header[name.as_str()];
            let (b, e) = (info["data_offsets"][0].as_u64().expect("b") as usize, info["data_offsets"][1].as_u64().expect("e") as usize);
            let mut entry = info.clone();
            entry["data_offsets"] = serde_json::json!([body.len(), body.len() + e - b]);
            body.extend_from_slice(&data[b..e]);
            h.insert(name.to_string(), entry);
            weight_map.insert(name.to_string(), file.clone().into());
        }
        let hjson = serde_json::Value::Object(h).to_string();
        let mut out = (hjson.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(hjson.as_bytes());
        out.extend_from_slice(&body);
        std::fs::write(src.join(&file), out).expect("write part");
    }
    std::fs::write(src.join("model.safetensors.index.json"), serde_json::json!({ "weight_map": weight_map }).to_string()).expect("index");
    let (a, b) = (tmp("split-a"), tmp("split-b"));
    ok(&["convert", &src.display().to_string(), &a.display().to_string(), "--quant", "fp16"]);
    ok(&["convert", &fixture(), &b.display().to_string(), "--quant", "fp16"]);
    let (ma, mb) = (std::fs::read_to_string(a.join("manifest.json")).expect("a"), std::fs::read_to_string(b.join("manifest.json")).expect("b"));
    assert_eq!(ma, mb, "the split checkpoint converts to the identical model");
    for d in [src, a, b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Bytes of one weight matrix as stored: f32, or int4 (format 2: 4-bit codes and an fp16 scale
/// and minimum per 32 weights of a row, 5 bits per weight).
fn matrix_bytes(rows: u64, cols: u64, int4: bool) -> u64 {
    if int4 {
        rows * cols / 2 + rows * (cols / 32) * 4
    } else {
        rows * cols * 4
    }
}

/// Weight bytes of a Gemma 2 shape, written out here from the architecture (the embedding,
/// seven matrices and four norms per layer, the final norm; norms stay f32), independent of the
/// converter's tensor table.
#[allow(clippy::too_many_arguments)]
fn gemma2_weight_bytes(v: u64, h: u64, i: u64, layers: u64, heads: u64, kv_heads: u64, d: u64, int4: bool) -> u64 {
    let m = |r, c| matrix_bytes(r, c, int4);
    let layer = m(heads * d, h) + 2 * m(kv_heads * d, h) + m(h, heads * d) + 2 * m(i, h) + m(h, i) + 4 * h * 4;
    m(v, h) + layers * layer + h * 4
}

/// fp16 K and V of every layer: global layers hold the whole context, sliding-window layers a
/// ring of `window + prefill_chunk - 1` slots (at most the context).
fn kv_bytes(global: u64, sliding: u64, context: u64, window: u64, chunk: u64, kv_heads: u64, d: u64) -> u64 {
    (global * context + sliding * context.min(window + chunk - 1)) * kv_heads * d * 2 * 2
}

/// `bench --json` reports the memory the format and the cache layout imply, checked on a small
/// int4 model synthesized here (whose context is long enough for the sliding layers' rings to
/// be shorter than it); the README's 2B figures are the same arithmetic on the 2B's shape.
#[test]
fn bench_memory_is_the_formats_and_the_readme_states_it() {
    let dir = tmp("synth");
    // The tiny fixture's shape (V 512, H 64, I 128, 4 layers alternating sliding (window 8) and
    // global, 4 heads / 2 KV heads of 16) with room for a 512-token context.
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&fixture()).join("config.json")).expect("config")).expect("json");
    config["max_position_embeddings"] = 1024.into();
    std::fs::create_dir_all(&dir).expect("dir");
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_string()).expect("config");
    let model = dir.join("model");
    ok(&["synth", &model.display().to_string(), "--preset", &config_path.display().to_string(), "--quant", "int4"]);
    let json = ok(&["bench", &model.display().to_string(), "--prompt-tokens", "4", "--gen-tokens", "1", "--max-context", "512", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("bench --json is JSON");
    assert_eq!(v["weights_bytes"].as_u64(), Some(gemma2_weight_bytes(512, 64, 128, 4, 4, 2, 16, true)), "{json}");
    // Two global layers of 512 slots and two sliding ones of 8 + 128 - 1 (default chunk 128).
    assert_eq!(v["kv_cache_bytes"].as_u64(), Some(kv_bytes(2, 2, 512, 8, 128, 2, 16)), "{json}");
    assert_eq!(v["kv_cache_bytes"].as_u64(), Some((2 * 512 + 2 * 135) * 2 * 16 * 4), "{json}");
    let _ = std::fs::remove_dir_all(&dir);

    // The README's 2B figures (gemma synth --preset 2b --quant int4: V 256000, H 2304, I 9216,
    // 26 layers alternating sliding (window 4096) and global, 8 heads / 4 KV heads of 256).
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md");
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    let weights = mib(gemma2_weight_bytes(256_000, 2304, 9216, 26, 8, 4, 256, true));
    let (kv_4k, kv_8k) = (mib(kv_bytes(13, 13, 4096, 4096, 128, 4, 256)), mib(kv_bytes(13, 13, 8192, 4096, 128, 4, 256)));
    for (what, figure) in [("weights", &weights), ("KV cache at 4096", &kv_4k), ("KV cache at 8192", &kv_8k)] {
        assert!(readme.contains(figure.as_str()), "README.md's 2B figures should state the {what}: {figure}");
    }
    assert!(readme.contains("4223-slot ring"), "README.md: the 2B's sliding layers keep 4096 + 128 - 1 slots at 8192");
}

/// `--help` and `<command> --help` print help on stdout and exit 0; `--version` prints the
/// crate's version; a mistyped command or flag fails with clap's suggestion of the right one.
#[test]
fn help_version_and_suggestions() {
    let commands = ["convert", "synth", "generate", "logits", "bench"];
    let help = ok(&["--help"]);
    for c in commands {
        assert!(help.lines().any(|l| l.trim_start().starts_with(c)), "gemma --help should list {c}: {help}");
        let sub = ok(&[c, "--help"]);
        assert!(sub.contains(&format!("Usage: gemma {c}")), "gemma {c} --help: {sub}");
        assert_eq!(ok(&["help", c]), sub, "gemma help {c}");
    }
    assert!(help.contains("--quiet") && help.contains("--version"), "{help}");
    // Every flag the scripts and the README pass is in its command's help.
    let bench = ok(&["bench", "--help"]);
    for flag in [
        "--prompt-tokens",
        "--gen-tokens",
        "--max-context",
        "--json",
        "--profile",
        "--depth",
        "--attention",
        "--sample",
        "--unfused",
        "--sequential",
        "--no-subgroups",
        "--kv-f32",
    ] {
        assert!(bench.contains(flag), "gemma bench --help should have {flag}");
    }
    assert_eq!(ok(&["--version"]), format!("gemma {}\n", env!("CARGO_PKG_VERSION")));
    // Typos: one error line, a suggestion, a non-zero exit, no panic.
    fails(&["genrate", "x"], "unrecognized subcommand 'genrate'");
    let err = String::from_utf8_lossy(&gemma(&["genrate", "x"]).stderr).into_owned();
    assert!(err.contains("similar subcommand exists: 'generate'"), "{err}");
    fails(&["bench", "some-dir", "--profil"], "unexpected argument '--profil'");
    let err = String::from_utf8_lossy(&gemma(&["bench", "some-dir", "--profil"]).stderr).into_owned();
    assert!(err.contains("similar argument exists: '--profile'"), "{err}");
    fails(&["generate", "some-dir", "--max-tokens", "many", "--tokens", "2"], "--max-tokens");
    fails(&["generate", "some-dir"], "required arguments were not provided");
    // No arguments: the help, on stderr, and a failure.
    let out = gemma(&[]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Usage: gemma"), "{out:?}");
}

/// In a log (stderr not a terminal) convert prints a few plain progress lines, never the
/// carriage-return frames of a terminal's bar; with --quiet (before or after the command) it
/// prints nothing at all.
#[test]
fn convert_progress_in_a_log_and_quiet() {
    let dir = tmp("progress");
    let d = dir.display().to_string();
    let out = gemma(&["convert", &fixture(), &d, "--quant", "f32"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains('\r'), "no carriage returns in a log: {err:?}");
    let lines: Vec<&str> = err.lines().collect();
    assert!((2..=6).contains(&lines.len()), "a few lines of progress and the summary: {err}");
    assert!(lines[lines.len() - 2].starts_with("100% (") && lines[lines.len() - 1].starts_with("wrote "), "{err}");
    let src = fixture();
    for quiet in [["convert", "--quiet"], ["-q", "convert"]] {
        let _ = std::fs::remove_dir_all(&dir);
        let mut args = quiet.to_vec();
        args.extend([src.as_str(), d.as_str(), "--quant", "f32"]);
        let out = gemma(&args);
        assert!(out.status.success(), "gemma {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "gemma {args:?} prints nothing on stderr");
        assert!(dir.join("manifest.json").exists(), "gemma {args:?} wrote the model");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
