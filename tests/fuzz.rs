//! Mutation fuzzing of every parser of untrusted bytes: the manifest, `config.json`, the
//! safetensors header, the GGUF header (with the config and tokenizer built from it) and
//! `tokenizer.json`. Each starts from real files (the fixtures, the real 270M GGUF's header)
//! and tries a fixed number of mutants, deterministic by seed: bits flipped, bytes set,
//! truncations, slices duplicated, 8-byte fields set to extreme values, and (for JSON) numbers
//! replaced by extreme ones. Every input must be accepted or answered by an error: no panic,
//! and no single allocation beyond `ALLOC_CAP` (a counting allocator watches this binary).
//!
//! `GEMMA_FUZZ_SCALE=N` multiplies the counts for a longer run (the test command runs 1x, about
//! a minute in all on 2 cores).
#![cfg(not(target_arch = "wasm32"))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use gemma_webgpu::convert::{convert_in_memory, gguf::Gguf, safetensors::Checkpoint};
use gemma_webgpu::format::Manifest;
use gemma_webgpu::model::config::ModelConfig;
use gemma_webgpu::quant::DType;
use gemma_webgpu::tokenizer::Tokenizer;

/// The largest single allocation a parser may make from any input.
const ALLOC_CAP: usize = 512 << 20;

struct Counting;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // Refuse what no parser should ask for, so a bug shows as a failed test, not an abort.
        if layout.size() > 2 * ALLOC_CAP {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        if new_size > 2 * ALLOC_CAP {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const EXTREMES: [u64; 8] = [0, 1, u32::MAX as u64, u32::MAX as u64 + 1, i64::MAX as u64, u64::MAX, 1 << 40, 0x8000_0000];
const JSON_EXTREMES: [&str; 9] = ["0", "-1", "4294967295", "4294967296", "18446744073709551615", "1e308", "-1e308", "0.0", "null"];

/// 1 to 4 mutations of `seed`, applied in place; `json` adds number replacement.
fn mutate(rng: &mut Rng, seed: &[u8], json: bool, hot: usize) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        // Most mutations land in the first `hot` bytes (a header), some anywhere.
        let span = if rng.below(4) == 0 { b.len() } else { hot.min(b.len()) };
        let at = rng.below(span.max(1));
        let last = b.len().saturating_sub(1);
        match rng.below(if json { 7 } else { 6 }) {
            0 if !b.is_empty() => b[at.min(last)] ^= 1 << rng.below(8),
            1 if !b.is_empty() => b[at.min(last)] = rng.next() as u8,
            2 => b.truncate(at),
            3 => {
                let len = rng.below(64.min(b.len().saturating_sub(at)) + 1);
                let slice = b[at..(at + len).min(b.len())].to_vec();
                let to = rng.below(b.len() + 1);
                b.splice(to..to, slice);
            }
            4 if b.len() >= 8 => {
                let at = at.min(b.len() - 8);
                b[at..at + 8].copy_from_slice(&EXTREMES[rng.below(EXTREMES.len())].to_le_bytes());
            }
            5 if b.len() >= 4 => {
                let at = at.min(b.len() - 4);
                b[at..at + 4].copy_from_slice(&(EXTREMES[rng.below(EXTREMES.len())] as u32).to_le_bytes());
            }
            6 => {
                // Replace the number starting at or after `at` by an extreme one.
                if let Some(start) = b[at.min(b.len())..].iter().position(|c| c.is_ascii_digit()).map(|p| p + at) {
                    let end = b[start..].iter().position(|c| !(c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'-'))).map_or(b.len(), |p| p + start);
                    let with = JSON_EXTREMES[rng.below(JSON_EXTREMES.len())].as_bytes().to_vec();
                    b.splice(start..end, with);
                }
            }
            _ => {}
        }
    }
    b
}

/// Figures of one parser's run.
struct Run {
    tried: usize,
    accepted: usize,
    panics: Vec<String>,
}

/// `count` mutants of each seed through `parse` (true: accepted, false: an error).
fn fuzz(name: &str, seeds: &[Vec<u8>], count: usize, json: bool, hot: usize, seed: u64, parse: &dyn Fn(&[u8]) -> bool) -> Run {
    let scale: usize = std::env::var("GEMMA_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut rng = Rng(seed | 1);
    let mut run = Run { tried: 0, accepted: 0, panics: Vec::new() };
    let t = Instant::now();
    for s in seeds {
        assert!(parse(s), "{name}: an unmutated seed must parse");
    }
    for i in 0..count * scale {
        let s = &seeds[i % seeds.len()];
        let input = mutate(&mut rng, s, json, hot);
        run.tried += 1;
        match catch_unwind(AssertUnwindSafe(|| parse(&input))) {
            Ok(true) => run.accepted += 1,
            Ok(false) => {}
            Err(p) => {
                let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                run.panics.push(format!("input #{i} ({} bytes): {msg}", input.len()));
            }
        }
    }
    println!(
        "{name}: {} inputs from {} seeds in {:.1} s, {} accepted, {} refused by an error, {} panics",
        run.tried,
        seeds.len(),
        t.elapsed().as_secs_f64(),
        run.accepted,
        run.tried - run.accepted - run.panics.len(),
        run.panics.len()
    );
    run
}

fn check(name: &str, run: Run) {
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(run.panics.is_empty(), "{name}: {} panics, e.g. {:?}", run.panics.len(), &run.panics[..run.panics.len().min(5)]);
    assert!(largest <= ALLOC_CAP, "{name}: an allocation of {largest} bytes (cap {ALLOC_CAP})");
    assert!(run.tried > 0);
}

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

const CONFIGS: [&str; 5] =
    ["tiny-f32/config.json", "tiny-bf16-gqa3/config.json", "tiny-gemma3/config.json", "tiny-gemma3-rope-linear/config.json", "tiny-f32/config.json"];

#[test]
fn fuzz_config_json() {
    let seeds: Vec<Vec<u8>> = CONFIGS.iter().map(|c| fixture(c)).collect();
    let run = fuzz("config.json", &seeds, 20_000, true, usize::MAX, 1, &|b| ModelConfig::from_hf_json(&String::from_utf8_lossy(b)).is_ok());
    check("config.json", run);
}

#[test]
fn fuzz_manifest() {
    let seeds: Vec<Vec<u8>> = [("tiny-f32", DType::Int4), ("tiny-bf16-gqa3", DType::F16), ("tiny-gemma3", DType::Q4_0)]
        .iter()
        .map(|(dir, dtype)| {
            let mut ck = Checkpoint::default();
            ck.add_bytes("model.safetensors", fixture(&format!("{dir}/model.safetensors"))).expect("fixture");
            let config = String::from_utf8(fixture(&format!("{dir}/config.json"))).expect("utf-8");
            let (m, _) = convert_in_memory(&config, &ck, *dtype, 16 << 10).expect("convert");
            m.to_json().into_bytes()
        })
        .collect();
    let run = fuzz("manifest.json", &seeds, 6_000, true, usize::MAX, 2, &|b| Manifest::from_json(&String::from_utf8_lossy(b)).is_ok());
    check("manifest.json", run);
}

#[test]
fn fuzz_safetensors_header() {
    let seeds: Vec<Vec<u8>> =
        ["tiny-f32/model.safetensors", "tiny-bf16-gqa3/model.safetensors", "tiny-gemma3/model.safetensors"].iter().map(|f| fixture(f)).collect();
    // Mutations mostly in the header (its length field and JSON).
    let hot = seeds.iter().map(|s| 8 + u64::from_le_bytes(s[..8].try_into().unwrap()) as usize).max().unwrap_or(0);
    let run = fuzz("safetensors", &seeds, 6_000, true, hot, 3, &|b| {
        let mut ck = Checkpoint::default();
        ck.add_bytes("x.safetensors", b.to_vec()).is_ok()
    });
    check("safetensors", run);
}

#[test]
fn fuzz_tokenizer_json() {
    let seeds = vec![fixture("tiny-tokenizer.json")];
    let run = fuzz("tokenizer.json", &seeds, 4_000, true, usize::MAX, 4, &|b| Tokenizer::from_json(b, 2).is_ok());
    check("tokenizer.json", run);
}

#[test]
fn fuzz_gguf_header() {
    // The real 270M's header (its 262k-token vocabulary included) and first tensor bytes; the
    // file is where the test command puts it (scripts/fetch-test-data.sh).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-data/gemma-3-270m-q4_k_m.gguf");
    let file = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}: run `bash scripts/fetch-test-data.sh`", path.display()));
    let g = Gguf::from_bytes(file.clone()).expect("the real file parses");
    // The header, and a whole small file built from its first bytes: the header parse, the
    // config and the tokenizer (which read the metadata) on every mutant.
    let head = file[..g.data_start as usize].to_vec();
    drop(file);
    let parse = |b: &[u8]| match Gguf::from_prefix(b, b.len() as u64 + (1 << 30), "x.gguf") {
        Ok(Some(g)) => {
            let config = g.hf_config_json().and_then(|c| ModelConfig::from_hf_json(&c));
            let tok = g.tokenizer_json().and_then(|t| Tokenizer::from_json(t.as_bytes(), 2));
            config.is_ok() && tok.is_ok()
        }
        Ok(None) | Err(_) => false,
    };
    // Mutations mostly in the first 64 KiB: the counts, the config keys and the start of the
    // vocabulary (a mutant that leaves all of those alone only re-parses the same tokens).
    let run = fuzz("GGUF header", &[head], 120, false, 64 << 10, 5, &parse);
    check("GGUF header", run);
}
