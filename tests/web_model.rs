//! The Gemma 2 engine in headless Chromium's WebGPU (SwiftShader in CI), on the tiny Hugging
//! Face fixtures converted in memory (no file system in a browser): logits at every position by
//! prefill and by decode against the HF reference, greedy continuations, and an int4 model
//! against its CPU twin. Same engine code as `tests/reference.rs`; the bounds are set from what
//! was measured here, on SwiftShader.
#![cfg(target_arch = "wasm32")]

mod support;
use gemma_webgpu::convert::{convert_in_memory, safetensors::Checkpoint};
use gemma_webgpu::gpu::{ContextOptions, GpuContext};
use gemma_webgpu::model::cpu::CpuModel;
use gemma_webgpu::model::engine::{Engine, EngineOptions, KvType};
use gemma_webgpu::model::load::{load, InMemory};
use gemma_webgpu::quant::DType;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

struct Fixture {
    name: &'static str,
    config: &'static str,
    weights: &'static [u8],
    reference: &'static [u8],
}

const FIXTURES: &[Fixture] = &[
    Fixture {
        name: "tiny-f32",
        config: include_str!("fixtures/tiny-f32/config.json"),
        weights: include_bytes!("fixtures/tiny-f32/model.safetensors"),
        reference: include_bytes!("fixtures/tiny-f32/reference.safetensors"),
    },
    Fixture {
        name: "tiny-bf16-gqa3",
        config: include_str!("fixtures/tiny-bf16-gqa3/config.json"),
        weights: include_bytes!("fixtures/tiny-bf16-gqa3/model.safetensors"),
        reference: include_bytes!("fixtures/tiny-bf16-gqa3/reference.safetensors"),
    },
];

fn e<T>(r: gemma_webgpu::Result<T>) -> T {
    r.unwrap_or_else(|err| panic!("{err}"))
}

/// Convert in memory, then load through the one load path (`model::load`).
async fn load_model(f: &Fixture, quant: DType, kv: KvType) -> (Engine, CpuModel) {
    let mut ck = Checkpoint::default();
    e(ck.add_bytes("model.safetensors", f.weights.to_vec()));
    let (manifest, shards) = e(convert_in_memory(f.config, &ck, quant, 128 << 10));
    let ctx = e(GpuContext::new(&ContextOptions::default()).await);
    let cpu = e(CpuModel::from_manifest(&manifest, &|i| Ok(shards[i].clone())));
    let engine = e(load(ctx, &manifest, &InMemory { manifest: &manifest, shards: &shards }, EngineOptions::with_context(64, 16, kv)).await);
    (engine, cpu)
}

fn reference(f: &Fixture) -> (Vec<u32>, Vec<f32>, Vec<u32>, Vec<u32>) {
    let r = support::Reference::from_bytes(f.reference);
    (r.ids("input_ids"), r.f32("logits"), r.ids("greedy_prompt"), r.ids("greedy_ids"))
}

#[wasm_bindgen_test]
async fn engine_matches_hugging_face_in_the_browser() {
    for f in FIXTURES {
        let (mut gpu, _) = load_model(f, DType::F32, KvType::F32).await;
        let (ids, logits, prompt, greedy) = reference(f);
        let prefill = e(gpu.logits(&ids, false).await);
        gpu.reset();
        let decode = e(gpu.logits(&ids, true).await);
        let (ep, ed) = (support::max_abs_diff(&prefill, &logits), support::max_abs_diff(&decode, &logits));
        console_log!("{}: f32 weights, f32 KV: max |logit - HF| prefill {ep:.2e}, decode {ed:.2e}", f.name);
        // Measured 1.98e-4 (tiny-f32) and 1.72e-4 (tiny-bf16-gqa3) on SwiftShader, 2026-11-30.
        assert!(ep <= 6e-4 && ed <= 6e-4, "{}: {ep} / {ed}", f.name);
        assert_eq!(support::greedy(&mut gpu, &prompt, greedy.len()).await, greedy, "{}: greedy continuation", f.name);
    }
}

#[wasm_bindgen_test]
async fn int4_and_fp16_kv_match_their_cpu_twins_in_the_browser() {
    let f = &FIXTURES[0];
    let (ids, _, _, _) = reference(f);
    let (mut gpu, cpu) = load_model(f, DType::Int4, KvType::F32).await;
    let err = support::max_abs_diff(&e(gpu.logits(&ids, false).await), &cpu.forward(&ids, KvType::F32).logits);
    console_log!("{}: int4 weights: max |GPU - CPU twin| {err:.2e}", f.name);
    // Measured 3.4e-4 on SwiftShader (2026-11-30).
    assert!(err <= 1e-3, "int4: {err}");
    // The default fp16 cache, on shorter input: this fixture's attention logits (up to 77)
    // amplify a K/V value that rounds to fp16 differently on the two sides, more so the longer
    // the input. Measured 4.4e-3 on 12 tokens (2026-11-30); tests/engine.rs checks the fp16
    // cache on 21 tokens of a milder model natively (4e-5, bounded at 1.2e-4).
    let (mut gpu, cpu) = load_model(f, DType::F16, KvType::F16).await;
    let short = &ids[..12];
    let err = support::max_abs_diff(&e(gpu.logits(short, false).await), &cpu.forward(short, KvType::F16).logits);
    console_log!("{}: fp16 weights, fp16 KV: max |GPU - CPU twin| {err:.2e}", f.name);
    assert!(err <= 5e-3, "fp16 KV: {err}");
}
