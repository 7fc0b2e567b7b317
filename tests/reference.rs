//! Our converter + GPU engine against the Hugging Face reference (eager attention, float32) on
//! the tiny random-weight fixtures made by `tools/make_fixtures.py` (see its docstring): logits
//! at every position (prefill and decode), greedy continuations, layer-by-layer hidden states
//! through the CPU twin, int4 against a CPU forward of the same dequantized weights, and the
//! sliding window pinned (off by one, or on the wrong layers, must fail).
#![cfg(not(target_arch = "wasm32"))]

mod support;
use std::path::Path;

use gemma_webgpu::convert;
use gemma_webgpu::model::cpu::CpuModel;
use gemma_webgpu::model::engine::KvType;
use gemma_webgpu::model::load::{read_manifest, read_shard};
use gemma_webgpu::ops::linear::MATVEC_BATCH_MAX_M;
use gemma_webgpu::quant::DType;
use support::{cpu_twin, fixture};

const FIXTURES: &[&str] = &["tiny-f32", "tiny-bf16-gqa3"];

struct Reference {
    ids: Vec<u32>,
    logits: Vec<f32>,
    layers: Vec<Vec<f32>>,
    greedy_prompt: Vec<u32>,
    greedy_ids: Vec<u32>,
}

fn reference(name: &str, n_layers: usize) -> Reference {
    let r = support::reference(name);
    Reference {
        ids: r.ids("input_ids"),
        logits: r.f32("logits"),
        layers: (0..n_layers).map(|l| r.f32(&format!("hidden.layer{l}"))).collect(),
        greedy_prompt: r.ids("greedy_prompt"),
        greedy_ids: r.ids("greedy_ids"),
    }
}

fn convert_to(name: &str, quant: DType) -> std::path::PathBuf {
    support::convert_to(name, quant, 128 << 10).0
}

fn argmax_rows(logits: &[f32], v: usize) -> Vec<usize> {
    logits.chunks(v).map(support::argmax).collect()
}

/// A prefill chunk shorter than the sequence and the window rings of the local layers (and
/// than `MATVEC_BATCH_MAX_M`: chunks this short take the matrix-vector kernel).
fn engine(dir: &Path, kv: KvType) -> gemma_webgpu::model::engine::Engine {
    support::engine(dir, 64, 16, kv)
}

/// The whole 40-token sequence as one prefill chunk: the tiled matmul kernel.
fn engine_one_chunk(dir: &Path, kv: KvType) -> gemma_webgpu::model::engine::Engine {
    support::engine(dir, 64, 64, kv)
}

/// f32 and fp16 conversions reproduce the reference logits at every position, by prefill and
/// by decode, and the greedy continuation exactly. (quant, f32 KV cache, tolerance on logits,
/// greedy must match): with an f32 cache the f32 model measured 1.56e-4 (tiny-f32) and 1.48e-4
/// (tiny-bf16-gqa3) on lavapipe (2026-11-30), bounded at 3x; the default fp16 cache rounds K
/// and V, which these fixtures' large attention logits (up to 80 before the cap) amplify
/// (measured 0.236 and 0.180), and fp16 weights measured 0.307 on tiny-f32 (tiny-bf16-gqa3's
/// bf16 weights are fp16-exact: 1.2e-4): both bounded at 0.5. Top-1 agrees at every position.
#[test]
fn converted_models_match_hugging_face() {
    for name in FIXTURES {
        for (quant, kv, tol, greedy_exact) in
            [(DType::F32, KvType::F32, 4.5e-4f32, true), (DType::F16, KvType::F32, 0.5, false), (DType::F32, KvType::F16, 0.5, false)]
        {
            let dir = convert_to(name, quant);
            let mut gpu = engine(&dir, kv);
            let r = reference(name, gpu.config.num_hidden_layers as usize);
            let v = gpu.config.vocab_size as usize;
            pollster::block_on(async {
                let prefill = gpu.logits(&r.ids, false).await.expect("prefill");
                let layer_out = gpu.residual(((r.ids.len() - 1) % 16 + 1) as u32).await.expect("residual");
                gpu.reset();
                let decode = gpu.logits(&r.ids, true).await.expect("decode");
                let (e_pre, e_dec) = (support::max_abs_diff(&prefill, &r.logits), support::max_abs_diff(&decode, &r.logits));
                let top1 = argmax_rows(&prefill, v).iter().zip(argmax_rows(&r.logits, v)).filter(|(a, b)| **a == *b).count();
                let kv = format!("{kv:?} KV");
                println!("{name} {} weights, {kv}: max |logit - HF| prefill {e_pre:.2e}, decode {e_dec:.2e}; top-1 {top1}/{}", quant.name(), r.ids.len());
                assert!(e_pre <= tol && e_dec <= tol, "{name} {} {kv}: logits differ from HF by {e_pre} / {e_dec} (> {tol})", quant.name());
                assert_eq!(top1, r.ids.len(), "{name} {} {kv}: top-1 agreement", quant.name());
                if greedy_exact {
                    // The last chunk's residual stream is the last layer's output.
                    let h = gpu.config.hidden_size as usize;
                    let last = r.layers.last().expect("layers");
                    let rows = layer_out.len() / h;
                    let err = support::max_abs_diff(&layer_out, &last[last.len() - rows * h..]);
                    let scale = last.iter().fold(0f32, |m, x| m.max(x.abs()));
                    println!("{name}: last layer output max |GPU - HF| {err:.2e} (values up to {scale:.1})");
                    // Measured 7.3e-5 and 5.9e-5 on values up to 27.4 and 24.3: 2.7e-6 of the
                    // largest value at most, bounded at 1e-5 of it.
                    assert!(err <= 1e-5 * scale.max(1.0), "{name}: last layer output differs by {err}");
                    let got = support::greedy(&mut gpu, &r.greedy_prompt, r.greedy_ids.len()).await;
                    assert_eq!(got, r.greedy_ids, "{name}: greedy continuation");
                    assert!(r.ids.len() as u32 > MATVEC_BATCH_MAX_M, "the one-chunk prefill must take the tiled kernel");
                    let tiled = engine_one_chunk(&dir, KvType::F32).logits(&r.ids, false).await.expect("one-chunk prefill");
                    let e_tiled = support::max_abs_diff(&tiled, &r.logits);
                    println!("{name}: one {}-token prefill chunk (tiled matmul): max |logit - HF| {e_tiled:.2e}", r.ids.len());
                    assert!(e_tiled <= tol, "{name}: one-chunk prefill differs from HF by {e_tiled}");
                }
            });
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Layer by layer: the CPU twin (the GPU's arithmetic, checked in `tests/engine.rs`) against
/// HF's per-layer hidden states, so a mismatch names the first wrong layer.
#[test]
fn every_layer_matches_hugging_face() {
    for name in FIXTURES {
        let dir = convert_to(name, DType::F32);
        let cpu = cpu_twin(&dir);
        let r = reference(name, cpu.config.num_hidden_layers as usize);
        let out = cpu.forward(&r.ids, KvType::F32);
        for (l, (ours, theirs)) in out.layers.iter().zip(&r.layers).enumerate() {
            let scale = theirs.iter().fold(0f32, |m, x| m.max(x.abs()));
            let err = support::max_abs_diff(ours, theirs);
            println!("{name} layer {l}: max |CPU - HF| {err:.2e} (values up to {scale:.1})");
            // Measured up to 2.9e-6 of the layer's largest value (8.0e-5 on 27.4), 2026-11-30.
            assert!(err <= 1e-5 * scale.max(1.0), "{name}: layer {l} output differs from HF by {err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// int4: the GPU matches a CPU forward of the same dequantized weights; its distance from the
/// unquantized reference is measured and bounded.
#[test]
fn int4_matches_its_dequantized_twin_and_stays_near_the_reference() {
    // tiny-bf16-gqa3 has H = 48, which int4's groups of 32 cannot split: a clear error.
    let out = std::env::temp_dir().join(format!("gemma-ref-int4-48-{}", std::process::id()));
    let err = convert::convert_hf(&fixture("tiny-bf16-gqa3"), &out, DType::Int4, 1 << 20, false).expect_err("H = 48");
    assert!(err.to_string().contains("multiple of 32"), "{err}");
    let name = "tiny-f32";
    let dir = convert_to(name, DType::Int4);
    let cpu = cpu_twin(&dir);
    let manifest = read_manifest(&dir).expect("manifest");
    // An f32 cache here: with fp16 K/V, a value that rounds differently on the two sides
    // (their f32 sums differ in the last bit) is amplified by these fixtures' large
    // attention logits; the fp16 cache is covered by tests/engine.rs and the test above.
    let mut gpu = engine(&dir, KvType::F32);
    let r = reference(name, manifest.config.num_hidden_layers as usize);
    let v = manifest.config.vocab_size as usize;
    let twin = cpu.forward(&r.ids, KvType::F32).logits;
    let got = pollster::block_on(gpu.logits(&r.ids, false)).expect("logits");
    let err = support::max_abs_diff(&got, &twin);
    let vs_ref = support::max_abs_diff(&got, &r.logits);
    let top1 = argmax_rows(&got, v).iter().zip(argmax_rows(&r.logits, v)).filter(|(a, b)| **a == *b).count();
    println!("{name} int4: max |GPU - CPU twin| {err:.2e}; vs unquantized HF: max |diff| {vs_ref:.2}, top-1 agreement {top1}/{}", r.ids.len());
    // Measured 1.98e-4 on lavapipe (2026-11-30).
    assert!(err <= 6e-4, "{name}: int4 GPU differs from its CPU twin by {err}");
    // These random fixtures are adversarial for 4 bits (weights scaled up until both
    // soft-caps engage): measured max |diff| 28.1 and top-1 16/40, bounded at 2x and 14/40, so
    // a codec that got worse (not only a broken one) fails.
    assert!(vs_ref <= 56.0 && top1 >= 14, "{name}: int4 vs HF: max |diff| {vs_ref}, top-1 agreement {top1}/{}", r.ids.len());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sliding window is pinned: the reference is matched only with the configured window on
/// the even layers; W-1, W+1, or the window on the odd layers all miss by far more than the
/// tolerance.
#[test]
fn sliding_window_is_pinned_by_the_reference() {
    let name = "tiny-f32";
    let dir = convert_to(name, DType::F32);
    let manifest = read_manifest(&dir).expect("manifest");
    let r = reference(name, manifest.config.num_hidden_layers as usize);
    let base = manifest.config.clone();
    let mut variants = vec![("as configured", base.clone(), true)];
    let mut c = base.clone();
    c.sliding_window -= 1;
    variants.push(("window - 1", c, false));
    let mut c = base.clone();
    c.sliding_window += 1;
    variants.push(("window + 1", c, false));
    let mut c = base.clone();
    c.sliding_layers = c.sliding_layers.iter().map(|s| !s).collect();
    variants.push(("window on the odd layers", c, false));
    for (what, config, should_match) in variants {
        let mut m = manifest.clone();
        m.config = config;
        let cpu = CpuModel::from_manifest(&m, &|i| read_shard(&dir, &manifest, i)).expect("cpu");
        let err = support::max_abs_diff(&cpu.forward(&r.ids, KvType::F32).logits, &r.logits);
        println!("{what}: max |logit - HF| {err:.2e}");
        // Measured 1.34e-4 as configured and 27.2 to 36.9 for the wrong windows (2026-11-30).
        if should_match {
            assert!(err <= 4e-4, "{what}: {err}");
        } else {
            assert!(err > 20.0, "{what}: misses HF by only {err}: the test barely sees this error");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The converter rejects bad input with a message naming the problem.
#[test]
fn converter_rejects_bad_checkpoints() {
    let src = fixture("tiny-f32");
    let work = std::env::temp_dir().join(format!("gemma-bad-{}", std::process::id()));
    let case = |what: &str, edit: &dyn Fn(&Path), needle: &str| {
        let d = work.join(what.replace(' ', "-"));
        std::fs::create_dir_all(&d).expect("mkdir");
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(src.join(f), d.join(f)).expect("copy");
        }
        edit(&d);
        let err = convert::convert_hf(&d, &d.join("out"), DType::F32, 1 << 20, false).expect_err(what).to_string();
        assert!(err.contains(needle), "{what}: error '{err}' should mention '{needle}'");
        println!("{what}: {err}");
    };
    let set_config = |d: &Path, key: &str, value: serde_json::Value| {
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
        cfg[key] = value;
        std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    };
    case(
        "unknown model type",
        &|d| {
            set_config(d, "model_type", "llama".into());
            set_config(d, "architectures", serde_json::json!(["LlamaForCausalLM"]));
        },
        "not supported",
    );
    case("wrong shape", &|d| set_config(d, "intermediate_size", 96.into()), "shape");
    case("missing tensor", &|d| set_config(d, "num_hidden_layers", 5.into()), "layer_types");
    case(
        "missing layer",
        &|d| {
            set_config(d, "num_hidden_layers", 5.into());
            set_config(d, "layer_types", serde_json::Value::Null);
        },
        "missing tensor 'model.layers.4.",
    );
    case("missing field", &|d| set_config(d, "head_dim", serde_json::Value::Null), "head_dim");
    case(
        "truncated safetensors",
        &|d| {
            let f = d.join("model.safetensors");
            let len = std::fs::metadata(&f).unwrap().len();
            let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
            file.set_len(len - 1000).unwrap();
        },
        "truncated",
    );
    case("no weights", &|d| std::fs::remove_file(d.join("model.safetensors")).unwrap(), "neither model.safetensors");
    let _ = std::fs::remove_dir_all(&work);
}
