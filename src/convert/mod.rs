//! Writing models in our format: `gemma convert` from a Hugging Face checkpoint or a GGUF file
//! (both read through `TensorSource`, so they share the checks and the writer), and
//! `gemma synth`, a seeded random model of a real shape for benchmarks and memory tests.
//! Output goes to a directory, or stays in memory (`ShardWriter::in_memory`), which is how the
//! browser tests convert a fixture without a file system.

pub mod gguf;
pub mod safetensors;
pub mod stream;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::error::{Error, Result};
use crate::format::{self, Manifest, PartEntry, ShardEntry, TensorEntry};
use crate::gpu::weights::rows_per_part;
use crate::model::config::ModelConfig;
use crate::model::tensors;
use crate::quant::{DType, Packed, INT4_GROUP};

/// Finished shards handed on by a streamed conversion: (index, bytes).
pub type ShardBytes = Vec<(usize, Vec<u8>)>;

/// Where shard bytes go.
enum Sink {
    Dir(PathBuf),
    Memory(Vec<Vec<u8>>),
}

/// Appends tensor parts to shards of at most `max_bytes`, hashing as it writes.
pub struct ShardWriter {
    sink: Sink,
    max_bytes: u64,
    shards: Vec<ShardEntry>,
    open: Option<(Option<File>, sha2::Sha256)>,
    tensors: Vec<TensorEntry>,
    pub bytes_written: u64,
}

impl ShardWriter {
    pub fn new(dir: &Path, max_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Format(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Self::with_sink(Sink::Dir(dir.to_path_buf()), max_bytes))
    }

    /// Keep the shards in memory (see `finish_in_memory`).
    pub fn in_memory(max_bytes: u64) -> Self {
        Self::with_sink(Sink::Memory(Vec::new()), max_bytes)
    }

    fn with_sink(sink: Sink, max_bytes: u64) -> Self {
        Self { sink, max_bytes, shards: Vec::new(), open: None, tensors: Vec::new(), bytes_written: 0 }
    }

    fn close_shard(&mut self) {
        if let Some((_, hasher)) = self.open.take() {
            if let Some(last) = self.shards.last_mut() {
                last.sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
            }
        }
    }

    /// Append one packed tensor, split into parts that fit a shard.
    pub fn add(&mut self, name: &str, packed: &Packed) -> Result<()> {
        self.append(name, [packed.rows, packed.cols], packed, 0)
    }

    /// Append rows `first_row..first_row + packed.rows` of tensor `name` (`shape` rows in all):
    /// a tensor may arrive in several calls, in order, when it is read in bounded ranges.
    pub fn append(&mut self, name: &str, shape: [usize; 2], packed: &Packed, first_row: usize) -> Result<()> {
        let same = self.tensors.last().is_some_and(|t| t.name == name);
        if same && self.tensors.last().is_some_and(|t| DType::from(t.dtype) != packed.dtype) {
            return Err(Error::invalid("shard writer", format!("rows {first_row}.. of {name} are {}, its first rows another type", packed.dtype.name())));
        }
        let next = self.tensors.last().and_then(|t| t.parts.last()).map_or(0, |p| p.row_start as usize + p.rows as usize);
        if (first_row == 0) == same || (same && next != first_row) || packed.cols != shape[1] || first_row + packed.rows > shape[0] {
            return Err(Error::invalid("shard writer", format!("rows {first_row}..+{} of {name} {shape:?} arrive out of order", packed.rows)));
        }
        if first_row == 0 {
            self.tensors.push(TensorEntry {
                name: name.to_string(),
                shape: [shape[0] as u32, shape[1] as u32],
                dtype: packed.dtype.into(),
                group_size: packed.dtype.is_grouped().then_some(INT4_GROUP as u32),
                parts: Vec::new(),
            });
        }
        let per_part = rows_per_part(packed.dtype, packed.cols, self.max_bytes, packed.rows)?;
        let mut parts = Vec::new();
        let mut start = 0;
        while start < packed.rows {
            let end = (start + per_part).min(packed.rows);
            let part = if start == 0 && end == packed.rows { packed.clone() } else { packed.rows_slice(start, end) };
            let bytes: &[u8] = bytemuck::cast_slice(&part.words);
            let len = bytes.len() as u64;
            let fits = self.shards.last().is_some_and(|s| s.size + len <= self.max_bytes) && self.open.is_some();
            if !fits {
                self.close_shard();
                let file = format!("model-{:05}.bin", self.shards.len());
                let handle = match &mut self.sink {
                    Sink::Dir(dir) => Some(File::create(dir.join(&file)).map_err(|e| Error::Format(format!("writing {}: {e}", dir.join(&file).display())))?),
                    Sink::Memory(shards) => {
                        shards.push(Vec::new());
                        None
                    }
                };
                self.shards.push(ShardEntry { file, size: 0, sha256: String::new() });
                self.open = Some((handle, sha2::Sha256::new()));
            }
            let shard = (self.shards.len() - 1) as u32;
            let offset = self.shards[shard as usize].size;
            if let Some((handle, hasher)) = self.open.as_mut() {
                match (handle, &mut self.sink) {
                    (Some(f), _) => f.write_all(bytes).map_err(|e| Error::Format(format!("writing shard: {e}")))?,
                    (None, Sink::Memory(shards)) => shards.last_mut().into_iter().for_each(|s| s.extend_from_slice(bytes)),
                    (None, Sink::Dir(_)) => {}
                }
                hasher.update(bytes);
            }
            self.shards[shard as usize].size += len;
            self.bytes_written += len;
            parts.push(PartEntry { shard, offset, length: len, row_start: (first_row + start) as u32, rows: (end - start) as u32 });
            start = end;
        }
        if let Some(t) = self.tensors.last_mut() {
            t.parts.extend(parts);
        }
        Ok(())
    }

    fn manifest(&mut self, config: ModelConfig, tokenizer: Option<String>) -> Result<Manifest> {
        self.close_shard();
        let manifest = Manifest {
            format: format::FORMAT_NAME.into(),
            format_version: format::FORMAT_VERSION,
            config,
            tokenizer,
            shards: std::mem::take(&mut self.shards),
            tensors: std::mem::take(&mut self.tensors),
        };
        manifest.validate()?;
        Ok(manifest)
    }

    /// Write `manifest.json` (directory output) and return the manifest.
    pub fn finish(mut self, config: ModelConfig, tokenizer: Option<String>) -> Result<Manifest> {
        let manifest = self.manifest(config, tokenizer)?;
        if let Sink::Dir(dir) = &self.sink {
            std::fs::write(dir.join(format::MANIFEST_FILE), manifest.to_json()).map_err(|e| Error::Format(format!("writing manifest: {e}")))?;
        }
        Ok(manifest)
    }

    /// The in-memory shards completed so far that were not taken yet, as (index, bytes): a
    /// streamed conversion hands each on (to the browser cache) as soon as it is full.
    pub fn take_closed(&mut self) -> ShardBytes {
        let open = if self.open.is_some() { self.shards.len().saturating_sub(1) } else { self.shards.len() };
        match &mut self.sink {
            Sink::Memory(shards) => shards.iter_mut().enumerate().take(open).filter(|(_, b)| !b.is_empty()).map(|(i, b)| (i, std::mem::take(b))).collect(),
            Sink::Dir(_) => Vec::new(),
        }
    }

    /// The manifest and the shards not taken by `take_closed` (index, bytes).
    pub fn finish_streamed(mut self, config: ModelConfig, tokenizer: Option<String>) -> Result<(Manifest, ShardBytes)> {
        self.close_shard();
        let rest = self.take_closed();
        let manifest = self.manifest(config, tokenizer)?;
        Ok((manifest, rest))
    }

    /// The manifest and the shards' bytes, for in-memory output.
    pub fn finish_in_memory(mut self, config: ModelConfig) -> Result<(Manifest, Vec<Vec<u8>>)> {
        let manifest = self.manifest(config, None)?;
        match self.sink {
            Sink::Memory(shards) => Ok((manifest, shards)),
            Sink::Dir(_) => Err(Error::invalid("finish_in_memory", "this writer writes to a directory")),
        }
    }
}

/// Storage type of a tensor: norms stay f32, matrices take `quant` (`None`: the source's own).
fn storage_for(name: &str, quant: Quant) -> Option<DType> {
    if tensors::is_norm(name) {
        Some(DType::F32)
    } else if name == tensors::EMBED {
        quant.embedding
    } else {
        quant.matrices
    }
}

/// `dtype`, or for a k-quant and rows that are not whole 256-value super-blocks (the Gemma 3
/// 270M's 640-wide q/k/v/gate/up) the type of the same class whose groups are 32 values:
/// q4_k → int4, q5_k → q5_1, q6_k → int8 (as llama.cpp falls back from its k-quants).
pub fn fallback(dtype: DType, cols: usize) -> DType {
    if cols.is_multiple_of(dtype.group_cols()) {
        return dtype;
    }
    match dtype {
        DType::Q4K => DType::Int4,
        DType::Q5K => DType::Q5_1,
        DType::Q6K => DType::Int8,
        other => other,
    }
}

/// Storage types of a conversion: the decoder layers' matrices, and the embedding (which is
/// also the LM head, and the tensor small models are most sensitive to: an int4 model with an
/// fp16 embedding is much closer to the original). A plain `DType` means both. `None` keeps
/// the source's own type where it has one a kernel reads (a GGUF's blocks, value for value:
/// `Quant::KEEP`), and f32 where it does not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quant {
    pub matrices: Option<DType>,
    pub embedding: Option<DType>,
}

impl Quant {
    /// Every tensor in the source's own type.
    pub const KEEP: Quant = Quant { matrices: None, embedding: None };

    pub fn new(matrices: DType, embedding: DType) -> Self {
        Self { matrices: Some(matrices), embedding: Some(embedding) }
    }
}

impl From<DType> for Quant {
    fn from(d: DType) -> Self {
        Self::new(d, d)
    }
}

/// What a conversion reports after each tensor it writes. `false` is `Silent` and `true`
/// `Stderr`, so callers may pass a plain `bool`.
pub enum Progress<'a> {
    Silent,
    /// On stderr: a bar redrawn in place when stderr is a terminal; otherwise (a log, a pipe)
    /// one plain line at each quarter of the tensors, never a carriage return.
    Stderr,
    /// The caller's own report, given (tensors written, tensors in all, bytes written so far).
    Report(&'a mut dyn FnMut(usize, usize, u64)),
}

impl From<bool> for Progress<'_> {
    fn from(show: bool) -> Self {
        if show {
            Progress::Stderr
        } else {
            Progress::Silent
        }
    }
}

impl Progress<'_> {
    fn report(&mut self, done: usize, total: usize, bytes: u64) {
        match self {
            Progress::Silent => {}
            Progress::Stderr => progress(done, total, bytes),
            Progress::Report(f) => f(done, total, bytes),
        }
    }
}

fn progress(done: usize, total: usize, bytes: u64) {
    use std::io::IsTerminal;
    let mib = bytes as f64 / (1 << 20) as f64;
    if std::io::stderr().is_terminal() {
        eprint!("\r[{:<30}] {done}/{total} tensors, {mib:.1} MiB written", "#".repeat(30 * done / total.max(1)));
        if done == total {
            eprintln!();
        }
    } else if done == total || done * 4 / total.max(1) > (done - 1) * 4 / total.max(1) {
        eprintln!("{}% ({done}/{total} tensors, {mib:.1} MiB written)", 100 * done / total.max(1));
    }
}

/// Where a converter reads tensors: Hugging Face names and shapes, values widened to f32.
/// Implemented by a safetensors `Checkpoint` and by a `Gguf` (which renames, dequantizes and
/// un-shifts its norms to match).
pub trait TensorSource {
    /// The Hugging Face shape of tensor `name`, or `None` if the source lacks it.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Tensor `name` as f32, with its shape.
    fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)>;
    /// Matrix `name` packed in the source's own storage type, if the kernels read that type
    /// (a GGUF's blocks); `None` where the source has no such type.
    fn read_packed(&self, _name: &str) -> Option<Result<Packed>> {
        None
    }
}

impl TensorSource for safetensors::Checkpoint {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.shape.clone())
    }
    fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        safetensors::Checkpoint::read_f32(self, name)
    }
}

/// Convert a Hugging Face Gemma 2 or Gemma 3 (text) checkpoint directory into our format in
/// `out`.
pub fn convert_hf<'a>(hf_dir: &Path, out: &Path, quant: impl Into<Quant>, shard_bytes: u64, show_progress: impl Into<Progress<'a>>) -> Result<Manifest> {
    let quant = quant.into();
    let cfg_path = hf_dir.join("config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::Format(format!("{}: {e}", cfg_path.display())))?;
    let config = ModelConfig::from_hf_json(&cfg_text)?;
    let ck = safetensors::Checkpoint::open_dir(hf_dir)?;
    check_checkpoint(&config, &ck)?;
    let mut w = ShardWriter::new(out, shard_bytes)?;
    write_tensors(&config, &ck, &mut w, quant, show_progress.into())?;
    let tokenizer = copy_tokenizer(hf_dir, out)?;
    w.finish(config, tokenizer)
}

/// Convert a GGUF file (llama.cpp's format; Gemma 2 or Gemma 3) into our format in `out`, with
/// a `tokenizer.json` built from its vocabulary. With `Quant::KEEP` every matrix keeps its GGUF
/// type, value for value (`quant::blocks`); a type given in `quant` re-packs the dequantized
/// values, so an int4 result carries the GGUF's rounding plus ours.
pub fn convert_gguf<'a>(path: &Path, out: &Path, quant: impl Into<Quant>, shard_bytes: u64, show_progress: impl Into<Progress<'a>>) -> Result<Manifest> {
    let quant = quant.into();
    let g = gguf::Gguf::open(path)?;
    let (config, tokenizer) = check_gguf(&g)?;
    let mut w = ShardWriter::new(out, shard_bytes)?;
    write_tensors(&config, &g, &mut w, quant, show_progress.into())?;
    let tokenizer = write_tokenizer(out, &tokenizer)?;
    w.finish(config, Some(tokenizer))
}

/// A GGUF's config and tokenizer, after checking everything a conversion needs before it
/// writes anything: a tied LM head, a Gemma 2/3 config, a vocabulary, every tensor present with
/// the config's shape and of a type we read.
pub(crate) fn check_gguf(g: &gguf::Gguf) -> Result<(ModelConfig, String)> {
    g.check_tied_embeddings()?;
    let config = ModelConfig::from_hf_json(&g.hf_config_json()?)?;
    let tokenizer = g.tokenizer_json()?;
    check_checkpoint(&config, g)?;
    for (name, _) in tensors::table(&config) {
        g.check_readable(&name)?;
    }
    Ok((config, tokenizer))
}

/// Convert a checkpoint held in memory (`config.json` text and a loaded `Checkpoint`) into a
/// manifest and shard bytes, without touching a file system.
pub fn convert_in_memory(config_json: &str, ck: &safetensors::Checkpoint, quant: impl Into<Quant>, shard_bytes: u64) -> Result<(Manifest, Vec<Vec<u8>>)> {
    let quant = quant.into();
    let config = ModelConfig::from_hf_json(config_json)?;
    check_checkpoint(&config, ck)?;
    let mut w = ShardWriter::in_memory(shard_bytes);
    write_tensors(&config, ck, &mut w, quant, Progress::Silent)?;
    w.finish_in_memory(config)
}

/// Every tensor the config implies is present with the right shape (checked before writing).
fn check_checkpoint(config: &ModelConfig, ck: &dyn TensorSource) -> Result<()> {
    let expected = tensors::table(config);
    // Check everything before writing anything.
    for (name, [rows, cols]) in &expected {
        let shape = ck.shape(name).ok_or_else(|| Error::Format(format!("the checkpoint is missing tensor '{name}'")))?;
        let ok = if *rows == 1 { shape == [*cols as usize] } else { shape == [*rows as usize, *cols as usize] };
        if !ok {
            return Err(Error::Format(format!(
                "tensor '{name}' has shape {shape:?}, the config implies {:?}",
                if *rows == 1 { vec![*cols] } else { vec![*rows, *cols] }
            )));
        }
    }
    Ok(())
}

/// An error's text without its kind's prefix ("model files: "), to be set in a longer message.
pub(crate) fn detail(e: &Error) -> String {
    match e {
        Error::Format(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Read, pack and append every tensor, one at a time.
fn write_tensors(config: &ModelConfig, ck: &dyn TensorSource, w: &mut ShardWriter, quant: Quant, mut progress: Progress) -> Result<()> {
    let expected = tensors::table(config);
    for (done, (name, [rows, cols])) in expected.iter().enumerate() {
        let (rows, cols) = (*rows as usize, *cols as usize);
        let packed = match (storage_for(name, quant), ck.read_packed(name)) {
            (None, Some(packed)) => packed?,
            (dtype, _) => Packed::pack(fallback(dtype.unwrap_or(DType::F32), cols), rows, cols, &ck.read_f32(name)?.1)
                .map_err(|e| Error::Format(format!("tensor '{name}': {}", detail(&e))))?,
        };
        if (packed.rows, packed.cols) != (rows, cols) {
            return Err(Error::Format(format!("{name} is [{}, {}]; the config makes it [{rows}, {cols}]", packed.rows, packed.cols)));
        }
        w.add(name, &packed)?;
        progress.report(done + 1, expected.len(), w.bytes_written);
    }
    Ok(())
}

/// Copy `tokenizer.json` into the model directory, with the turn markers registered.
fn copy_tokenizer(hf_dir: &Path, out: &Path) -> Result<Option<String>> {
    let src = hf_dir.join("tokenizer.json");
    if !src.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&src).map_err(|e| Error::Format(format!("{}: {e}", src.display())))?;
    Ok(Some(write_tokenizer(out, &text)?))
}

/// Write `tokenizer.json` into the model directory, with the turn markers registered; returns
/// the file name for the manifest.
fn write_tokenizer(out: &Path, tokenizer_json: &str) -> Result<String> {
    let name = "tokenizer.json".to_string();
    std::fs::write(out.join(&name), register_turn_tokens(tokenizer_json)?).map_err(|e| Error::Format(format!("writing tokenizer: {e}")))?;
    Ok(name)
}

/// Give a model directory a tokenizer (e.g. a synthetic model, so it can be chatted with):
/// copies `tokenizer_json` with the turn markers registered and records it in the manifest.
pub fn attach_tokenizer(dir: &Path, tokenizer_json: &Path) -> Result<Manifest> {
    let manifest_path = dir.join(format::MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| Error::Format(format!("{}: {e}", manifest_path.display())))?;
    let mut manifest = Manifest::from_json(&text)?;
    let json = std::fs::read_to_string(tokenizer_json).map_err(|e| Error::Format(format!("{}: {e}", tokenizer_json.display())))?;
    let json = register_turn_tokens(&json)?;
    let tok = crate::tokenizer::Tokenizer::from_json(json.as_bytes(), manifest.config.bos_token_id)?;
    if tok.vocab_size() > manifest.config.vocab_size {
        return Err(Error::Format(format!(
            "{} has {} tokens but the model's vocabulary has {}",
            tokenizer_json.display(),
            tok.vocab_size(),
            manifest.config.vocab_size
        )));
    }
    std::fs::write(dir.join("tokenizer.json"), json).map_err(|e| Error::Format(format!("writing tokenizer: {e}")))?;
    manifest.tokenizer = Some("tokenizer.json".into());
    std::fs::write(&manifest_path, manifest.to_json()).map_err(|e| Error::Format(format!("writing manifest: {e}")))?;
    Ok(manifest)
}

/// Make sure Gemma's `<start_of_turn>`/`<end_of_turn>` are special (added) tokens: some
/// published `tokenizer.json` files leave them as plain vocabulary entries, so they would be
/// split into pieces when they appear in a chat prompt.
pub fn register_turn_tokens(tokenizer_json: &str) -> Result<String> {
    let mut tok: serde_json::Value = serde_json::from_str(tokenizer_json).map_err(|e| Error::Format(format!("tokenizer.json is not valid JSON: {e}")))?;
    for special in ["<start_of_turn>", "<end_of_turn>"] {
        let Some(id) = tok.get("model").and_then(|m| m.get("vocab")).and_then(|v| v.get(special)).and_then(|v| v.as_u64()) else {
            continue;
        };
        let Some(added) = tok.get_mut("added_tokens").and_then(|a| a.as_array_mut()) else { continue };
        match added.iter_mut().find(|t| t.get("content").and_then(|c| c.as_str()) == Some(special)) {
            Some(entry) => entry["special"] = serde_json::Value::Bool(true),
            None => added.push(serde_json::json!({
                "id": id, "content": special, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            })),
        }
    }
    serde_json::to_string(&tok).map_err(|e| Error::Format(format!("tokenizer.json: {e}")))
}

/// The shapes of the released Gemma 2 models (`docs/model.md` §1.2), plus `demo`.
pub fn preset(name: &str) -> Result<ModelConfig> {
    let (h, i, l, nh, nkv, d, qpas) = match name {
        "2b" => (2304, 9216, 26, 8, 4, 256, 256.0),
        "9b" => (3584, 14336, 42, 16, 8, 256, 256.0),
        "27b" => (4608, 36864, 46, 32, 16, 128, 144.0),
        // Not a released model: the real vocabulary on a tiny body (36 MiB in int4), for demos
        // and browser tests that need the real tokenizer but not real weights.
        "demo" => (256, 1024, 4, 4, 2, 64, 64.0),
        other => return Err(Error::invalid("preset", format!("'{other}' is not one of 2b, 9b, 27b, demo (or pass a config.json path)"))),
    };
    Ok(ModelConfig {
        vocab_size: 256000,
        hidden_size: h,
        intermediate_size: i,
        num_hidden_layers: l,
        num_attention_heads: nh,
        num_key_value_heads: nkv,
        head_dim: d,
        query_pre_attn_scalar: qpas,
        sliding_window: 4096,
        attn_logit_softcapping: 50.0,
        final_logit_softcapping: 30.0,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        max_position_embeddings: 8192,
        bos_token_id: 2,
        eos_token_ids: vec![1, 107],
        sliding_layers: (0..l).map(|i| i % 2 == 0).collect(),
        model_type: "gemma2".into(),
        qk_norm: false,
        rope_local_theta: None,
        rope_global_factor: 1.0,
    })
}

/// Write a model of `config`'s shape with seeded random weights (std 0.02 matrices, small norm
/// offsets), for benchmarks and memory tests without real weights.
pub fn synth<'a>(
    config: ModelConfig,
    out: &Path,
    quant: impl Into<Quant>,
    seed: u64,
    shard_bytes: u64,
    show_progress: impl Into<Progress<'a>>,
) -> Result<Manifest> {
    let quant = quant.into();
    let mut progress = show_progress.into();
    config.validate()?;
    let tensors = tensors::table(&config);
    let mut w = ShardWriter::new(out, shard_bytes)?;
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    for (done, (name, [rows, cols])) in tensors.iter().enumerate() {
        let std = if tensors::is_norm(name) { 0.1 } else { 0.02 };
        let values: Vec<f32> = (0..*rows as usize * *cols as usize)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * std * 3.46
            })
            .collect();
        let dtype = fallback(storage_for(name, quant).unwrap_or(DType::F32), *cols as usize);
        w.add(name, &Packed::pack(dtype, *rows as usize, *cols as usize, &values)?)?;
        progress.report(done + 1, tensors.len(), w.bytes_written);
    }
    w.finish(config, None)
}
