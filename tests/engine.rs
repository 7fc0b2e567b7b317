//! The whole forward pass on the native adapter against the CPU twin (`model::cpu`) on tiny
//! synthetic models: prefill, decode through the KV cache (past the sliding window), and
//! greedy sampling, for every weight type.
#![cfg(not(target_arch = "wasm32"))]

mod support;
use gemma_webgpu::convert;
use gemma_webgpu::model::config::ModelConfig;
use gemma_webgpu::model::engine::KvType;
use gemma_webgpu::ops::sample::Sampling;
use gemma_webgpu::quant::DType;

fn tiny_config() -> ModelConfig {
    let mut c = convert::preset("2b").expect("preset");
    c.vocab_size = 512;
    c.hidden_size = 64;
    c.intermediate_size = 128;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 16;
    c.query_pre_attn_scalar = 16.0;
    c.sliding_window = 8;
    c.max_position_embeddings = 128;
    c.eos_token_ids = vec![1];
    c.sliding_layers = vec![true, false, true, false];
    c
}

fn tokens(n: usize) -> Vec<u32> {
    std::iter::once(2).chain((1..n as u32).map(|i| (i * 7919 + 13) % 509 + 3)).collect()
}

/// About 3x the largest GPU-CPU distance measured on lavapipe (2026-11-30): f32 2.3e-5, fp16
/// 9.2e-6, int4 3.3e-5, int8 4.1e-5, the same by prefill and by decode.
const TOLERANCE: f32 = 1.2e-4;

#[test]
fn gpu_forward_matches_cpu_twin_for_every_weight_type() {
    for dtype in [DType::F32, DType::F16, DType::Int4, DType::Int8] {
        let dir = support::temp_dir(&format!("engine-{}", dtype.name()));
        let manifest = convert::synth(tiny_config(), &dir, dtype, 7, 64 << 10, false).expect("synth");
        assert!(manifest.shards.len() > 1, "small shards should split the model");
        let seq = tokens(21);
        let want = support::cpu_twin(&dir).forward(&seq, KvType::F16);
        // Prefill chunk 8 < sequence: chunked prefill through sliding-window rings.
        let mut gpu = support::engine(&dir, 64, 8, KvType::F16);
        pollster::block_on(async {
            let prefill = gpu.logits(&seq, false).await.expect("prefill logits");
            let err = support::max_abs_diff(&prefill, &want.logits);
            println!("{}: prefill max |GPU - CPU| logit = {err:.2e}", dtype.name());
            assert!(err < TOLERANCE, "{} prefill logits differ by {err}", dtype.name());
            gpu.reset();
            let decode = gpu.logits(&seq, true).await.expect("decode logits");
            let err = support::max_abs_diff(&decode, &want.logits);
            println!("{}: decode max |GPU - CPU| logit = {err:.2e}", dtype.name());
            assert!(err < TOLERANCE, "{} decode logits differ by {err}", dtype.name());
            // Greedy sampling on the GPU picks the CPU's arg-max.
            gpu.reset();
            let next = gpu.step(&seq, &Sampling::GREEDY).await.expect("step");
            let v = gpu.config.vocab_size as usize;
            let last = &want.logits[(seq.len() - 1) * v..];
            let argmax = last.iter().enumerate().fold(0, |b, (i, x)| if *x > last[b] { i } else { b });
            assert_eq!(next as usize, argmax, "{}: greedy token", dtype.name());
            assert_eq!(gpu.last_step.readback_bytes, 4);
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
