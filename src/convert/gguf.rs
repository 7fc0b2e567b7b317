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
//! Layout (v2 and v3; all little-endian): magic `GGUF`, u32 version, u64 tensor count, u64
//! key/value count; the key/values (string key, u32 value type, value; strings are a u64 byte
//! length and UTF-8 bytes, arrays a u32 element type, a u64 count and the elements); the tensor
//! infos (name, u32 dim count, u64 dims, u32 GGML type, u64 offset into the data section); then
//! the data section, starting at the next multiple of `general.alignment` (default 32).
//!
//! The header is parsed once, bounds-checked against the file's length (a count or length that
//! the file cannot hold is an error, never an allocation); tensor data is read from disk only
//! when asked for, one tensor at a time.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// `general.alignment` when the file does not set it.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Nested arrays deeper than this are refused (no real file nests at all).
const MAX_NESTING: usize = 4;
/// GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Any integer type holding a value >= 0.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v as i64),
            MetaValue::I16(v) => Some(v as i64),
            MetaValue::I32(v) => Some(v as i64),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any number. f32 values come back as their shortest decimal form (1e-6, not
    /// 9.99999997e-7), so a config written from them reads like the original.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => format!("{v}").parse().ok(),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "UINT8",
            MetaValue::I8(_) => "INT8",
            MetaValue::U16(_) => "UINT16",
            MetaValue::I16(_) => "INT16",
            MetaValue::U32(_) => "UINT32",
            MetaValue::I32(_) => "INT32",
            MetaValue::U64(_) => "UINT64",
            MetaValue::I64(_) => "INT64",
            MetaValue::F32(_) => "FLOAT32",
            MetaValue::F64(_) => "FLOAT64",
            MetaValue::Bool(_) => "BOOL",
            MetaValue::String(_) => "STRING",
            MetaValue::Array(_) => "ARRAY",
        }
    }
}

/// A GGML tensor type id (`enum ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q5_0: GgmlType = GgmlType(6);
    pub const Q5_1: GgmlType = GgmlType(7);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q5_K: GgmlType = GgmlType(13);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const BF16: GgmlType = GgmlType(30);

    /// Types this importer dequantizes.
    pub const READABLE: [GgmlType; 11] =
        [Self::F32, Self::F16, Self::BF16, Self::Q4_0, Self::Q4_1, Self::Q5_0, Self::Q5_1, Self::Q8_0, Self::Q4_K, Self::Q5_K, Self::Q6_K];

    /// `(name, values per block, bytes per block)` from ggml's type traits; `None` for an id
    /// ggml does not define (or no longer uses).
    fn traits(self) -> Option<(&'static str, u64, u64)> {
        Some(match self.0 {
            0 => ("F32", 1, 4),
            1 => ("F16", 1, 2),
            2 => ("Q4_0", 32, 18),
            3 => ("Q4_1", 32, 20),
            6 => ("Q5_0", 32, 22),
            7 => ("Q5_1", 32, 24),
            8 => ("Q8_0", 32, 34),
            9 => ("Q8_1", 32, 36),
            10 => ("Q2_K", 256, 84),
            11 => ("Q3_K", 256, 110),
            12 => ("Q4_K", 256, 144),
            13 => ("Q5_K", 256, 176),
            14 => ("Q6_K", 256, 210),
            15 => ("Q8_K", 256, 292),
            16 => ("IQ2_XXS", 256, 66),
            17 => ("IQ2_XS", 256, 74),
            18 => ("IQ3_XXS", 256, 98),
            19 => ("IQ1_S", 256, 50),
            20 => ("IQ4_NL", 32, 18),
            21 => ("IQ3_S", 256, 110),
            22 => ("IQ2_S", 256, 82),
            23 => ("IQ4_XS", 256, 136),
            24 => ("I8", 1, 1),
            25 => ("I16", 1, 2),
            26 => ("I32", 1, 4),
            27 => ("I64", 1, 8),
            28 => ("F64", 1, 8),
            29 => ("IQ1_M", 256, 56),
            30 => ("BF16", 1, 2),
            34 => ("TQ1_0", 256, 54),
            35 => ("TQ2_0", 256, 66),
            39 => ("MXFP4", 32, 17),
            _ => return None,
        })
    }

    /// The ggml name (`Q4_K`), or `unknown` for an id ggml does not define.
    pub fn name(self) -> &'static str {
        self.traits().map_or("unknown", |t| t.0)
    }

    /// Values per block (1 for the plain float types).
    pub fn block_size(self) -> Option<u64> {
        self.traits().map(|t| t.1)
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> Option<u64> {
        self.traits().map(|t| t.2)
    }

    pub fn is_readable(self) -> bool {
        Self::READABLE.contains(&self)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.0, self.name())
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    pub name: String,
    /// GGML order: innermost (contiguous) dimension first. `[640, 262144]` is a 262144 x 640
    /// row-major matrix.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl GgufTensor {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The Hugging Face (row-major, outermost first) shape: the dims reversed.
    pub fn hf_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Bytes of data, where the type's block layout is known.
    pub fn byte_len(&self) -> Option<u64> {
        let (block, bytes) = (self.ggml_type.block_size()?, self.ggml_type.block_bytes()?);
        Some(self.n_elements() / block * bytes)
    }
}

#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Memory(Arc<[u8]>),
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

/// Reads the header from any byte stream, tracking the position so every length can be checked
/// against the bytes left.
struct HeaderReader<'a, R: Read> {
    r: R,
    pos: u64,
    len: u64,
    label: &'a str,
}

impl<R: Read> HeaderReader<'_, R> {
    fn err(&self, detail: impl std::fmt::Display) -> Error {
        Error::Format(format!("{}: {detail}", self.label))
    }

    fn truncated(&self, what: &dyn Fn() -> String) -> Error {
        self.err(format!("{} runs past the end of the file (byte {} of {}); the file is truncated or not a GGUF file", what(), self.pos, self.len))
    }

    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn fill(&mut self, buf: &mut [u8], what: &dyn Fn() -> String) -> Result<()> {
        if buf.len() as u64 > self.left() {
            return Err(self.truncated(what));
        }
        self.r.read_exact(buf).map_err(|e| self.err(format!("reading {}: {e}", what())))?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.u64(what)?;
        if n > self.left() {
            return Err(self.err(format!("{} claims {n} bytes but only {} are left in the file; the file is truncated or corrupt", what(), self.left())));
        }
        let mut bytes = vec![0u8; n as usize];
        self.fill(&mut bytes, what)?;
        String::from_utf8(bytes).map_err(|_| self.err(format!("{} is not valid UTF-8", what())))
    }

    /// Smallest encoded size of a value of type `ty` (to bound array counts).
    fn min_size(ty: u32) -> u64 {
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            _ => 8, // 64-bit numbers; strings and arrays start with a u64 count
        }
    }

    fn value(&mut self, ty: u32, depth: usize, what: &dyn Fn() -> String) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(what)?[0]),
            1 => MetaValue::I8(self.array::<1>(what)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.err(format!("{} is a BOOL with byte value {b} (must be 0 or 1); the file is corrupt", what()))),
            },
            8 => MetaValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(self.err(format!("{} nests arrays more than {MAX_NESTING} deep; the file is corrupt", what())));
                }
                let elem = self.u32(what)?;
                let count = self.u64(what)?;
                if count.checked_mul(Self::min_size(elem)).is_none_or(|need| need > self.left()) {
                    return Err(self.err(format!(
                        "{} is an array of {count} elements, more than the {} bytes left in the file hold; the file is truncated or corrupt",
                        what(),
                        self.left()
                    )));
                }
                let mut items = Vec::with_capacity(count.min(1 << 20) as usize);
                for i in 0..count {
                    let item_what = || format!("{}[{i}]", what());
                    items.push(self.value(elem, depth + 1, &item_what)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(self.err(format!("{} has value type {other}, which GGUF does not define; the file is corrupt or from a newer GGUF version", what())))
            }
        })
    }
}

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_UNKNOWN: i64 = 2;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// Python's `str.isspace`, which transformers' Gemma respelling uses: Unicode White_Space plus
/// the information separators U+001C..U+001F.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn js(s: &str) -> String {
    Value::from(s).to_string()
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

    fn parse<R: Read>(r: R, len: u64, source: Source, label: String) -> Result<Self> {
        let mut h = HeaderReader { r, pos: 0, len, label: &label };
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
        let t = self.tensor_by_hf_name(hf_name).ok_or_else(|| self.err(format!("has no tensor for '{hf_name}'")))?;
        let mut values = self.read_raw_f32(t)?;
        let shift = self.norm_shift();
        if t.name.ends_with("norm.weight") && shift != 0.0 {
            values.iter_mut().for_each(|v| *v -= shift);
        }
        Ok((t.hf_shape(), values))
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

    // ---- metadata helpers ----

    fn arch_key(&self, suffix: &str) -> Result<(String, Option<&MetaValue>)> {
        let key = format!("{}.{suffix}", self.architecture()?);
        let v = self.get(&key);
        Ok((key, v))
    }

    /// An integer, or an array of equal integers (llama.cpp allows per-layer arrays).
    fn uniform_u64(&self, key: &str, v: &MetaValue) -> Result<u64> {
        let bad = || self.err(format!("metadata key '{key}' is a {}, not a positive integer", v.type_name()));
        match v.as_array() {
            Some(items) => {
                let first = items.first().and_then(MetaValue::as_u64).ok_or_else(bad)?;
                if items.iter().any(|i| i.as_u64() != Some(first)) {
                    return Err(self.err(format!("metadata key '{key}' differs between layers, which this engine does not support")));
                }
                Ok(first)
            }
            None => v.as_u64().ok_or_else(bad),
        }
    }

    fn arch_u64(&self, suffix: &str) -> Result<Option<u64>> {
        match self.arch_key(suffix)? {
            (key, Some(v)) => Ok(Some(self.uniform_u64(&key, v)?)),
            (_, None) => Ok(None),
        }
    }

    fn arch_u64_req(&self, suffix: &str) -> Result<u64> {
        let key = self.arch_key(suffix)?.0;
        self.arch_u64(suffix)?.ok_or_else(|| self.err(format!("metadata key '{key}' is missing; the file does not describe a complete model")))
    }

    fn arch_f64(&self, suffix: &str, default: f64) -> Result<f64> {
        match self.arch_key(suffix)? {
            (key, Some(v)) => v.as_f64().ok_or_else(|| self.err(format!("metadata key '{key}' is a {}, not a number", v.type_name()))),
            (_, None) => Ok(default),
        }
    }

    fn token_id(&self, name: &str) -> Result<Option<u64>> {
        let key = format!("tokenizer.ggml.{name}");
        match self.get(&key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| self.err(format!("metadata key '{key}' is a {}, not a token id", v.type_name()))),
        }
    }

    /// Per layer, whether it uses sliding-window attention: `{arch}.attention.sliding_window_pattern`
    /// where present (a period `n`: every n-th layer is global; or one bool per layer), else
    /// llama.cpp's built-in period for the architecture.
    fn sliding_layers(&self, n_layers: u64, default_period: u64) -> Result<Vec<bool>> {
        let (key, value) = self.arch_key("attention.sliding_window_pattern")?;
        let by_period = |p: u64| (0..n_layers).map(|i| p == 0 || i % p < p - 1).collect::<Vec<bool>>();
        match value {
            None => Ok(by_period(default_period)),
            Some(MetaValue::Array(items)) => {
                if items.len() as u64 != n_layers {
                    return Err(self.err(format!("metadata key '{key}' has {} entries for {n_layers} layers", items.len())));
                }
                items
                    .iter()
                    .map(|v| v.as_bool().or_else(|| v.as_u64().map(|x| x != 0)))
                    .collect::<Option<Vec<bool>>>()
                    .ok_or_else(|| self.err(format!("metadata key '{key}' must hold one bool per layer")))
            }
            Some(v) => Ok(by_period(v.as_u64().ok_or_else(|| self.err(format!("metadata key '{key}' is a {}, not a layer period", v.type_name())))?)),
        }
    }

    /// The vocabulary size: `{arch}.vocab_size`, else the number of tokens, else the embedding's
    /// row count.
    fn vocab_size(&self) -> Result<u64> {
        if let Some(v) = self.arch_u64("vocab_size")? {
            return Ok(v);
        }
        if let Some(tokens) = self.get("tokenizer.ggml.tokens").and_then(MetaValue::as_array) {
            return Ok(tokens.len() as u64);
        }
        self.tensor("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .ok_or_else(|| self.err("gives no vocabulary size (no vocab_size key, tokenizer.ggml.tokens or token_embd.weight)"))
    }

    /// A Hugging Face `config.json` for the model (`gemma2`, or `gemma3` as transformers 5's
    /// `gemma3_text`), for `ModelConfig::from_hf_json`.
    pub fn hf_config_json(&self) -> Result<String> {
        let arch = self.architecture()?.to_string();
        let (model_type, class, big_layers) = match arch.as_str() {
            "gemma2" => ("gemma2", "Gemma2ForCausalLM", 46),
            "gemma3" => ("gemma3_text", "Gemma3ForCausalLM", 62),
            other => {
                return Err(
                    self.err(format!("is a '{other}' model (general.architecture); this engine runs Gemma 2 and Gemma 3 text models ('gemma2', 'gemma3')"))
                )
            }
        };
        let hidden = self.arch_u64_req("embedding_length")?;
        let layers = self.arch_u64_req("block_count")?;
        let heads = self.arch_u64_req("attention.head_count")?;
        let kv_heads = self.arch_u64("attention.head_count_kv")?.unwrap_or(heads);
        if heads == 0 {
            return Err(self.err(format!("{arch}.attention.head_count is 0")));
        }
        let head_dim = self.arch_u64("attention.key_length")?.unwrap_or(hidden / heads);
        // llama.cpp: 1/sqrt(n_embd / n_head) for the 27B models, 1/sqrt(head_dim) otherwise.
        let query_pre_attn_scalar = if layers == big_layers { hidden / heads } else { head_dim };
        let eps = self.arch_f64("attention.layer_norm_rms_epsilon", 1e-6)?;
        let bos = self.token_id("bos_token_id")?.unwrap_or(2);
        let eos = self.token_id("eos_token_id")?.unwrap_or(1);
        let mut eos_ids = vec![eos];
        if let Some(eot) = self.token_id("eot_token_id")? {
            if eot != eos {
                eos_ids.push(eot);
            }
        }
        let pad = self.token_id("padding_token_id")?.unwrap_or(0);
        let type_names = |sliding: Vec<bool>| sliding.into_iter().map(|s| if s { "sliding_attention" } else { "full_attention" }).collect::<Vec<_>>();
        let mut cfg = json!({
            "architectures": [class],
            "model_type": model_type,
            "vocab_size": self.vocab_size()?,
            "hidden_size": hidden,
            "intermediate_size": self.arch_u64_req("feed_forward_length")?,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "query_pre_attn_scalar": query_pre_attn_scalar,
            "rms_norm_eps": eps,
            "hidden_activation": "gelu_pytorch_tanh",
            "tie_word_embeddings": self.tensor("output.weight").is_none(),
            "bos_token_id": bos,
            "eos_token_id": if eos_ids.len() == 1 { json!(eos) } else { json!(eos_ids) },
            "pad_token_id": pad,
        });
        let extra = if arch == "gemma2" {
            json!({
                "sliding_window": self.arch_u64("attention.sliding_window")?.unwrap_or(4096),
                "attn_logit_softcapping": self.arch_f64("attn_logit_softcapping", 50.0)?,
                "final_logit_softcapping": self.arch_f64("final_logit_softcapping", 30.0)?,
                "rope_parameters": { "rope_theta": self.arch_f64("rope.freq_base", 10000.0)?, "rope_type": "default" },
                "max_position_embeddings": self.arch_u64("context_length")?.unwrap_or(8192),
                "layer_types": type_names(self.sliding_layers(layers, 2)?),
            })
        } else {
            let mut full = json!({ "rope_type": "default", "rope_theta": self.arch_f64("rope.freq_base", 1_000_000.0)? });
            let (scaling_key, scaling) = self.arch_key("rope.scaling.type")?;
            match scaling.map(|v| v.as_str().ok_or_else(|| self.err(format!("metadata key '{scaling_key}' is not a string")))).transpose()? {
                None | Some("none") => {}
                Some("linear") => {
                    full["rope_type"] = json!("linear");
                    full["factor"] = json!(self.arch_f64("rope.scaling.factor", 1.0)?);
                }
                Some(other) => return Err(self.err(format!("uses RoPE scaling '{other}' ({scaling_key}); only linear scaling is supported"))),
            }
            json!({
                "sliding_window": self.arch_u64("attention.sliding_window")?.unwrap_or(4096),
                "attn_logit_softcapping": null,
                "final_logit_softcapping": null,
                "rope_parameters": {
                    "sliding_attention": { "rope_type": "default", "rope_theta": self.arch_f64("rope.freq_base_swa", 10000.0)? },
                    "full_attention": full,
                },
                "max_position_embeddings": self.arch_u64("context_length")?.unwrap_or(131072),
                "layer_types": type_names(self.sliding_layers(layers, 6)?),
            })
        };
        if let (Some(cfg), Some(extra)) = (cfg.as_object_mut(), extra.as_object()) {
            cfg.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        serde_json::to_string_pretty(&cfg).map_err(|e| self.err(format!("config: {e}")))
    }

    /// A Hugging Face `tokenizer.json` for the file's SentencePiece vocabulary, built the way
    /// transformers builds one from a Gemma GGUF (`integrations/gguf/gguf_tokenizer_mapping.py`,
    /// `gemma_tokenizer`):
    /// - tokens made only of whitespace that contain a space are respelled as that many `▁`;
    /// - BPE with byte fallback over the vocabulary; the merges are every split of a token into
    ///   two tokens, ranked by the merged token's position in the file (earlier first; for
    ///   Gemma the scores follow the same order, but transformers goes by position), and within
    ///   one token by the longer left part first;
    /// - normalizer `" "` → `▁`, decoder `▁` → `" "` + byte fallback + fuse;
    /// - control tokens (and Gemma's turn and image markers, and the bos/eos/unk/pad/mask
    ///   tokens) are special added tokens; user-defined ones are plain added tokens, all
    ///   matched before normalization.
    pub fn tokenizer_json(&self) -> Result<String> {
        match self.get("tokenizer.ggml.model").and_then(MetaValue::as_str) {
            Some("llama") => {}
            Some(other) => {
                return Err(self.err(format!("uses a '{other}' tokenizer (tokenizer.ggml.model); only SentencePiece ('llama'), which Gemma uses, is supported")))
            }
            None => return Err(self.err("has no tokenizer (tokenizer.ggml.model is missing)")),
        }
        let tokens: Vec<&str> = self
            .get("tokenizer.ggml.tokens")
            .and_then(MetaValue::as_array)
            .ok_or_else(|| self.err("has no tokenizer.ggml.tokens array"))?
            .iter()
            .enumerate()
            .map(|(i, t)| t.as_str().ok_or_else(|| self.err(format!("tokenizer.ggml.tokens[{i}] is not a string"))))
            .collect::<Result<_>>()?;
        if tokens.is_empty() || tokens.len() > u32::MAX as usize {
            return Err(self.err(format!("tokenizer.ggml.tokens has {} entries", tokens.len())));
        }
        let types: Vec<i64> = match self.get("tokenizer.ggml.token_type").and_then(MetaValue::as_array) {
            None => vec![1; tokens.len()],
            Some(a) if a.len() == tokens.len() => a
                .iter()
                .enumerate()
                .map(|(i, t)| t.as_i64().ok_or_else(|| self.err(format!("tokenizer.ggml.token_type[{i}] is not an integer"))))
                .collect::<Result<_>>()?,
            Some(a) => return Err(self.err(format!("tokenizer.ggml.token_type has {} entries for {} tokens", a.len(), tokens.len()))),
        };
        let token_name = |key: &str| -> Result<Option<&str>> { Ok(self.token_id(key)?.and_then(|id| tokens.get(id as usize).copied())) };
        let (bos, eos, unk, pad) = (token_name("bos_token_id")?, token_name("eos_token_id")?, token_name("unknown_token_id")?, token_name("padding_token_id")?);
        let add_bos = self.get("tokenizer.ggml.add_bos_token").and_then(MetaValue::as_bool).unwrap_or(true);
        let add_eos = self.get("tokenizer.ggml.add_eos_token").and_then(MetaValue::as_bool).unwrap_or(false);

        let spelled: Vec<String> =
            tokens.iter().map(|t| if t.contains(' ') && t.chars().all(py_isspace) { "\u{2581}".repeat(t.chars().count()) } else { t.to_string() }).collect();
        // Like a Python dict built in order: a repeated token keeps its last id.
        let mut vocab: HashMap<&str, u32> = HashMap::with_capacity(spelled.len());
        for (i, t) in spelled.iter().enumerate() {
            vocab.insert(t, i as u32);
        }
        let is_current = |i: usize| vocab.get(spelled[i].as_str()) == Some(&(i as u32));

        let mut out = String::with_capacity(spelled.len() * 40);
        // Added tokens, by id.
        let named: Vec<&str> = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
            .into_iter()
            .chain([bos, eos, unk, pad].into_iter().flatten())
            .collect();
        let mut added: BTreeMap<u32, (&str, bool)> = BTreeMap::new();
        for (&token, &ty) in tokens.iter().zip(&types) {
            let Some(&id) = vocab.get(token) else { continue }; // a respelled whitespace token
            let special = ty == TOKEN_CONTROL || ty == TOKEN_UNKNOWN || named.contains(&token);
            if special || ty == TOKEN_USER_DEFINED {
                let entry = added.entry(id).or_insert((token, special));
                entry.1 |= special;
            }
        }
        let added_json: Vec<Value> = added
            .iter()
            .map(|(id, (content, special))| {
                json!({ "id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": special })
            })
            .collect();
        let template = |pair: bool| {
            let mut seq = Vec::new();
            for (type_id, name) in [(0, "A")].into_iter().chain(pair.then_some((1, "B"))) {
                if let (true, Some(b)) = (add_bos, bos) {
                    seq.push(json!({ "SpecialToken": { "id": b, "type_id": type_id } }));
                }
                seq.push(json!({ "Sequence": { "id": name, "type_id": type_id } }));
                if let (true, Some(e)) = (add_eos, eos) {
                    seq.push(json!({ "SpecialToken": { "id": e, "type_id": type_id } }));
                }
            }
            seq
        };
        let mut specials = serde_json::Map::new();
        for (on, tok) in [(add_bos, bos), (add_eos, eos)] {
            if let (true, Some(t)) = (on, tok) {
                if let Some(&id) = vocab.get(t) {
                    specials.insert(t.to_string(), json!({ "id": t, "ids": [id], "tokens": [t] }));
                }
            }
        }
        let post_processor = json!({ "type": "TemplateProcessing", "single": template(false), "pair": template(true), "special_tokens": specials });
        let head = json!({
            "added_tokens": added_json,
            "normalizer": { "type": "Replace", "pattern": { "String": " " }, "content": "\u{2581}" },
            "pre_tokenizer": { "type": "Split", "pattern": { "String": " " }, "behavior": "MergedWithPrevious", "invert": false },
            "post_processor": post_processor,
            "decoder": { "type": "Sequence", "decoders": [
                { "type": "Replace", "pattern": { "String": "\u{2581}" }, "content": " " },
                { "type": "ByteFallback" },
                { "type": "Fuse" },
            ] },
        });
        out.push_str("{\"version\":\"1.0\",\"truncation\":null,\"padding\":null");
        for key in ["added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder"] {
            out.push_str(&format!(",{}:{}", js(key), head[key]));
        }
        out.push_str(&format!(
            ",\"model\":{{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":{},\"continuing_subword_prefix\":null,\"end_of_word_suffix\":null,\
             \"fuse_unk\":true,\"byte_fallback\":true,\"ignore_merges\":false,\"vocab\":{{",
            js(unk.unwrap_or("<unk>"))
        ));
        let mut first = true;
        for (i, t) in spelled.iter().enumerate() {
            if is_current(i) {
                out.push_str(&format!("{}{}:{i}", if first { "" } else { "," }, js(t)));
                first = false;
            }
        }
        out.push_str("},\"merges\":[");
        let mut first = true;
        for (i, t) in spelled.iter().enumerate() {
            if !is_current(i) {
                continue;
            }
            // Every split into two vocabulary pieces, longest left part first.
            for (at, _) in t.char_indices().skip(1).collect::<Vec<_>>().into_iter().rev() {
                let (l, r) = t.split_at(at);
                if vocab.contains_key(l) && vocab.contains_key(r) {
                    out.push_str(&format!("{}[{},{}]", if first { "" } else { "," }, js(l), js(r)));
                    first = false;
                }
            }
        }
        out.push_str("]}}");
        Ok(out)
    }
}

/// Reads `v` by Hugging Face name, so `write_tensors` can take a GGUF like a checkpoint.
impl super::TensorSource for Gguf {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.hf_shape(name)
    }
    fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        self.read_hf_f32(name)
    }
}

// ---- dequantization: ggml-quants.c `dequantize_row_*`, block by block ----

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) from a K-quant's 12
/// packed bytes: j < 4 in the low 6 bits of bytes j and j+4; j >= 4 split between the low/high
/// nibble of byte j+4 and the top 2 bits of bytes j-4 and j.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

fn deq_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0xF) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

fn deq_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0xF) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

fn deq_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = (((qs[j] & 0xF) | xh0) as i32 - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) | xh1) as i32 - 16) as f32 * d;
    }
}

fn deq_q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = ((qs[j] & 0xF) | xh0) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) | xh1) as f32 * d + m;
    }
}

fn deq_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = b[2 + j] as i8 as f32 * d;
    }
}

fn deq_q4_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    for (n, chunk) in y.chunks_exact_mut(64).enumerate() {
        let q = &b[16 + 32 * n..16 + 32 * (n + 1)];
        let (sc1, m1) = scale_min_k4(2 * n, scales);
        let (sc2, m2) = scale_min_k4(2 * n + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1 as f32, min * m1 as f32, d * sc2 as f32, min * m2 as f32);
        for l in 0..32 {
            chunk[l] = d1 * (q[l] & 0xF) as f32 - m1;
            chunk[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

fn deq_q5_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    for (n, chunk) in y.chunks_exact_mut(64).enumerate() {
        let ql = &b[48 + 32 * n..48 + 32 * (n + 1)];
        let (u1, u2) = (1u8 << (2 * n), 2u8 << (2 * n));
        let (sc1, m1) = scale_min_k4(2 * n, scales);
        let (sc2, m2) = scale_min_k4(2 * n + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1 as f32, min * m1 as f32, d * sc2 as f32, min * m2 as f32);
        for l in 0..32 {
            chunk[l] = d1 * ((ql[l] & 0xF) + if qh[l] & u1 != 0 { 16 } else { 0 }) as f32 - m1;
            chunk[l + 32] = d2 * ((ql[l] >> 4) + if qh[l] & u2 != 0 { 16 } else { 0 }) as f32 - m2;
        }
    }
}

fn deq_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for (n, chunk) in y.chunks_exact_mut(128).enumerate() {
        let ql = &b[64 * n..64 * (n + 1)];
        let qh = &b[128 + 32 * n..128 + 32 * (n + 1)];
        let sc = |k: usize| b[192 + 8 * n + k] as i8 as f32;
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            chunk[l] = d * sc(is) * q1 as f32;
            chunk[l + 32] = d * sc(is + 2) * q2 as f32;
            chunk[l + 64] = d * sc(is + 4) * q3 as f32;
            chunk[l + 96] = d * sc(is + 6) * q4 as f32;
        }
    }
}

/// Dequantize whole blocks of `ty` to f32, following ggml's reference code; `None` if `ty` is
/// not one of `GgmlType::READABLE` or `bytes` is not a whole number of blocks.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    let (block, block_bytes) = (ty.block_size()? as usize, ty.block_bytes()? as usize);
    if !bytes.len().is_multiple_of(block_bytes) {
        return None;
    }
    let n = bytes.len() / block_bytes * block;
    Some(match ty {
        GgmlType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        GgmlType::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        GgmlType::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => {
            let f: fn(&[u8], &mut [f32]) = match ty {
                GgmlType::Q4_0 => deq_q4_0,
                GgmlType::Q4_1 => deq_q4_1,
                GgmlType::Q5_0 => deq_q5_0,
                GgmlType::Q5_1 => deq_q5_1,
                GgmlType::Q8_0 => deq_q8_0,
                GgmlType::Q4_K => deq_q4_k,
                GgmlType::Q5_K => deq_q5_k,
                GgmlType::Q6_K => deq_q6_k,
                _ => return None,
            };
            let mut out = vec![0f32; n];
            for (b, y) in bytes.chunks_exact(block_bytes).zip(out.chunks_exact_mut(block)) {
                f(b, y);
            }
            out
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q8_0_block() {
        // d = 0.5; qs = -16..16.
        let mut b = h(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = dequantize(GgmlType::Q8_0, &b).unwrap();
        let want: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.5).collect();
        assert_eq!(y, want);
    }

    #[test]
    fn q4_0_block() {
        // d = 2; byte j holds low nibble j and high nibble 15 - j: element j is (j - 8) * 2,
        // element 16 + j is (7 - j) * 2.
        let mut b = h(2.0).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = dequantize(GgmlType::Q4_0, &b).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 2.0);
            assert_eq!(y[16 + j], (7.0 - j as f32) * 2.0);
        }
    }

    #[test]
    fn q5_0_block() {
        // d = 1; qs nibbles all 3 (low) and 5 (high); qh sets the fifth bit of elements 0, 17
        // and 31 only: element 0 = 3 + 16 - 16 = 3, element 1 = 3 - 16 = -13, element 17 = 5,
        // element 16 = 5 - 16 = -11, element 31 = 5.
        let qh: u32 = 1 | (1 << 17) | (1 << 31);
        let mut b = h(1.0).to_vec();
        b.extend(qh.to_le_bytes());
        b.extend([0x53u8; 16]);
        let y = dequantize(GgmlType::Q5_0, &b).unwrap();
        assert_eq!((y[0], y[1], y[15], y[16], y[17], y[31]), (3.0, -13.0, -13.0, -11.0, 5.0, 5.0));
    }

    /// Eight 6-bit scales and mins packed into the 12 bytes Q4_K and Q5_K use: sub-blocks 0..4
    /// in the low 6 bits of bytes 0..4 (scales) and 4..8 (mins); 4..8 in the nibbles of bytes
    /// 8..12 plus the top two bits of bytes 0..8.
    fn pack_k_scales(scales: &[u8; 8], mins: &[u8; 8]) -> [u8; 12] {
        let mut packed = [0u8; 12];
        for j in 0..4 {
            packed[j] = scales[j] | ((scales[j + 4] >> 4) << 6);
            packed[j + 4] = mins[j] | ((mins[j + 4] >> 4) << 6);
            packed[j + 8] = (scales[j + 4] & 0xF) | ((mins[j + 4] & 0xF) << 4);
        }
        packed
    }

    #[test]
    fn q4_k_block() {
        // Scales 1..=8 and mins 8..=1 for the eight 32-value sub-blocks, packed by hand. With
        // 6-bit values 33 (sub 4's scale) and 40 (sub 7's min) the top bits are exercised.
        let scales: [u8; 8] = [1, 2, 3, 4, 33, 6, 7, 8];
        let mins: [u8; 8] = [8, 7, 6, 5, 4, 3, 2, 40];
        let packed = pack_k_scales(&scales, &mins);
        let (d, dmin) = (0.25f32, 0.5f32);
        let mut b = [h(d), h(dmin)].concat();
        b.extend(packed);
        // qs byte i of 32-byte group g: low nibble = element 64g + i, high = 64g + 32 + i.
        let code = |e: usize| ((e * 7 + 3) % 16) as u8;
        for g in 0..4 {
            for i in 0..32 {
                b.push(code(64 * g + i) | (code(64 * g + 32 + i) << 4));
            }
        }
        assert_eq!(b.len(), 144);
        let y = dequantize(GgmlType::Q4_K, &b).unwrap();
        for (e, v) in y.iter().enumerate() {
            let sub = e / 32;
            let want = d * scales[sub] as f32 * code(e) as f32 - dmin * mins[sub] as f32;
            assert_eq!(*v, want, "element {e}");
        }
    }

    #[test]
    fn q6_k_block() {
        // 6-bit codes q(e) = e % 64, split into 4 low bits (ql) and 2 high bits (qh) as Q6_K
        // lays them out; 16 int8 scales, one per 16 values, with negatives; d = 0.125.
        let code = |e: usize| (e % 64) as u8;
        let scales: Vec<i8> = (0..16).map(|i| (i as i8 - 8) * 3).collect();
        let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
        for half in 0..2 {
            for l in 0..32 {
                let e = |k: usize| code(128 * half + 32 * k + l);
                ql[64 * half + l] = (e(0) & 0xF) | ((e(2) & 0xF) << 4);
                ql[64 * half + 32 + l] = (e(1) & 0xF) | ((e(3) & 0xF) << 4);
                qh[32 * half + l] = (e(0) >> 4) | ((e(1) >> 4) << 2) | ((e(2) >> 4) << 4) | ((e(3) >> 4) << 6);
            }
        }
        let mut b = [ql.to_vec(), qh.to_vec(), scales.iter().map(|s| *s as u8).collect()].concat();
        b.extend(h(0.125));
        let y = dequantize(GgmlType::Q6_K, &b).unwrap();
        for (e, v) in y.iter().enumerate() {
            let want = 0.125 * scales[e / 16] as f32 * (code(e) as f32 - 32.0);
            assert_eq!(*v, want, "element {e}");
        }
    }

    #[test]
    fn q5_k_block() {
        // Like Q4_K plus a fifth bit per value: bit 2g (first 32 values of group g) and 2g+1
        // (second 32) of qh[i].
        let scales: [u8; 8] = [3, 1, 4, 1, 5, 9, 2, 6];
        let mins: [u8; 8] = [2, 7, 1, 8, 2, 8, 1, 8];
        let packed = pack_k_scales(&scales, &mins);
        let code = |e: usize| ((e * 11 + 5) % 32) as u8;
        let mut qh = [0u8; 32];
        let mut qs = [0u8; 128];
        for e in 0..256 {
            let (g, k, i) = (e / 64, (e / 32) % 2, e % 32);
            qh[i] |= (code(e) >> 4) << (2 * g + k);
            qs[32 * g + i] |= (code(e) & 0xF) << (4 * k);
        }
        let mut b = [h(0.5), h(0.25)].concat();
        b.extend(packed);
        b.extend(qh);
        b.extend(qs);
        let y = dequantize(GgmlType::Q5_K, &b).unwrap();
        for (e, v) in y.iter().enumerate() {
            let want = 0.5 * scales[e / 32] as f32 * code(e) as f32 - 0.25 * mins[e / 32] as f32;
            assert_eq!(*v, want, "element {e}");
        }
    }

    #[test]
    fn q4_1_and_q5_1_blocks() {
        let mut b = [h(0.5), h(-1.0)].concat();
        b.extend((0..16u8).map(|j| j | (j << 4)));
        let y = dequantize(GgmlType::Q4_1, &b).unwrap();
        assert_eq!((y[3], y[19]), (0.5, 0.5));
        let mut b = [h(1.0), h(0.5)].concat();
        b.extend((1u32 << 31).to_le_bytes());
        b.extend([0x21u8; 16]);
        let y = dequantize(GgmlType::Q5_1, &b).unwrap();
        assert_eq!((y[0], y[16], y[31]), (1.5, 2.5, 18.5));
    }

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
