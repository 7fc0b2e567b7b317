//! Importing GGUF files (llama.cpp's single-file format) for Gemma 2 and Gemma 3.
//!
//! A GGUF holds three things we need, each mapped to what the Hugging Face converter path
//! (`convert_hf`) already understands, so both paths share one writer:
//! - **tensors**, possibly quantized (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
//!   Q6_K), dequantized to f32 exactly as ggml's reference `dequantize_row_*` does, renamed to
//!   the Hugging Face names (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`)
//!   with the dims list reversed (GGML lists the innermost dimension first; the row-major data
//!   is the same). llama.cpp stores Gemma's norm weights as `1 + w`; we subtract the 1 again,
//!   because our format (like Hugging Face) stores `w` and the engine applies `1 + w`.
//! - **metadata** (`gemma2.block_count`, …), turned into a Hugging Face `config.json`
//!   (`Gguf::hf_config_json`) for `ModelConfig::from_hf_json`.
//! - **the SentencePiece vocabulary** (`tokenizer.ggml.*`), turned into a `tokenizer.json`
//!   (`Gguf::tokenizer_json`) that matches what transformers builds from the same file.
//!
//! The file is read by `reader` (the header; the byte layout is described there), `types` (GGML
//! types, tensor entries) and `dequant` (ggml's dequantizers); `config` and `tokenizer` build
//! the Hugging Face files.
//!
//! The header is parsed once, bounds-checked against the file's length (a count or length that
//! the file cannot hold is an error, never an allocation); tensor data is read from disk only
//! when asked for, one tensor at a time.

mod config;
mod dequant;
mod reader;
mod tokenizer;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::quant::{blocks, DType, GgmlBlock, Packed};

pub use dequant::dequantize;
use reader::HeaderReader;
pub use reader::MetaValue;
pub use types::{GgmlType, GgufTensor};

/// `general.alignment` when the file does not set it.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;

#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Memory(Arc<[u8]>),
    /// Only the header was read (`from_prefix`): the data is elsewhere (a URL), read by range.
    Elsewhere,
}

/// The first bytes of a file, read as if they were all of it: running past them is noted, so
/// `Gguf::from_prefix` can ask for more instead of calling the file truncated.
struct Prefix<'a> {
    bytes: &'a [u8],
    ran_out: std::rc::Rc<std::cell::Cell<bool>>,
}

impl Read for Prefix<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.bytes.is_empty() && !buf.is_empty() {
            self.ran_out.set(true);
        }
        let n = buf.len().min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

/// A parsed GGUF file: metadata and tensor directory; data is read on demand.
#[derive(Debug, Clone)]
pub struct Gguf {
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<GgufTensor>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_start: u64,
    source: Source,
    /// Names the file in errors.
    label: String,
}

impl Gguf {
    /// Open a GGUF file: parse and check the header; tensor data stays on disk until read.
    pub fn open(path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        let f = File::open(path).map_err(|e| Error::Format(format!("{label}: {e}")))?;
        let len = f.metadata().map_err(|e| Error::Format(format!("{label}: {e}")))?.len();
        Self::parse(BufReader::with_capacity(1 << 20, f), len, Source::File(path.to_path_buf()), label)
    }

    /// A GGUF file held in memory (a browser, a test).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let bytes: Arc<[u8]> = bytes.into();
        let len = bytes.len() as u64;
        Self::parse(&bytes[..], len, Source::Memory(bytes.clone()), "the GGUF data".into())
    }

    /// The header of a `file_len`-byte GGUF from its first bytes (a Range request's answer):
    /// `Ok(None)` when the header runs past them (ask for more), an error for a file that is
    /// not a GGUF we read. Tensor data is then read by range (`tensor_range`).
    pub fn from_prefix(prefix: &[u8], file_len: u64, label: &str) -> Result<Option<Self>> {
        let ran_out = std::rc::Rc::new(std::cell::Cell::new(false));
        let r = Prefix { bytes: prefix, ran_out: ran_out.clone() };
        match Self::parse(r, file_len, Source::Elsewhere, label.to_string()) {
            Ok(g) => Ok(Some(g)),
            Err(_) if ran_out.get() && (prefix.len() as u64) < file_len => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Where tensor `t`'s data lies in the file: (first byte, length).
    pub fn tensor_range(&self, t: &GgufTensor) -> Result<(u64, u64)> {
        let len = t.byte_len().ok_or_else(|| self.unreadable(t))?;
        Ok((self.data_start + t.offset, len))
    }

    /// The tensor whose Hugging Face name is `hf_name`, or a named error.
    pub fn hf_tensor(&self, hf_name: &str) -> Result<&GgufTensor> {
        self.tensor_by_hf_name(hf_name).ok_or_else(|| self.err(format!("has no tensor for '{hf_name}'")))
    }

    fn parse<R: Read>(r: R, len: u64, source: Source, label: String) -> Result<Self> {
        let mut h = HeaderReader { r, pos: 0, len, label: &label, elements: 0 };
        let magic: [u8; 4] = h.array(&|| "the magic number".into())?;
        if &magic != b"GGUF" {
            return Err(h.err(format!("does not start with the GGUF magic (found {:?}); this is not a GGUF file", String::from_utf8_lossy(&magic))));
        }
        let version = h.u32(&|| "the version".into())?;
        if matches!(version.swap_bytes(), 2 | 3) {
            return Err(h.err("is a big-endian GGUF; only little-endian files (what llama.cpp writes by default) are supported"));
        }
        if version != 2 && version != 3 {
            return Err(h.err(format!("GGUF version {version} is not supported (versions 2 and 3 are); re-convert the model with a current llama.cpp")));
        }
        let tensor_count = h.u64(&|| "the tensor count".into())?;
        let kv_count = h.u64(&|| "the metadata count".into())?;
        // A key/value takes at least 13 bytes, a tensor info at least 32.
        if kv_count.checked_mul(13).is_none_or(|n| n > h.left()) || tensor_count.checked_mul(32).is_none_or(|n| n > h.left()) {
            return Err(h.err(format!("the header claims {kv_count} metadata entries and {tensor_count} tensors, more than the {len}-byte file can hold; the file is truncated or corrupt")));
        }
        let mut metadata = BTreeMap::new();
        for i in 0..kv_count {
            let key = h.string(&|| format!("metadata key #{i}"))?;
            let ty = h.u32(&|| format!("the type of metadata key '{key}'"))?;
            let value = h.value(ty, 0, &|| format!("metadata key '{key}'"))?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(h.err(format!("metadata key '{key}' appears twice; the file is corrupt")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| h.err(format!("general.alignment is {v:?}; it must be a power of two")))?,
        };
        let mut tensors: Vec<GgufTensor> = Vec::with_capacity(tensor_count.min(1 << 16) as usize);
        let mut seen = HashMap::new();
        for i in 0..tensor_count {
            let name = h.string(&|| format!("the name of tensor #{i}"))?;
            let what = || format!("the info of tensor '{name}'");
            let n_dims = h.u32(&what)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(h.err(format!("tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} are allowed); the file is corrupt")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(h.u64(&what)?);
            }
            let ggml_type = GgmlType(h.u32(&what)?);
            let offset = h.u64(&what)?;
            if dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).is_none_or(|n| n == 0 || n > i64::MAX as u64) {
                return Err(h.err(format!("tensor '{name}' has dims {dims:?}, which is empty or too large; the file is corrupt")));
            }
            if seen.insert(name.clone(), i).is_some() {
                return Err(h.err(format!("tensor '{name}' appears twice; the file is corrupt")));
            }
            tensors.push(GgufTensor { name, dims, ggml_type, offset });
        }
        let data_start = h.pos.div_ceil(alignment) * alignment;
        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(
                    h.err(format!("tensor '{}' starts at data offset {}, not a multiple of the alignment {alignment}; the file is corrupt", t.name, t.offset))
                );
            }
            let (Some(block), Some(_)) = (t.ggml_type.block_size(), t.ggml_type.block_bytes()) else {
                continue; // An unknown type: reading this tensor reports it.
            };
            if t.dims[0] % block != 0 {
                return Err(h.err(format!(
                    "tensor '{}' is {} but its rows of {} values are not a whole number of {block}-value blocks; the file is corrupt",
                    t.name,
                    t.ggml_type.name(),
                    t.dims[0]
                )));
            }
            let end = t.byte_len().and_then(|n| data_start.checked_add(t.offset)?.checked_add(n));
            if end.is_none_or(|end| end > len) {
                return Err(h.err(format!(
                    "tensor '{}' ({} x {:?}) ends past the end of the {len}-byte file; the file is truncated (an interrupted download?)",
                    t.name,
                    t.ggml_type.name(),
                    t.dims
                )));
            }
        }
        Ok(Self { version, metadata, tensors, alignment, data_start, source, label })
    }

    fn err(&self, detail: impl std::fmt::Display) -> Error {
        Error::Format(format!("{}: {detail}", self.label))
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// `general.architecture` (`gemma2`, `gemma3`, …).
    pub fn architecture(&self) -> Result<&str> {
        self.get("general.architecture").and_then(MetaValue::as_str).ok_or_else(|| self.err("has no general.architecture string; it is not a model GGUF"))
    }

    /// A tensor by its GGUF name.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor whose Hugging Face name is `hf_name`.
    fn tensor_by_hf_name(&self, hf_name: &str) -> Option<&GgufTensor> {
        self.tensors.iter().find(|t| crate::model::tensors::from_gguf(&t.name).as_deref() == Some(hf_name))
    }

    /// The raw bytes of a tensor's data.
    pub fn tensor_bytes(&self, t: &GgufTensor) -> Result<Vec<u8>> {
        let len = t.byte_len().ok_or_else(|| self.unreadable(t))?;
        let begin = self.data_start + t.offset;
        match &self.source {
            Source::Memory(all) => all
                .get(begin as usize..(begin + len) as usize)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| self.err(format!("tensor '{}' lies outside the data", t.name))),
            Source::Elsewhere => Err(self.err(format!("holds only the header; tensor '{}' is read by range", t.name))),
            Source::File(path) => {
                let mut f = File::open(path).map_err(|e| self.err(e))?;
                f.seek(SeekFrom::Start(begin)).map_err(|e| self.err(format!("{}: {e}", t.name)))?;
                let mut bytes = vec![0u8; len as usize];
                f.read_exact(&mut bytes).map_err(|e| self.err(format!("reading tensor '{}': {e} (was the file changed since it was opened?)", t.name)))?;
                Ok(bytes)
            }
        }
    }

    fn unreadable(&self, t: &GgufTensor) -> Error {
        let names: Vec<&str> = GgmlType::READABLE.iter().map(|t| t.name()).collect();
        self.err(format!(
            "tensor '{}' uses GGML type {}, which this importer cannot read; it reads {}. Use a GGUF quantized with one of those \
             (e.g. Q4_K_M, Q5_K_M, Q6_K, Q8_0 or F16), or convert the Hugging Face checkpoint instead",
            t.name,
            t.ggml_type,
            names.join(", ")
        ))
    }

    /// A tensor dequantized to f32, in GGML element order (row-major, Hugging Face
    /// orientation); no renaming or norm shift.
    pub fn read_raw_f32(&self, t: &GgufTensor) -> Result<Vec<f32>> {
        if !t.ggml_type.is_readable() {
            return Err(self.unreadable(t));
        }
        let bytes = self.tensor_bytes(t)?;
        dequantize(t.ggml_type, &bytes).ok_or_else(|| self.unreadable(t))
    }

    /// What llama.cpp added to this architecture's norm weights (`1` for Gemma: its converter
    /// stores `1 + w`).
    fn norm_shift(&self) -> f32 {
        match self.architecture() {
            Ok("gemma" | "gemma2" | "gemma3") => 1.0,
            _ => 0.0,
        }
    }

    /// A tensor by its Hugging Face name: dequantized, norms shifted back to `w`, with the
    /// Hugging Face shape.
    pub fn read_hf_f32(&self, hf_name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.hf_tensor(hf_name)?;
        Ok((t.hf_shape(), self.f32_from_bytes(t, &self.tensor_bytes(t)?)?))
    }

    /// A matrix by its Hugging Face name in its own GGUF type, laid out for the kernels value
    /// for value (`quant::blocks`): F32, F16 and BF16 as those, Q4_1 as int4, Q8_0 as int8, the
    /// other block types as storage types of their own.
    pub fn read_hf_packed(&self, hf_name: &str) -> Result<Packed> {
        let t = self.hf_tensor(hf_name)?;
        let (rows, _) = Self::matrix_shape(t)?;
        self.packed_rows(t, rows, &self.tensor_bytes(t)?)
    }

    /// (rows, cols) of a tensor in Hugging Face orientation (a vector is one row).
    pub fn matrix_shape(t: &GgufTensor) -> Result<(usize, usize)> {
        match t.hf_shape()[..] {
            [rows, cols] => Ok((rows, cols)),
            [cols] => Ok((1, cols)),
            _ => Err(Error::Format(format!("tensor '{}' has {} dimensions; a matrix has 2", t.name, t.dims.len()))),
        }
    }

    /// `rows` consecutive rows of tensor `t` from their bytes in the file, packed as
    /// `read_hf_packed` packs the whole tensor (rows are whole blocks, so any run of rows is).
    pub fn packed_rows(&self, t: &GgufTensor, rows: usize, bytes: &[u8]) -> Result<Packed> {
        let (_, cols) = Self::matrix_shape(t)?;
        let kept = self.kept_type(t)?;
        let Some(block) = block_of(t.ggml_type) else {
            let dtype = self.stored_type(t)?;
            let mut words = vec![0u32; dtype.words(rows, cols)];
            let dst = bytemuck::cast_slice_mut::<u32, u8>(&mut words);
            if bytes.len() > dst.len() || bytes.len() < dst.len().saturating_sub(3) {
                return Err(self.err(format!("tensor '{}': {} bytes for {rows} rows", t.name, bytes.len())));
            }
            dst[..bytes.len()].copy_from_slice(bytes);
            let packed = Packed { dtype, rows, cols, words };
            packed.check_finite().map_err(|e| self.err(format!("tensor '{}': {}", t.name, crate::convert::detail(&e))))?;
            return Ok(packed);
        };
        blocks::from_ggml_as(block, kept, rows, cols, bytes).map_err(|e| self.err(format!("tensor '{}': {}", t.name, crate::convert::detail(&e))))
    }

    /// The storage type `packed_rows` gives tensor `t`.
    pub fn stored_type(&self, t: &GgufTensor) -> Result<DType> {
        match t.ggml_type {
            GgmlType::F32 => Ok(DType::F32),
            GgmlType::F16 => Ok(DType::F16),
            GgmlType::BF16 => Ok(DType::Bf16),
            other => block_of(other).map(GgmlBlock::dtype).ok_or_else(|| self.unreadable(t)),
        }
    }

    /// The type a conversion keeping the GGUF's types stores tensor `t` in: its own
    /// (`stored_type`), except that a layer's q/k/v or gate/up whose types differ but are all
    /// Q4_0, Q5_0 or Q8_0 are all stored as int8, which holds each exactly, so that a load can
    /// join them for the fused kernels (the Gemma 3 270M's Q4_K_M has Q5_0 q/k beside Q8_0 v).
    pub fn kept_type(&self, t: &GgufTensor) -> Result<DType> {
        let own = self.stored_type(t)?;
        let Some(group) = crate::model::tensors::from_gguf(&t.name).and_then(|n| crate::model::tensors::joined_with(&n)) else { return Ok(own) };
        let mut types = Vec::new();
        for name in &group {
            match self.tensor_by_hf_name(name) {
                Some(other) => types.push(self.stored_type(other)?),
                None => return Ok(own),
            }
        }
        let exact_in_int8 = |d: &DType| matches!(d, DType::Q4_0 | DType::Q5_0 | DType::Int8);
        if types.iter().any(|d| *d != own) && types.iter().all(exact_in_int8) {
            return Ok(DType::Int8);
        }
        Ok(own)
    }

    /// A tensor's values from its bytes, dequantized, norms shifted back to `w` (what
    /// `read_hf_f32` returns for a tensor read from the file).
    pub fn f32_from_bytes(&self, t: &GgufTensor, bytes: &[u8]) -> Result<Vec<f32>> {
        if !t.ggml_type.is_readable() {
            return Err(self.unreadable(t));
        }
        let mut values = dequantize(t.ggml_type, bytes).ok_or_else(|| self.unreadable(t))?;
        let shift = self.norm_shift();
        if t.name.ends_with("norm.weight") && shift != 0.0 {
            values.iter_mut().for_each(|v| *v -= shift);
        }
        Ok(values)
    }

    /// The Hugging Face shape of the tensor named `hf_name`, if the file has it.
    pub fn hf_shape(&self, hf_name: &str) -> Option<Vec<usize>> {
        self.tensor_by_hf_name(hf_name).map(GgufTensor::hf_shape)
    }

    /// The tensor with Hugging Face name `hf_name` exists and has a type this importer reads
    /// (checked for every tensor before a conversion writes anything).
    pub fn check_readable(&self, hf_name: &str) -> Result<()> {
        let t = self.tensor_by_hf_name(hf_name).ok_or_else(|| self.err(format!("has no tensor for '{hf_name}'")))?;
        if t.ggml_type.is_readable() {
            Ok(())
        } else {
            Err(self.unreadable(t))
        }
    }

    /// Refuse an untied LM head (`output.weight`): our format ties it to the embedding.
    pub fn check_tied_embeddings(&self) -> Result<()> {
        if self.tensor("output.weight").is_some() {
            return Err(self.err(
                "has a separate output.weight (an untied LM head); this engine only supports models whose LM head is the token embedding, as every Gemma 2 and Gemma 3 release is",
            ));
        }
        Ok(())
    }
}

/// The block format of a quantized GGML type we store value for value.
fn block_of(ty: GgmlType) -> Option<GgmlBlock> {
    Some(match ty {
        GgmlType::Q4_0 => GgmlBlock::Q4_0,
        GgmlType::Q4_1 => GgmlBlock::Q4_1,
        GgmlType::Q5_0 => GgmlBlock::Q5_0,
        GgmlType::Q5_1 => GgmlBlock::Q5_1,
        GgmlType::Q8_0 => GgmlBlock::Q8_0,
        GgmlType::Q4_K => GgmlBlock::Q4K,
        GgmlType::Q5_K => GgmlBlock::Q5K,
        GgmlType::Q6_K => GgmlBlock::Q6K,
        _ => return None,
    })
}

/// Reads `v` by Hugging Face name, so `write_tensors` can take a GGUF like a checkpoint.
impl super::TensorSource for Gguf {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.hf_shape(name)
    }
    fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        self.read_hf_f32(name)
    }
    fn read_packed(&self, name: &str) -> Option<Result<Packed>> {
        Some(self.read_hf_packed(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_magic_and_short_input_are_errors() {
        assert!(Gguf::from_bytes(b"GGU".to_vec()).unwrap_err().to_string().contains("truncated"));
        assert!(Gguf::from_bytes(b"ABCD\x03\0\0\0".to_vec()).unwrap_err().to_string().contains("not a GGUF file"));
        // A bogus array count must fail before allocating.
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(3u64.to_le_bytes());
        b.extend(b"key");
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(u64::MAX.to_le_bytes());
        let e = Gguf::from_bytes(b).unwrap_err().to_string();
        assert!(e.contains("metadata key 'key'") && e.contains("array of"), "{e}");
    }
}
