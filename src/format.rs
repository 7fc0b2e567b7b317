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

    /// Structural checks: versions, part bounds inside their shards, rows covering each tensor,
    /// and part lengths matching their packing.
    pub fn validate(&self) -> Result<()> {
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
        for t in &self.tensors {
            let mut next_row = 0;
            for p in &t.parts {
                let shard = self.shards.get(p.shard as usize).ok_or_else(|| Error::Format(format!("{}: shard {} does not exist", t.name, p.shard)))?;
                if p.offset.checked_add(p.length).is_none_or(|end| end > shard.size) {
                    return Err(Error::Format(format!("{}: bytes {}..+{} lie outside {} ({} bytes)", t.name, p.offset, p.length, shard.file, shard.size)));
                }
                let want = DType::from(t.dtype).words(p.rows as usize, t.shape[1] as usize) as u64 * 4;
                if p.row_start != next_row || p.length != want {
                    return Err(Error::Format(format!("{}: part at row {} is malformed (length {}, expected {want})", t.name, p.row_start, p.length)));
                }
                next_row += p.rows;
            }
            if next_row != t.shape[0] {
                return Err(Error::Format(format!("{}: parts cover {next_row} of {} rows", t.name, t.shape[0])));
            }
        }
        Ok(())
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name).ok_or_else(|| Error::Format(format!("the model has no tensor '{name}'")))
    }

    /// Total bytes of all shards.
    pub fn total_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.size).sum()
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
