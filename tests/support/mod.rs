//! Helpers shared by the whole-model tests (native and in Chromium): fixtures, conversion, the
//! engine and its CPU twin, the reference files the tools/ scripts record, comparisons and a
//! greedy loop. Each test binary uses some of them.
#![allow(dead_code)]

use gemma_webgpu::convert::safetensors::Checkpoint;
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

/// How many of `want`'s tokens greedy generation after `prompt` reproduces before the first
/// difference (from an empty cache: prefill, then one decode per token). Stops at the first
/// difference: the count is what `greedy` followed by a leading-match count gives, without
/// decoding the tokens after it.
pub async fn greedy_agreement(gpu: &mut Engine, prompt: &[u32], want: &[u32]) -> usize {
    gpu.reset();
    let mut next = gpu.step(prompt, &Sampling::GREEDY).await.expect("prefill");
    for (i, w) in want.iter().enumerate() {
        if next != *w {
            return i;
        }
        if i + 1 < want.len() {
            next = gpu.step(&[next], &Sampling::GREEDY).await.expect("decode");
        }
    }
    want.len()
}

/// `greedy_agreement` read off one forward pass instead of a decode step per token: the
/// prompt is prefilled and its next token drawn greedily, then `want` (HF's continuation) is
/// run through in prefill chunks, and the argmax after each of its tokens must be the next
/// one. While the argmaxes agree the inputs are the same as in greedy decoding, so the count
/// is the same (up to the difference between the prefill and decode kernels, which the tiny
/// models check at every position).
pub async fn teacher_forced_agreement(gpu: &mut Engine, prompt: &[u32], want: &[u32]) -> usize {
    gpu.reset();
    let first = gpu.step(prompt, &Sampling::GREEDY).await.expect("prefill");
    if want.is_empty() || first != want[0] {
        return 0;
    }
    let v = gpu.config.vocab_size as usize;
    let logits = gpu.logits(&want[..want.len() - 1], false).await.expect("logits");
    1 + logits.chunks(v).zip(&want[1..]).take_while(|(row, w)| argmax(row) == **w as usize).count()
}

/// A reference file recorded by `tools/make_*.py` (safetensors of ids and f32 tensors).
pub struct Reference(Checkpoint);

impl Reference {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut ck = Checkpoint::default();
        ck.add_bytes("reference.safetensors", bytes.to_vec()).expect("reference file");
        Self(ck)
    }

    /// Token ids (stored as i32).
    pub fn ids(&self, name: &str) -> Vec<u32> {
        self.0.read_i32(name).unwrap_or_else(|e| panic!("{name}: {e}")).into_iter().map(|v| v as u32).collect()
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        self.0.read_f32(name).unwrap_or_else(|e| panic!("{name}: {e}")).1
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use gemma_webgpu::convert::{self, Quant};
    use gemma_webgpu::format::Manifest;
    use gemma_webgpu::gpu::{ContextOptions, GpuContext};
    use gemma_webgpu::model::cpu::CpuModel;
    use gemma_webgpu::model::engine::{Engine, EngineOptions, KvType};
    use gemma_webgpu::model::load::{read_manifest, read_shard};

    use super::Reference;

    /// `tests/fixtures/<name>`.
    pub fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    /// A fresh directory under the system's temporary directory (unique per call and process).
    pub fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!("gemma-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Convert the Hugging Face fixture `name` into a fresh directory, with small shards (so
    /// models span several of them, as real ones do).
    pub fn convert_to(name: &str, quant: impl Into<Quant>, shard_bytes: u64) -> (PathBuf, Manifest) {
        let quant = quant.into();
        let out = temp_dir(&format!(
            "{name}-{}-{}",
            quant.matrices.map_or("keep", gemma_webgpu::quant::DType::name),
            quant.embedding.map_or("keep", gemma_webgpu::quant::DType::name)
        ));
        let m = convert::convert_hf(&fixture(name), &out, quant, shard_bytes, false).expect("convert");
        (out, m)
    }

    /// The fixture's recorded reference.
    pub fn reference(name: &str) -> Reference {
        Reference::from_bytes(&std::fs::read(fixture(name).join("reference.safetensors")).expect("reference file"))
    }

    /// The engine on the native adapter (no adapter is a failure, never a skip).
    pub fn engine(dir: &Path, max_context: u32, prefill_chunk: u32, kv: KvType) -> Engine {
        pollster::block_on(async {
            let ctx = GpuContext::new(&ContextOptions::default()).await.expect("adapter");
            Engine::load_dir(ctx, dir, EngineOptions::with_context(max_context, prefill_chunk, kv)).await.expect("load")
        })
    }

    /// The CPU twin of the model in `dir`.
    pub fn cpu_twin(dir: &Path) -> CpuModel {
        let manifest = read_manifest(dir).expect("manifest");
        CpuModel::from_manifest(&manifest, &|i| read_shard(dir, &manifest, i)).expect("cpu twin")
    }
}
