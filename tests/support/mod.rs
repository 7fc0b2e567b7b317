//! Helpers shared by the whole-model tests (native and in Chromium): comparisons and a greedy
//! loop through the engine. Each test binary uses some of them.
#![allow(dead_code)]

use gemma_webgpu::model::engine::Engine;
use gemma_webgpu::ops::sample::Sampling;

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Index of the largest value (the first of equal ones).
pub fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |b, (i, x)| if *x > row[b] { i } else { b })
}

/// `n` greedy tokens after `prompt`, from an empty cache: prefill, then one decode per token.
pub async fn greedy(gpu: &mut Engine, prompt: &[u32], n: usize) -> Vec<u32> {
    gpu.reset();
    let mut out = vec![gpu.step(prompt, &Sampling::GREEDY).await.expect("prefill")];
    while out.len() < n {
        let last = out[out.len() - 1];
        out.push(gpu.step(&[last], &Sampling::GREEDY).await.expect("decode"));
    }
    out
}
