//! Packed weight storage: the codec for every storage type a kernel reads.
//!
//! All tensors are row-major `[rows, cols]` (for a linear layer: `[out_features, in_features]`,
//! the Hugging Face orientation) and live in GPU memory as `array<u32>`. Element `e = r*cols + c`:
//!
//! | type  | words                          | element e                                             |
//! |-------|--------------------------------|-------------------------------------------------------|
//! | f32   | rows*cols                      | `word[e]` is the f32 bit pattern                      |
//! | fp16  | ceil(rows*cols / 2)            | half `e & 1` (0 = low 16 bits) of `word[e >> 1]`      |
//! | bf16  | ceil(rows*cols / 2)            | same packing; widened by `bits << 16`                 |
//! | int4  | rows*cols/8 + ceil(groups / 2) | codes, then fp16 scales (see below)                   |
//!
//! **int4** (`cols % 32 == 0`): symmetric, one scale per group of 32 consecutive
//! input-dimension values (`g = e / 32`, so a group never crosses a row). Code `q` in 0..=15 is
//! nibble `e & 7` of `word[e >> 3]` (nibble 0 = bits 0..4) and stands for
//! `(q - 8) * scale[g]` — the zero point is 8. `scale[g] = max|x| / 7` over the group, rounded
//! to fp16, so codes 1..=15 are used and 0 (-8) never is; `q = clamp(round(x / scale) + 8, 0, 15)`.
//! The scales are fp16, packed like an fp16 tensor, starting at word `rows*cols/8`
//! (`Packed::scales_offset`). Round-trip error per element is at most `scale/2 + |x|·2⁻¹¹`
//! (half a quantisation step, plus the fp16 rounding of the scale), i.e. about `max|x|/14`.

use half::{bf16, f16};

use crate::error::{Error, Result};

/// Values per int4 scale.
pub const INT4_GROUP: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    Bf16,
    Int4,
}

impl DType {
    /// The value of the WGSL override `WTYPE` that selects this type in `shaders/packed.wgsl`.
    pub fn wgsl_id(self) -> f64 {
        match self {
            DType::F32 => 0.0,
            DType::F16 => 1.0,
            DType::Bf16 => 2.0,
            DType::Int4 => 3.0,
        }
    }

    /// u32 words for a `[rows, cols]` tensor of this type.
    pub fn words(self, rows: usize, cols: usize) -> usize {
        let n = rows * cols;
        match self {
            DType::F32 => n,
            DType::F16 | DType::Bf16 => n.div_ceil(2),
            DType::Int4 => n / 8 + (n / INT4_GROUP).div_ceil(2),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "fp16",
            DType::Bf16 => "bf16",
            DType::Int4 => "int4",
        }
    }
}

/// A packed `[rows, cols]` tensor ready for upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub words: Vec<u32>,
}

fn get_half(words: &[u32], i: usize) -> u16 {
    (words[i >> 1] >> ((i & 1) * 16)) as u16
}

fn set_half(words: &mut [u32], i: usize, v: u16) {
    let shift = (i & 1) * 16;
    words[i >> 1] = (words[i >> 1] & !(0xffff << shift)) | ((v as u32) << shift);
}

impl Packed {
    /// Pack f32 values `data` (row-major, `rows*cols` long) as `dtype`.
    pub fn pack(dtype: DType, rows: usize, cols: usize, data: &[f32]) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(Error::invalid("pack", format!("{} values for a [{rows}, {cols}] tensor", data.len())));
        }
        if dtype == DType::Int4 && cols % INT4_GROUP != 0 {
            return Err(Error::invalid(
                "pack",
                format!("int4 needs the input dimension to be a multiple of {INT4_GROUP}; it is {cols}"),
            ));
        }
        let mut words = vec![0u32; dtype.words(rows, cols)];
        match dtype {
            DType::F32 => words.iter_mut().zip(data).for_each(|(w, x)| *w = x.to_bits()),
            DType::F16 => data.iter().enumerate().for_each(|(i, x)| set_half(&mut words, i, f16::from_f32(*x).to_bits())),
            DType::Bf16 => data.iter().enumerate().for_each(|(i, x)| set_half(&mut words, i, bf16::from_f32(*x).to_bits())),
            DType::Int4 => {
                let scales_at = 2 * (rows * cols / 8);
                for (g, group) in data.chunks_exact(INT4_GROUP).enumerate() {
                    let amax = group.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let scale = f16::from_f32(amax / 7.0);
                    set_half(&mut words, scales_at + g, scale.to_bits());
                    let s = scale.to_f32();
                    for (j, x) in group.iter().enumerate() {
                        let q = if s > 0.0 { ((x / s).round() + 8.0).clamp(0.0, 15.0) as u32 } else { 8 };
                        let e = g * INT4_GROUP + j;
                        words[e >> 3] |= q << ((e & 7) * 4);
                    }
                }
            }
        }
        Ok(Self { dtype, rows, cols, words })
    }

    /// Word index where the int4 scales start (0 for other types).
    pub fn scales_offset(&self) -> usize {
        match self.dtype {
            DType::Int4 => self.rows * self.cols / 8,
            _ => 0,
        }
    }

    /// Element `(r, c)` widened to f32, exactly as the shaders do it.
    pub fn get(&self, r: usize, c: usize) -> f32 {
        let e = r * self.cols + c;
        match self.dtype {
            DType::F32 => f32::from_bits(self.words[e]),
            DType::F16 => f16::from_bits(get_half(&self.words, e)).to_f32(),
            DType::Bf16 => bf16::from_bits(get_half(&self.words, e)).to_f32(),
            DType::Int4 => {
                let q = (self.words[e >> 3] >> ((e & 7) * 4)) & 15;
                let scale = f16::from_bits(get_half(&self.words, 2 * self.scales_offset() + e / INT4_GROUP));
                (q as f32 - 8.0) * scale.to_f32()
            }
        }
    }

    /// Every element widened to f32 (the CPU twin of a kernel's weight load).
    pub fn unpack(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for c in 0..self.cols {
                out.push(self.get(r, c));
            }
        }
        out
    }

    /// Rows `start..end` as a self-contained packed tensor, bit-exact (no re-quantisation).
    pub fn rows_slice(&self, start: usize, end: usize) -> Self {
        let (rows, cols) = (end - start, self.cols);
        let mut words = vec![0u32; self.dtype.words(rows, cols)];
        match self.dtype {
            DType::F32 => words.copy_from_slice(&self.words[start * cols..end * cols]),
            DType::F16 | DType::Bf16 => {
                for i in 0..rows * cols {
                    set_half(&mut words, i, get_half(&self.words, start * cols + i));
                }
            }
            DType::Int4 => {
                words[..rows * cols / 8].copy_from_slice(&self.words[start * cols / 8..end * cols / 8]);
                let (src_at, dst_at, per_row) = (2 * self.scales_offset(), 2 * (rows * cols / 8), cols / INT4_GROUP);
                for g in 0..rows * per_row {
                    set_half(&mut words, dst_at + g, get_half(&self.words, src_at + start * per_row + g));
                }
            }
        }
        Self { dtype: self.dtype, rows, cols, words }
    }

    pub fn bytes(&self) -> u64 {
        self.words.len() as u64 * 4
    }
}

/// Bytes of one row of a `dtype` tensor with `cols` columns, scales included (an upper bound
/// for the half-word types, whose rows need not start on a word).
pub fn row_bytes(dtype: DType, cols: usize) -> u64 {
    match dtype {
        DType::F32 => 4 * cols as u64,
        DType::F16 | DType::Bf16 => 2 * cols as u64 + 4,
        DType::Int4 => cols as u64 / 2 + 2 * (cols / INT4_GROUP) as u64 + 4,
    }
}
