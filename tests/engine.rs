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

/// Tokens stepping one at a time (`Engine::step`, each read back before the next is
/// submitted), as generation ran before it was pipelined: up to `max` tokens after `prompt`.
fn stepped(gpu: &mut gemma_webgpu::model::engine::Engine, prompt: &[u32], sampling: &Sampling, max: usize) -> Vec<u32> {
    pollster::block_on(async {
        gpu.reset();
        let mut out = vec![gpu.step(prompt, sampling).await.expect("prefill")];
        while out.len() < max {
            let last = out[out.len() - 1];
            out.push(gpu.step(&[last], sampling).await.expect("decode"));
        }
        out
    })
}

#[test]
fn pipelined_generation_matches_stepping_one_at_a_time() {
    use gemma_webgpu::session::{Finish, GenerateParams, Session};
    let dir = support::temp_dir("engine-pipelined");
    convert::synth(tiny_config(), &dir, DType::Int4, 11, 64 << 10, false).expect("synth");
    let prompt = tokens(9);
    let mut session = Session::new(support::engine(&dir, 64, 8, KvType::F16), None);
    let ids = |text: &str| -> Vec<u32> { text.split_whitespace().map(|t| t.parse().expect("an id")).collect() };
    for sampling in [Sampling::GREEDY, Sampling { temperature: 1.0, top_k: 20, top_p: 0.9, seed: 5 }] {
        let want = stepped(&mut session.engine, &prompt, &sampling, 12);
        session.reset();
        // Generation pipelines its steps (the next submitted before a token is read).
        let params = GenerateParams { max_tokens: 12, sampling, stop: vec![], special_tokens: false };
        let text = pollster::block_on(session.generate_ids(&prompt, &params, &mut |_| {}, &|| false)).expect("generate");
        assert_eq!(ids(&text), want, "{sampling:?}");
        assert_eq!(session.stats.finish, Finish::Length);
        assert_eq!(session.context_tokens() as usize, prompt.len() + 11, "the 12th token is never decoded");
        // A stop string ends generation at the 5th token: the step submitted for it is
        // discarded, and the cache holds exactly the prompt and the 4 tokens before it.
        let stop = format!(" {} ", want[4]);
        // (The text is "id id ...": the stop string, with its leading space, first matches at
        // the first token after the first one that equals the 5th.)
        let cut = 1 + want[1..].iter().position(|t| format!(" {t} ") == stop).expect("the 5th token");
        let params = GenerateParams { max_tokens: 12, sampling, stop: vec![stop.clone()], special_tokens: false };
        session.reset();
        let text = pollster::block_on(session.generate_ids(&prompt, &params, &mut |_| {}, &|| false)).expect("generate");
        assert_eq!(session.stats.finish, Finish::Stop, "{text:?} {stop:?}");
        assert_eq!(session.context_tokens() as usize, prompt.len() + cut, "{text:?}");
        // Continuing from that cache (its prefix reused) gives what a fresh run gives.
        let longer: Vec<u32> = prompt.iter().chain(&want[..cut]).copied().collect();
        let params = GenerateParams { max_tokens: 6, sampling, stop: vec![], special_tokens: false };
        let text = pollster::block_on(session.generate_ids(&longer, &params, &mut |_| {}, &|| false)).expect("generate");
        assert_eq!(session.stats.reused_tokens as usize, longer.len() - 1, "the cached prefix is reused");
        assert_eq!(ids(&text), stepped(&mut session.engine, &longer, &sampling, 6), "{sampling:?} after a stop");
        session.reset();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
