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
        let params = GenerateParams { max_tokens: 12, sampling, stop: vec![], special_tokens: false, ..Default::default() };
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
        let params = GenerateParams { max_tokens: 12, sampling, stop: vec![stop.clone()], special_tokens: false, ..Default::default() };
        session.reset();
        let text = pollster::block_on(session.generate_ids(&prompt, &params, &mut |_| {}, &|| false)).expect("generate");
        assert_eq!(session.stats.finish, Finish::Stop, "{text:?} {stop:?}");
        assert_eq!(session.context_tokens() as usize, prompt.len() + cut, "{text:?}");
        // Continuing from that cache (its prefix reused) gives what a fresh run gives.
        let longer: Vec<u32> = prompt.iter().chain(&want[..cut]).copied().collect();
        let params = GenerateParams { max_tokens: 6, sampling, stop: vec![], special_tokens: false, ..Default::default() };
        let text = pollster::block_on(session.generate_ids(&longer, &params, &mut |_| {}, &|| false)).expect("generate");
        assert_eq!(session.stats.reused_tokens as usize, longer.len() - 1, "the cached prefix is reused");
        assert_eq!(ids(&text), stepped(&mut session.engine, &longer, &sampling, 6), "{sampling:?} after a stop");
        session.reset();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_abort_stops_a_long_prefill_between_chunks_and_the_cache_keeps_what_ran() {
    use gemma_webgpu::session::{Finish, GenerateParams, Session};
    use gemma_webgpu::Error;
    use std::cell::Cell;
    let dir = support::temp_dir("engine-prefill-abort");
    convert::synth(tiny_config(), &dir, DType::Int4, 12, 64 << 10, false).expect("synth");
    // 100 tokens in chunks of 8: 12 whole chunks, then 4 tokens with the first draw.
    let prompt = tokens(100);
    let mut session = Session::new(support::engine(&dir, 128, 8, KvType::F16), None);
    let sampling = Sampling { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 9 };
    let want = stepped(&mut session.engine, &prompt, &sampling, 6);
    session.reset();
    let params = GenerateParams { max_tokens: 6, sampling, stop: vec![], special_tokens: false, ..Default::default() };

    // The caller aborts at its 3rd poll: before the 3rd chunk, so 2 chunks ran (before the
    // chunked prefill, the whole prompt ran before the first poll).
    let polls = Cell::new(0);
    let aborted = || {
        polls.set(polls.get() + 1);
        polls.get() >= 3
    };
    let e = pollster::block_on(session.generate_ids(&prompt, &params, &mut |_| panic!("no text"), &aborted)).unwrap_err();
    assert_eq!(e, Error::Aborted("generation"));
    assert_eq!(polls.get(), 3);
    assert_eq!(session.stats.finish, Finish::Abort);
    assert_eq!(session.context_tokens(), 16, "the two chunks that ran stay cached");

    // The session is usable: the same prompt reuses the 16 tokens and gives what stepping gives.
    let text = pollster::block_on(session.generate_ids(&prompt, &params, &mut |_| {}, &|| false)).expect("generate");
    assert_eq!(session.stats.reused_tokens, 16);
    let ids: Vec<u32> = text.split_whitespace().map(|t| t.parse().expect("an id")).collect();
    assert_eq!(ids, want);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_empty_prompt_is_refused_and_a_huge_one_before_it_is_tokenized() {
    use gemma_webgpu::session::{GenerateParams, Session};
    use gemma_webgpu::tokenizer::{Message, Tokenizer};
    use gemma_webgpu::Error;
    use std::rc::Rc;
    let dir = support::temp_dir("engine-prompts");
    convert::synth(tiny_config(), &dir, DType::Int4, 13, 64 << 10, false).expect("synth");
    let tok = Rc::new(Tokenizer::from_json(include_bytes!("fixtures/tiny-tokenizer.json"), 2).expect("tokenizer"));
    let mut session = Session::new(support::engine(&dir, 64, 8, KvType::F16), Some(tok.clone()));
    let params = GenerateParams { max_tokens: 2, ..Default::default() };
    let generate = |s: &mut Session, p: &str| pollster::block_on(s.generate(p, &params, &mut |_| {}, &|| false));

    let e = generate(&mut session, "").unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { what: "prompt", .. }), "{e}");
    assert!(e.to_string().contains("empty"), "{e}");

    // Too long for the 64-token context by its length: the error counts the bound on its
    // tokens that the length gives, not the tokens themselves (it was never tokenized).
    let long = "the sky is blue. ".repeat(400);
    let bound = 1 + tok.min_tokens(&long);
    let exact = tok.encode(&long).expect("encode").len() as u64;
    assert!(bound > 64 && bound < exact, "bound {bound}, tokens {exact}");
    match generate(&mut session, &long) {
        Err(Error::ContextOverflow { needed, max_context: 64, .. }) => assert_eq!(needed, bound),
        other => panic!("{other:?}"),
    }
    // 64 MiB is refused the same way (tokenizing it would take seconds and gigabytes).
    let huge = "a".repeat(64 << 20);
    assert!(matches!(generate(&mut session, &huge), Err(Error::ContextOverflow { .. })));
    let chat = [Message { role: "user".into(), content: huge }];
    assert!(matches!(pollster::block_on(session.chat(&chat, &params, &mut |_| {}, &|| false)), Err(Error::ContextOverflow { .. })));
    // A prompt whose length allows it but whose tokens do not is still refused, after tokenizing.
    let short = "the sky is blue. ".repeat(30);
    assert!(tok.min_tokens(&short) < 64 && tok.encode(&short).expect("encode").len() > 64);
    assert!(matches!(generate(&mut session, &short), Err(Error::ContextOverflow { .. })));
    // And the session still generates.
    assert!(generate(&mut session, "the sky").is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_lost_device_is_named_and_a_new_engine_works() {
    use gemma_webgpu::session::{GenerateParams, Session};
    use gemma_webgpu::Error;
    let dir = support::temp_dir("engine-device-lost");
    convert::synth(tiny_config(), &dir, DType::Int4, 14, 64 << 10, false).expect("synth");
    let params = GenerateParams { max_tokens: 4, sampling: Sampling::GREEDY, stop: vec![], special_tokens: false, ..Default::default() };
    let prompt = tokens(12);
    let mut session = Session::new(support::engine(&dir, 64, 8, KvType::F16), None);
    let want = pollster::block_on(session.generate_ids(&prompt, &params, &mut |_| {}, &|| false)).expect("generate");
    // As a GPU reset would: every call after it is refused by name (before, a read-back error).
    session.engine.ctx.device.destroy();
    for _ in 0..2 {
        let e = pollster::block_on(session.generate_ids(&prompt, &params, &mut |_| {}, &|| false)).unwrap_err();
        assert!(matches!(&e, Error::DeviceLost { .. }), "{e}");
        assert!(e.to_string().contains("load the model again"), "{e}");
    }
    assert!(matches!(pollster::block_on(session.logits(&prompt)), Err(Error::DeviceLost { .. })));
    // Loading again (a new device) works, and generates the same.
    let mut again = Session::new(support::engine(&dir, 64, 8, KvType::F16), None);
    assert_eq!(pollster::block_on(again.generate_ids(&prompt, &params, &mut |_| {}, &|| false)).expect("generate"), want);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn logit_bias_penalties_and_logprobs_through_generation() {
    use gemma_webgpu::ops::logits::LogitRules;
    use gemma_webgpu::session::{GenerateParams, Session};
    let dir = support::temp_dir("engine-logit-rules");
    convert::synth(tiny_config(), &dir, DType::Int4, 15, 64 << 10, false).expect("synth");
    let prompt = tokens(10);
    let mut session = Session::new(support::engine(&dir, 128, 8, KvType::F16), None);
    let ids = |text: &str| -> Vec<u32> { text.split_whitespace().map(|t| t.parse().expect("an id")).collect() };
    let mut run = |sampling: Sampling, max_tokens: u32, rules: LogitRules| {
        session.reset();
        let params = GenerateParams { max_tokens, sampling, rules, ..Default::default() };
        let text = pollster::block_on(session.generate_ids(&prompt, &params, &mut |_| {}, &|| false)).expect("generate");
        (ids(&text), session.logprobs.borrow().clone())
    };
    let (plain, none) = run(Sampling::GREEDY, 24, LogitRules::default());
    assert!(none.is_empty(), "no log-probabilities unless asked");

    // +100 makes a token first (and every time); -100 never lets one out, even sampled.
    let (first, _) = run(Sampling::GREEDY, 4, LogitRules { logit_bias: vec![(77, 100.0)], ..Default::default() });
    assert_eq!(first, vec![77; 4]);
    let banned = plain[0];
    let hot = Sampling { temperature: 1.5, top_k: 0, top_p: 1.0, seed: 3 };
    let (sampled, _) = run(hot, 48, LogitRules { logit_bias: vec![(banned, -100.0)], ..Default::default() });
    assert!(!sampled.contains(&banned), "{banned} in {sampled:?}");
    let (unbanned, _) = run(Sampling::GREEDY, 1, LogitRules { logit_bias: vec![(banned, -100.0)], ..Default::default() });
    assert_ne!(unbanned[0], banned);

    // Log-probabilities: greedy draws are their own top 1, and a probability at most 1.
    let (same, lps) = run(Sampling::GREEDY, 24, LogitRules { top_logprobs: Some(5), ..Default::default() });
    assert_eq!(same, plain, "asking for log-probabilities changes no draw");
    assert_eq!(lps.len(), same.len());
    for (t, lp) in same.iter().zip(&lps) {
        assert_eq!((lp.id, lp.top.len()), (*t, 5));
        assert_eq!(lp.top[0].0, *t);
        assert!((lp.logprob - lp.top[0].1).abs() < 1e-6 && lp.logprob <= 0.0, "{lp:?}");
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1), "{lp:?}");
    }

    // Penalties: greedy text repeats itself less with them (the kernel tests check the rule).
    let repeats = |v: &[u32]| v.len() - v.iter().collect::<std::collections::BTreeSet<_>>().len();
    let (penalized, _) = run(Sampling::GREEDY, 24, LogitRules { frequency_penalty: 2.0, presence_penalty: 2.0, repetition_penalty: 1.5, ..Default::default() });
    println!("greedy: {plain:?} ({} repeats)\npenalized: {penalized:?} ({} repeats)", repeats(&plain), repeats(&penalized));
    assert!(repeats(&plain) > 0, "the unpenalized text should repeat tokens for this test to mean something");
    assert!(repeats(&penalized) < repeats(&plain));
    // Bad rules are named errors.
    session.reset();
    let bad = GenerateParams { rules: LogitRules { top_logprobs: Some(21), ..Default::default() }, ..Default::default() };
    let e = pollster::block_on(session.generate_ids(&prompt, &bad, &mut |_| {}, &|| false)).unwrap_err();
    assert!(e.to_string().contains("top_logprobs"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A constraint for the tests: only multiples of 3, token 9 forced after every third drawn
/// token, finished after `limit` tokens (or anything, with `any`).
struct Thirds {
    words: Vec<u32>,
    taken: Vec<u32>,
    any: bool,
    limit: usize,
}

impl Thirds {
    fn new(vocab: u32, any: bool, limit: usize) -> Self {
        let words = (0..vocab.div_ceil(32)).map(|w| (0..32).filter(|b| any || (w * 32 + b).is_multiple_of(3)).fold(0u32, |m, b| m | 1 << b)).collect();
        Self { words, taken: Vec::new(), any, limit }
    }
}

impl gemma_webgpu::session::TokenConstraint for Thirds {
    fn mask(&mut self) -> gemma_webgpu::Result<&[u32]> {
        Ok(&self.words)
    }
    fn consume(&mut self, token: u32) -> gemma_webgpu::Result<()> {
        if !self.any && !token.is_multiple_of(3) {
            return Err(gemma_webgpu::Error::Format(format!("token {token} is not allowed")));
        }
        self.taken.push(token);
        Ok(())
    }
    fn forced(&mut self) -> gemma_webgpu::Result<Vec<u32>> {
        Ok(if !self.any && self.taken.len() % 4 == 3 { vec![9] } else { vec![] })
    }
    fn is_finished(&self) -> bool {
        self.taken.len() >= self.limit
    }
}

#[test]
fn constrained_generation_draws_only_allowed_tokens_and_appends_forced_ones() {
    use gemma_webgpu::session::{Finish, GenerateParams, Session};
    let dir = support::temp_dir("engine-constrained");
    convert::synth(tiny_config(), &dir, DType::Int4, 16, 64 << 10, false).expect("synth");
    let prompt = tokens(11);
    let mut session = Session::new(support::engine(&dir, 128, 8, KvType::F16), None);
    let ids = |text: &str| -> Vec<u32> { text.split_whitespace().map(|t| t.parse().expect("an id")).collect() };
    let hot = Sampling { temperature: 1.2, top_k: 0, top_p: 1.0, seed: 8 };
    let params = GenerateParams { max_tokens: 40, sampling: hot, ..Default::default() };
    // A mask that allows everything draws what the unconstrained (pipelined) path draws: the
    // forward pass and the draw, submitted apart, are the same step.
    let free = ids(&pollster::block_on(session.generate_ids(&prompt, &params, &mut |_| {}, &|| false)).expect("generate"));
    session.reset();
    let mut any = Thirds::new(512, true, free.len());
    let same = ids(&pollster::block_on(session.generate_constrained(&prompt, &params, &mut any, &mut |_| {}, &|| false)).expect("constrained"));
    assert_eq!(same, free[..same.len()], "an all-allowing mask changes nothing");

    for seed in 0..4 {
        session.reset();
        let params = GenerateParams { max_tokens: 40, sampling: Sampling { seed, ..hot }, ..Default::default() };
        let mut c = Thirds::new(512, false, 10);
        let got = ids(&pollster::block_on(session.generate_constrained(&prompt, &params, &mut c, &mut |_| {}, &|| false)).expect("constrained"));
        assert_eq!(got, c.taken, "the text is the tokens taken");
        assert_eq!(got.len(), 10, "{got:?}");
        assert_eq!(session.stats.finish, Finish::Eos, "finished by the constraint");
        assert!(got.iter().all(|t| t.is_multiple_of(3)), "{got:?}");
        assert_eq!((got[3], got[7]), (9, 9), "forced after every third drawn token: {got:?}");
        assert_eq!(session.context_tokens() as usize, prompt.len() + 9, "the last token is never decoded");
    }
    // The budget ends a constrained generation inside its structure.
    session.reset();
    let short = GenerateParams { max_tokens: 5, sampling: hot, ..Default::default() };
    let mut c = Thirds::new(512, false, 10);
    let got = ids(&pollster::block_on(session.generate_constrained(&prompt, &short, &mut c, &mut |_| {}, &|| false)).expect("constrained"));
    assert_eq!((got.len(), session.stats.finish), (5, Finish::Length));
    let _ = std::fs::remove_dir_all(&dir);
}
