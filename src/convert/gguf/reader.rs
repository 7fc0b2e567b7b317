//! The binary header reader.
//!
//! Layout (v2 and v3; all little-endian): magic `GGUF`, u32 version, u64 tensor count, u64
//! key/value count; the key/values (string key, u32 value type, value; strings are a u64 byte
//! length and UTF-8 bytes, arrays a u32 element type, a u64 count and the elements); the tensor
//! infos (name, u32 dim count, u64 dims, u32 GGML type, u64 offset into the data section); then
//! the data section, starting at the next multiple of `general.alignment` (default 32).
//!
//! Every count and length is checked against the bytes left in the file before anything is
//! allocated for it.

use std::io::Read;

use crate::error::{Error, Result};

/// Nested arrays deeper than this are refused (no real file nests at all).
const MAX_NESTING: usize = 4;
/// Array elements in all of a header's metadata, at most: each becomes a `MetaValue` (32
/// bytes), so a hostile file of tiny elements cannot ask for 32 times its size. Gemma 3's
/// vocabulary takes 3 arrays of 262144.
pub(super) const MAX_META_ELEMENTS: u64 = 1 << 22;
/// Bytes of one string in the header, at most.
const MAX_STRING: u64 = 16 << 20;

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

/// Reads the header from any byte stream, tracking the position so every length can be checked
/// against the bytes left.
pub(super) struct HeaderReader<'a, R: Read> {
    pub(super) r: R,
    pub(super) pos: u64,
    pub(super) len: u64,
    pub(super) label: &'a str,
    /// Array elements read so far (`MAX_META_ELEMENTS`).
    pub(super) elements: u64,
}

impl<R: Read> HeaderReader<'_, R> {
    pub(super) fn err(&self, detail: impl std::fmt::Display) -> Error {
        Error::Format(format!("{}: {detail}", self.label))
    }

    fn truncated(&self, what: &dyn Fn() -> String) -> Error {
        self.err(format!("{} runs past the end of the file (byte {} of {}); the file is truncated or not a GGUF file", what(), self.pos, self.len))
    }

    pub(super) fn left(&self) -> u64 {
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

    pub(super) fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }

    pub(super) fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(super) fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub(super) fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.u64(what)?;
        if n > self.left() {
            return Err(self.err(format!("{} claims {n} bytes but only {} are left in the file; the file is truncated or corrupt", what(), self.left())));
        }
        // A file read by ranges (a URL) has its header checked against the whole file's size,
        // so one length field could ask for gigabytes here: no real string (a key, a token, a
        // chat template) comes near this. Found by tests/fuzz.rs at GEMMA_FUZZ_SCALE=5.
        if n > MAX_STRING {
            return Err(self.err(format!("{} claims a string of {n} bytes, longer than any real one ({MAX_STRING} at most); the file is corrupt", what())));
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

    pub(super) fn value(&mut self, ty: u32, depth: usize, what: &dyn Fn() -> String) -> Result<MetaValue> {
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
                self.elements = self.elements.saturating_add(count);
                if self.elements > MAX_META_ELEMENTS {
                    return Err(self.err(format!(
                        "{} takes the header's metadata past {MAX_META_ELEMENTS} array elements in all; no model's vocabulary needs that many, so the file is corrupt or hostile",
                        what()
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
