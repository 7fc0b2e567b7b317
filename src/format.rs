//! The on-disk model format: a directory with `manifest.json`, shard files and (optionally) the
//! tokenizer. Shards are small (default 32 MiB) so a browser can fetch, verify, cache and resume
//! them one by one. The full description is in `docs/format.md`.
//!
//! Every tensor is stored as one or more *parts*: consecutive row ranges, each packed on its own
//! (see `quant/` for the packings) and stored contiguously inside one shard. A part becomes one
//! GPU buffer, so no binding is ever larger than a part.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::quant::DType;

pub const FORMAT_NAME: &str = "gemma-webgpu";
/// 2: int4 became affine (a scale and a min per group) and int8 was added.
pub const FORMAT_VERSION: u32 = 2;
pub const MANIFEST_FILE: &str = "manifest.json";
pub const DEFAULT_SHARD_BYTES: u64 = 32 << 20;
/// Models larger than this are refused (Gemma 2 27B in f32 is about 108 GB).
pub const MAX_MODEL_BYTES: u64 = 256 << 30;

/// A file name a manifest may give (a shard or the tokenizer): a plain name inside the model's
/// directory, never a path, a parent, a hidden file, or the manifest and cache entries' names.
pub fn check_file_name(name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != MANIFEST_FILE
        && !name.starts_with("gemma-webgpu-")
        && !name.starts_with("gguf-source");
    if plain {
        Ok(())
    } else {
        Err(Error::Format(format!(
            "manifest.json names the file '{name}'; a model's files must be plain names inside its directory (letters, digits, '.', '_', '-'), not paths or the manifest's own name"
        )))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredType {
    F32,
    F16,
    Bf16,
    Int4,
    Int8,
    #[serde(rename = "q4_0")]
    Q4_0,
    #[serde(rename = "q5_0")]
    Q5_0,
    #[serde(rename = "q5_1")]
    Q5_1,
    #[serde(rename = "q4_k")]
    Q4K,
    #[serde(rename = "q5_k")]
    Q5K,
    #[serde(rename = "q6_k")]
    Q6K,
}

impl From<StoredType> for DType {
    fn from(s: StoredType) -> DType {
        match s {
            StoredType::F32 => DType::F32,
            StoredType::F16 => DType::F16,
            StoredType::Bf16 => DType::Bf16,
            StoredType::Int4 => DType::Int4,
            StoredType::Int8 => DType::Int8,
            StoredType::Q4_0 => DType::Q4_0,
            StoredType::Q5_0 => DType::Q5_0,
            StoredType::Q5_1 => DType::Q5_1,
            StoredType::Q4K => DType::Q4K,
            StoredType::Q5K => DType::Q5K,
            StoredType::Q6K => DType::Q6K,
        }
    }
}

impl From<DType> for StoredType {
    fn from(d: DType) -> StoredType {
        match d {
            DType::F32 => StoredType::F32,
            DType::F16 => StoredType::F16,
            DType::Bf16 => StoredType::Bf16,
            DType::Int4 => StoredType::Int4,
            DType::Int8 => StoredType::Int8,
            DType::Q4_0 => StoredType::Q4_0,
            DType::Q5_0 => StoredType::Q5_0,
            DType::Q5_1 => StoredType::Q5_1,
            DType::Q4K => StoredType::Q4K,
            DType::Q5K => StoredType::Q5K,
            DType::Q6K => StoredType::Q6K,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub file: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the whole file.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartEntry {
    pub shard: u32,
    pub offset: u64,
    pub length: u64,
    /// First row of the tensor in this part, and how many rows it holds.
    pub row_start: u32,
    pub rows: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// The Hugging Face checkpoint name, e.g. `model.layers.3.mlp.down_proj.weight`.
    pub name: String,
    /// `[rows, cols]`; a 1-D tensor is `[1, n]`.
    pub shape: [u32; 2],
    pub dtype: StoredType,
    /// Values per int4 / int8 group (32); absent for other types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<u32>,
    pub parts: Vec<PartEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub config: ModelConfig,
    /// File name of the tokenizer (`tokenizer.json`), if the model has one.
    #[serde(default)]
    pub tokenizer: Option<String>,
    pub shards: Vec<ShardEntry>,
    pub tensors: Vec<TensorEntry>,
}

impl Manifest {
    pub fn from_json(text: &str) -> Result<Self> {
        let m: Manifest = serde_json::from_str(text).map_err(|e| Error::Format(format!("manifest.json is not a valid manifest: {e}")))?;
        m.validate()?;
        Ok(m)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Structural checks, all before anything is downloaded or allocated from the manifest's
    /// numbers: versions; the config (`ModelConfig::validate`); file names that stay inside the
    /// model's directory; exactly the tensors the config uses, once each, with its shapes and
    /// row lengths its storage type can hold; parts inside their shards, covering each tensor's
    /// rows in order, each as long as its packing; every shard used; sizes summed without
    /// overflow.
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| Err(Error::Format(format!("manifest.json: {detail}")));
        if self.format != FORMAT_NAME {
            return Err(Error::Format(format!("manifest format is '{}', expected '{FORMAT_NAME}'", self.format)));
        }
        if self.format_version != FORMAT_VERSION {
            return Err(Error::Format(format!(
                "manifest format version {} is not supported (this build reads version {FORMAT_VERSION}); convert the model again with this version",
                self.format_version
            )));
        }
        self.config.validate()?;
        let mut files: Vec<&str> = self.shards.iter().map(|s| s.file.as_str()).collect();
        files.extend(self.tokenizer.as_deref());
        for f in &files {
            check_file_name(f)?;
        }
        let mut sorted = files.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return bad(format!("the file '{}' is named twice", w[0]));
        }
        let mut total = 0u64;
        for s in &self.shards {
            total = total.checked_add(s.size).filter(|t| *t <= MAX_MODEL_BYTES).ok_or_else(|| {
                Error::Format(format!("manifest.json: the shards add up to more than {} GiB; the manifest is damaged", MAX_MODEL_BYTES >> 30))
            })?;
        }
        let expected = crate::model::tensors::table(&self.config);
        if self.tensors.len() != expected.len() {
            return bad(format!("{} tensors where the config uses {}", self.tensors.len(), expected.len()));
        }
        let mut used = vec![false; self.shards.len()];
        for (name, shape) in &expected {
            let mut found = self.tensors.iter().filter(|t| &t.name == name);
            let (Some(t), None) = (found.next(), found.next()) else {
                return bad(format!("the tensor '{name}' must appear exactly once"));
            };
            if t.shape != *shape {
                return bad(format!("{name} has shape {:?}; the config makes it {shape:?}", t.shape));
            }
            if t.shape[0] as u64 * t.shape[1] as u64 > u32::MAX as u64 {
                return bad(format!("{name} {:?} has more than 2^32 values, more than one GPU buffer holds", t.shape));
            }
            let dtype = DType::from(t.dtype);
            if !(t.shape[1] as usize).is_multiple_of(dtype.group_cols()) {
                return bad(format!(
                    "{name} is {} but its rows of {} values are not a whole number of its {}-value groups",
                    dtype.name(),
                    t.shape[1],
                    dtype.group_cols()
                ));
            }
            let mut next_row = 0u32;
            for p in &t.parts {
                let shard = self.shards.get(p.shard as usize).ok_or_else(|| Error::Format(format!("{}: shard {} does not exist", t.name, p.shard)))?;
                if p.offset.checked_add(p.length).is_none_or(|end| end > shard.size) {
                    return Err(Error::Format(format!("{}: bytes {}..+{} lie outside {} ({} bytes)", t.name, p.offset, p.length, shard.file, shard.size)));
                }
                if p.row_start != next_row || p.rows == 0 || p.rows > t.shape[0] - next_row {
                    return Err(Error::Format(format!("{}: part at row {} ({} rows) does not continue the rows before it", t.name, p.row_start, p.rows)));
                }
                let want = dtype.words(p.rows as usize, t.shape[1] as usize) as u64 * 4;
                if p.length != want {
                    return Err(Error::Format(format!("{}: part at row {} is malformed (length {}, expected {want})", t.name, p.row_start, p.length)));
                }
                used[p.shard as usize] = true;
                next_row += p.rows;
            }
            if next_row != t.shape[0] {
                return Err(Error::Format(format!("{}: parts cover {next_row} of {} rows", t.name, t.shape[0])));
            }
        }
        if let Some(i) = used.iter().position(|u| !u) {
            return bad(format!("the shard '{}' holds no tensor; the manifest is damaged", self.shards[i].file));
        }
        Ok(())
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name).ok_or_else(|| Error::Format(format!("the model has no tensor '{name}'")))
    }

    /// Total bytes of all shards.
    pub fn total_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.size).fold(0, u64::saturating_add)
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
