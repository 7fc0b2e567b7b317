//! A streaming reader for Hugging Face safetensors files (single file or an
//! `model.safetensors.index.json` set): the header is parsed once, and each tensor is read from
//! disk only when asked for, so converting a model never holds more than one tensor. Files
//! already in memory (a browser, a test) are read the same way.
//! Format: 8-byte little-endian header length, a JSON header
//! `{name: {dtype, shape, data_offsets: [begin, end]}}`, then the data.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Memory(Arc<[u8]>),
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<usize>,
    source: Source,
    /// Absolute byte range in the source.
    begin: u64,
    end: u64,
}

/// All tensors of a checkpoint, by name.
#[derive(Debug, Default)]
pub struct Checkpoint {
    pub tensors: BTreeMap<String, TensorInfo>,
}

fn bad(file: &Path, detail: impl std::fmt::Display) -> Error {
    Error::Format(format!("{}: {detail}", file.display()))
}

impl Checkpoint {
    /// Open `dir/model.safetensors`, or every file named by `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let mut ck = Checkpoint::default();
        if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| bad(&index, e))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| bad(&index, format!("not valid JSON: {e}")))?;
            let map = v.get("weight_map").and_then(Value::as_object).ok_or_else(|| bad(&index, "has no weight_map"))?;
            let mut files: Vec<&str> = map.values().filter_map(Value::as_str).collect();
            files.sort();
            files.dedup();
            for f in files {
                // A shard of this checkpoint, in its directory: not a path elsewhere (`../x`,
                // `/dev/zero`).
                let plain = !f.is_empty() && !f.starts_with('.') && !f.contains(['/', '\\']) && f.ends_with(".safetensors");
                if !plain {
                    return Err(bad(
                        &index,
                        format!("weight_map names the file '{f}'; a checkpoint's shards must be plain *.safetensors names in its directory"),
                    ));
                }
                ck.add_file(&dir.join(f))?;
            }
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                return Err(Error::Format(format!("{} has neither model.safetensors nor model.safetensors.index.json", dir.display())));
            }
            ck.add_file(&single)?;
        }
        Ok(ck)
    }

    pub fn add_file(&mut self, path: &Path) -> Result<()> {
        let mut f = File::open(path).map_err(|e| bad(path, e))?;
        let file_len = f.metadata().map_err(|e| bad(path, e))?.len();
        let mut len = [0u8; 8];
        f.read_exact(&mut len).map_err(|_| bad(path, "too short to be a safetensors file"))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > 100 << 20 || 8 + header_len > file_len {
            return Err(bad(path, format!("header length {header_len} does not fit the {file_len}-byte file (truncated or not safetensors)")));
        }
        let mut header = vec![0u8; header_len as usize];
        f.read_exact(&mut header).map_err(|e| bad(path, e))?;
        self.add_header(path, &header, file_len, Source::File(path.to_path_buf()))
    }

    /// Add a safetensors file held in memory; `label` names it in errors.
    pub fn add_bytes(&mut self, label: &str, bytes: Vec<u8>) -> Result<()> {
        let path = Path::new(label);
        let len = bytes.len() as u64;
        let header_len = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .ok_or_else(|| bad(path, "too short to be a safetensors file"))?;
        if header_len > 100 << 20 || 8 + header_len > len {
            return Err(bad(path, format!("header length {header_len} does not fit the {len}-byte file (truncated or not safetensors)")));
        }
        let bytes: Arc<[u8]> = bytes.into();
        let header = bytes[8..8 + header_len as usize].to_vec();
        self.add_header(path, &header, len, Source::Memory(bytes))
    }

    fn add_header(&mut self, path: &Path, header: &[u8], file_len: u64, source: Source) -> Result<()> {
        let header_len = header.len() as u64;
        let v: Value = serde_json::from_slice(header).map_err(|e| bad(path, format!("header is not valid JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| bad(path, "header is not a JSON object"))?;
        let data_start = 8 + header_len;
        let mut spans: Vec<(u64, u64, &str)> = Vec::new();
        for (name, info) in obj {
            if name == "__metadata__" {
                continue;
            }
            let dtype = info.get("dtype").and_then(Value::as_str).ok_or_else(|| bad(path, format!("{name}: no dtype")))?.to_string();
            let shape: Vec<usize> = info
                .get("shape")
                .and_then(Value::as_array)
                .ok_or_else(|| bad(path, format!("{name}: no shape")))?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<_>>()
                .ok_or_else(|| bad(path, format!("{name}: bad shape")))?;
            let offs = info.get("data_offsets").and_then(Value::as_array).ok_or_else(|| bad(path, format!("{name}: no data_offsets")))?;
            let (begin, end) = match (offs.first().and_then(Value::as_u64), offs.get(1).and_then(Value::as_u64)) {
                (Some(b), Some(e)) if b <= e && offs.len() == 2 => match (data_start.checked_add(b), data_start.checked_add(e)) {
                    (Some(b), Some(e)) => (b, e),
                    _ => return Err(bad(path, format!("{name}: data_offsets [{b}, {e}] lie past any file"))),
                },
                _ => return Err(bad(path, format!("{name}: bad data_offsets"))),
            };
            if end > file_len {
                return Err(bad(path, format!("{name}: data ends at byte {end} but the file has {file_len} (truncated download?)")));
            }
            let elem = match dtype.as_str() {
                "F32" | "I32" => 4,
                "F16" | "BF16" => 2,
                other => return Err(bad(path, format!("{name}: dtype {other} is not supported (F32, F16, BF16 and I32 are)"))),
            };
            let bytes = shape.iter().try_fold(elem as u64, |n, &d| n.checked_mul(d as u64));
            if bytes != Some(end - begin) {
                return Err(bad(path, format!("{name}: {} bytes for shape {shape:?} of {dtype}", end - begin)));
            }
            if self.tensors.contains_key(name) {
                return Err(bad(path, format!("{name} appears in two files of the checkpoint")));
            }
            spans.push((begin, end, name));
            self.tensors.insert(name.clone(), TensorInfo { dtype, shape, source: source.clone(), begin, end });
        }
        // As the format requires (and the safetensors crate checks): the tensors tile the data
        // section exactly, with no overlap and no gap.
        spans.sort_unstable();
        let mut at = data_start;
        for (begin, end, name) in &spans {
            if *begin != at {
                let what = if *begin < at { "overlaps the tensor before it" } else { "leaves a gap after the tensor before it" };
                return Err(bad(path, format!("{name}: data at bytes {begin}..{end} {what}; the file is corrupt")));
            }
            at = *end;
        }
        if at != file_len {
            return Err(bad(path, format!("the tensors end at byte {at} of {file_len}; the file has bytes no tensor covers")));
        }
        Ok(())
    }

    fn read_bytes(&self, name: &str) -> Result<(&TensorInfo, Vec<u8>)> {
        let info = self.tensors.get(name).ok_or_else(|| Error::Format(format!("the checkpoint has no tensor '{name}'")))?;
        let bytes = match &info.source {
            Source::Memory(all) => all[info.begin as usize..info.end as usize].to_vec(),
            Source::File(path) => {
                let mut f = File::open(path).map_err(|e| bad(path, e))?;
                f.seek(SeekFrom::Start(info.begin)).map_err(|e| bad(path, e))?;
                let mut bytes = vec![0u8; (info.end - info.begin) as usize];
                f.read_exact(&mut bytes).map_err(|e| bad(path, format!("{name}: {e}")))?;
                bytes
            }
        };
        Ok((info, bytes))
    }

    /// Read an I32 tensor (token ids in reference files).
    pub fn read_i32(&self, name: &str) -> Result<Vec<i32>> {
        let (info, bytes) = self.read_bytes(name)?;
        if info.dtype != "I32" {
            return Err(Error::Format(format!("{name} is {}, not I32", info.dtype)));
        }
        Ok(bytes.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    /// Read one floating-point tensor, widened to f32.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (info, bytes) = self.read_bytes(name)?;
        let values = match info.dtype.as_str() {
            "F32" => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            "F16" => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            "BF16" => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => return Err(Error::Format(format!("{name} is {other}, not a floating-point tensor"))),
        };
        Ok((info.shape.clone(), values))
    }
}
