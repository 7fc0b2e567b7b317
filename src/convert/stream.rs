//! Converting a GGUF that is read by byte ranges (a URL in a browser), in bounded memory: the
//! header first (`Gguf::from_prefix`), then each tensor in runs of rows that fill one part of a
//! shard, each run laid out (`Gguf::packed_rows`) and appended to in-memory shards that are
//! handed on as soon as they are full. At no time is more held than one run of the file, its
//! packed copy and the shard being filled (each at most the shard size), plus what the caller
//! keeps of the shards handed on. Every tensor keeps its GGUF type; the result is the same
//! manifest and shards, byte for byte, as `convert_gguf` with `Quant::KEEP` and the same shard
//! size writes from the file.

use super::gguf::Gguf;
use super::{check_gguf, ShardBytes, ShardWriter};
use crate::error::{Error, Result};
use crate::format::Manifest;
use crate::gpu::weights::rows_per_part;
use crate::model::config::ModelConfig;
use crate::model::tensors;

/// Byte ranges of the GGUF file.
#[allow(async_fn_in_trait)] // used with concrete types only, none of them Send
pub trait RangeSource {
    /// Bytes `begin..begin + len` of the file, exactly.
    async fn range(&self, begin: u64, len: u64) -> Result<Vec<u8>>;
}

/// A conversion in progress: `step` reads and converts one run of rows.
pub struct GgufStream<'g> {
    g: &'g Gguf,
    config: ModelConfig,
    tokenizer_json: String,
    table: Vec<(String, [u32; 2])>,
    /// Tensor being read and its next row.
    tensor: usize,
    row: usize,
    writer: ShardWriter,
    shard_bytes: u64,
    /// Bytes of tensor data in the file that the conversion reads, and read so far.
    pub total_bytes: u64,
    pub read_bytes: u64,
}

impl<'g> GgufStream<'g> {
    /// Check the header as `convert_gguf` does (architecture, tied head, config, tokenizer,
    /// every tensor present and of a type we read) before any tensor data is read.
    pub fn new(g: &'g Gguf, shard_bytes: u64) -> Result<Self> {
        let (config, tokenizer_json) = check_gguf(g)?;
        let table = tensors::table(&config);
        let mut total_bytes = 0u64;
        for (name, _) in &table {
            let (_, len) = g.tensor_range(g.hf_tensor(name)?)?;
            total_bytes = total_bytes.saturating_add(len);
        }
        Ok(Self { g, config, tokenizer_json, table, tensor: 0, row: 0, writer: ShardWriter::in_memory(shard_bytes), shard_bytes, total_bytes, read_bytes: 0 })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The `tokenizer.json` built from the file's vocabulary.
    pub fn tokenizer_json(&self) -> &str {
        &self.tokenizer_json
    }

    /// Read and convert the next run of rows; `Ok(None)` when every tensor is done, else the
    /// shards that filled up, as (index, bytes).
    pub async fn step(&mut self, src: &impl RangeSource) -> Result<Option<ShardBytes>> {
        let Some((name, [rows, cols])) = self.table.get(self.tensor).cloned() else { return Ok(None) };
        let (rows, cols) = (rows as usize, cols as usize);
        let t = self.g.hf_tensor(&name)?;
        let (begin, len) = self.g.tensor_range(t)?;
        if tensors::is_norm(&name) {
            let bytes = src.range(begin, len).await?;
            let values = self.g.f32_from_bytes(t, &bytes)?;
            let packed = crate::quant::Packed::pack(crate::quant::DType::F32, rows, cols, &values)
                .map_err(|e| Error::Format(format!("tensor '{name}': {}", super::detail(&e))))?;
            self.writer.add(&name, &packed)?;
            self.read_bytes += len;
            (self.tensor, self.row) = (self.tensor + 1, 0);
            return Ok(Some(self.writer.take_closed()));
        }
        if Gguf::matrix_shape(t)? != (rows, cols) {
            return Err(Error::Format(format!("{name} is {:?} in the GGUF; the config makes it [{rows}, {cols}]", t.hf_shape())));
        }
        // As many rows as one part of a shard holds in the stored type: the parts come out as
        // `ShardWriter::add` would cut the whole tensor.
        let row_bytes = len / rows.max(1) as u64;
        let n = rows_per_part(self.g.kept_type(t)?, cols, self.shard_bytes, rows)?.min(rows - self.row);
        let bytes = src.range(begin + self.row as u64 * row_bytes, n as u64 * row_bytes).await?;
        let packed = self.g.packed_rows(t, n, &bytes)?;
        drop(bytes);
        self.writer.append(&name, [rows, cols], &packed, self.row)?;
        self.read_bytes += n as u64 * row_bytes;
        self.row += n;
        if self.row == rows {
            (self.tensor, self.row) = (self.tensor + 1, 0);
        }
        Ok(Some(self.writer.take_closed()))
    }

    /// The manifest (naming `tokenizer.json`) and the shards not handed on yet.
    pub fn finish(self) -> Result<(Manifest, ShardBytes)> {
        if self.tensor < self.table.len() {
            return Err(Error::invalid("GGUF conversion", "finished before every tensor was read"));
        }
        self.writer.finish_streamed(self.config, Some("tokenizer.json".into()))
    }
}
