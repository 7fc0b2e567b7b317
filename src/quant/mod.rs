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
//! | int4  | rows*cols/8 + groups           | codes, then one (scale, min) word per group           |
//! | int8  | rows*cols/4 + ceil(groups / 2) | codes, then fp16 scales                               |
//! | q4_0 … q6_k | per `DType::planes`        | llama.cpp's blocks, value for value (`blocks`)        |
//!
//! Both quantized types have one set of parameters per group of 32 consecutive input-dimension
//! values (`g = e / 32`; `cols % 32 == 0`, so a group never crosses a row). The parameters start
//! at word `Packed::scales_offset` (the number of code words).
//!
//! **int4** (affine): code `q` in 0..=15 is nibble `e & 7` of `word[e >> 3]` (nibble 0 = bits
//! 0..4) and stands for `q * scale[g] + min[g]`. Word `scales_offset + g` holds `scale` in its low
//! and `min` in its high 16 bits, both fp16. The quantizer searches the grid (scale, min) that
//! minimises the group's squared error (least-squares refits of candidate grids, as llama.cpp's
//! K-quants do), rounds both to fp16 and then picks each code against the rounded grid. A group
//! already on a 16-level grid that uses codes 0 and 15 (a Q4_K or Q4_1 block) is reproduced up to
//! the fp16 rounding of its parameters.
//!
//! **int8** (symmetric): code `q` in -127..=127 is byte `e & 3` of `word[e >> 2]` (two's
//! complement) and stands for `q * scale[g]`, `scale = max|x| / 127` rounded to fp16; the scales
//! are packed like an fp16 tensor from word `scales_offset`. Error per element is at most half a
//! step (`max|x| / 254`) plus the scale's rounding, so 5- and 6-bit GGUF blocks (Q5_0, Q6_K) and
//! Q8_0 blocks survive almost unchanged.

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::shaders::consts;

pub mod blocks;
pub use blocks::GgmlBlock;

/// Values per int4 / int8 group (one scale, and for int4 one min, each).
pub const INT4_GROUP: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    Bf16,
    Int4,
    Int8,
    /// llama.cpp's blocks, value for value (`blocks`): Q4_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K.
    Q4_0,
    Q5_0,
    Q5_1,
    Q4K,
    Q5K,
    Q6K,
}

impl DType {
    /// Every storage type.
    pub const ALL: [DType; 11] =
        [DType::F32, DType::F16, DType::Bf16, DType::Int4, DType::Int8, DType::Q4_0, DType::Q5_0, DType::Q5_1, DType::Q4K, DType::Q5K, DType::Q6K];

    /// The value of the WGSL override `WTYPE` that selects this type in `shaders/packed.wgsl`.
    pub fn wgsl_id(self) -> f64 {
        match self {
            DType::F32 => consts::WTYPE_F32 as f64,
            DType::F16 => consts::WTYPE_F16 as f64,
            DType::Bf16 => consts::WTYPE_BF16 as f64,
            DType::Int4 => consts::WTYPE_INT4 as f64,
            DType::Int8 => consts::WTYPE_INT8 as f64,
            DType::Q4_0 => consts::WTYPE_Q4_0 as f64,
            DType::Q5_0 => consts::WTYPE_Q5_0 as f64,
            DType::Q5_1 => consts::WTYPE_Q5_1 as f64,
            DType::Q4K => consts::WTYPE_Q4_K as f64,
            DType::Q5K => consts::WTYPE_Q5_K as f64,
            DType::Q6K => consts::WTYPE_Q6_K as f64,
        }
    }

    /// Bits per 32-value chunk of each plane of a grouped type, in storage order (the last
    /// holds the group parameters); empty for the float types.
    pub fn planes(self) -> &'static [u32] {
        match self {
            DType::F32 | DType::F16 | DType::Bf16 => &[],
            DType::Int4 => &[128, 32],
            DType::Int8 => &[256, 16],
            DType::Q4_0 => &[128, 16],
            DType::Q5_0 => &[128, 32, 16],
            DType::Q5_1 => &[128, 32, 32],
            DType::Q4K => &[128, 20],
            DType::Q5K => &[128, 32, 20],
            DType::Q6K => &[128, 64, 20],
        }
    }

    /// Row lengths must be a multiple of this: 32 for grouped types (a chunk never crosses a
    /// row), 256 for the k-quants (whole super-blocks), 1 for floats.
    pub fn group_cols(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::Bf16 => 1,
            DType::Q4K | DType::Q5K | DType::Q6K => 256,
            _ => INT4_GROUP,
        }
    }

    /// The name `gemma convert --quant` and the manifest use.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    /// u32 words for a `[rows, cols]` tensor of this type.
    pub fn words(self, rows: usize, cols: usize) -> usize {
        let n = rows * cols;
        match self {
            DType::F32 => n,
            DType::F16 | DType::Bf16 => n.div_ceil(2),
            _ => self.planes().iter().map(|&b| (n / INT4_GROUP * b as usize).div_ceil(32)).sum(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "fp16",
            DType::Bf16 => "bf16",
            DType::Int4 => "int4",
            DType::Int8 => "int8",
            DType::Q4_0 => "q4_0",
            DType::Q5_0 => "q5_0",
            DType::Q5_1 => "q5_1",
            DType::Q4K => "q4_k",
            DType::Q5K => "q5_k",
            DType::Q6K => "q6_k",
        }
    }

    /// Word index where a `[rows, cols]` tensor's group parameters start: the number of code
    /// words (0 for ungrouped types).
    pub fn scales_offset(self, rows: usize, cols: usize) -> usize {
        let planes = self.planes();
        let chunks = rows * cols / INT4_GROUP;
        planes.iter().take(planes.len().saturating_sub(1)).map(|&b| (chunks * b as usize).div_ceil(32)).sum()
    }

    /// Whether the type stores codes in groups of `INT4_GROUP` along the input dimension.
    pub fn is_grouped(self) -> bool {
        !self.planes().is_empty()
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

/// Copy `n` 16-bit halves from half index `from` of `src` to half index `to` of `dst`: whole
/// words where both start on one.
fn copy_halves(src: &[u32], from: usize, dst: &mut [u32], to: usize, n: usize) {
    if from.is_multiple_of(2) && to.is_multiple_of(2) {
        let w = n / 2;
        dst[to / 2..to / 2 + w].copy_from_slice(&src[from / 2..from / 2 + w]);
        if n % 2 == 1 {
            set_half(dst, to + n - 1, get_half(src, from + n - 1));
        }
    } else {
        for i in 0..n {
            set_half(dst, to + i, get_half(src, from + i));
        }
    }
}

/// The int4 grid for one group: `(scale, min)` rounded to fp16, minimising the squared error
/// `Σ (q·scale + min − x)²` over candidate grids (least-squares refits of the codes each
/// candidate gives).
fn int4_grid(x: &[f32]) -> (f16, f16) {
    let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
    if hi <= lo {
        return (f16::ZERO, f16::from_f32(lo));
    }
    let codes = |scale: f32, min: f32| x.iter().map(move |v| ((v - min) / scale).round().clamp(0.0, 15.0));
    // Candidates are compared as stored: parameters rounded to fp16, codes picked against them.
    let rounded = |scale: f32, min: f32| (f16::from_f32(scale), f16::from_f32(min));
    let error = |(scale, min): (f16, f16)| {
        let (s, m) = (scale.to_f32(), min.to_f32());
        if s <= 0.0 || !s.is_finite() || !m.is_finite() {
            return f32::INFINITY;
        }
        codes(s, m).zip(x).map(|(q, v)| (q * s + m - v).powi(2)).sum::<f32>()
    };
    let n = x.len() as f32;
    // The min/max grid and the symmetric one (a level at zero, which wins for a group of small
    // values around one outlier), then steps around (hi - lo) / 15, each refitted by least
    // squares on the codes it gives.
    let amax = hi.max(-lo);
    let mut best = rounded((hi - lo) / 15.0, lo);
    let mut best_e = error(best);
    let mut consider = |cand: (f16, f16)| {
        let e = error(cand);
        if e < best_e {
            (best, best_e) = (cand, e);
        }
    };
    consider(rounded(amax / 7.0, -8.0 * amax / 7.0));
    for i in 0..=24 {
        let step = (hi - lo) / (13.8 + 0.1 * i as f32);
        let (mut sq, mut sqq, mut sx, mut sqx) = (0f32, 0f32, 0f32, 0f32);
        for (q, v) in codes(step, lo).zip(x) {
            sq += q;
            sqq += q * q;
            sx += v;
            sqx += q * v;
        }
        let det = n * sqq - sq * sq;
        if det > 0.0 {
            consider(rounded((n * sqx - sq * sx) / det, (sqq * sx - sq * sqx) / det));
        }
    }
    best
}

/// `int4_grid` of every group, on all cores natively (the search is the slow part of a
/// conversion: the 270M's embedding has 5 million groups).
fn int4_grids(data: &[f32]) -> Vec<(f16, f16)> {
    let serial = |d: &[f32]| d.chunks_exact(INT4_GROUP).map(int4_grid).collect::<Vec<_>>();
    #[cfg(not(target_arch = "wasm32"))]
    {
        let groups = data.len() / INT4_GROUP;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(32);
        if threads > 1 && groups >= 8192 {
            let per = groups.div_ceil(threads) * INT4_GROUP;
            return std::thread::scope(|s| {
                let jobs: Vec<_> = data.chunks(per).map(|c| (c, s.spawn(move || serial(c)))).collect();
                jobs.into_iter().flat_map(|(c, h)| h.join().unwrap_or_else(|_| serial(c))).collect()
            });
        }
    }
    serial(data)
}

/// The largest magnitude `dtype` stores without overflow: a quantized type's parameters are
/// fp16, whose largest finite value is 65504.
fn max_magnitude(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => f32::MAX,
        DType::Bf16 => bf16::MAX.to_f32(),
        _ => f16::MAX.to_f32(),
    }
}

/// The error for a source weight that is not a finite number, or too large for `dtype`: NaN or
/// infinity would silently turn a whole quantization group (or every product with it) into NaN.
pub(crate) fn bad_weight(dtype: DType, row: usize, col: usize, value: f32) -> Error {
    if value.is_finite() {
        Error::Format(format!(
            "the value at row {row}, column {col} is {value:e}, beyond the ±{:e} that {} stores; convert to f32 (or bf16) instead",
            max_magnitude(dtype),
            dtype.name()
        ))
    } else {
        Error::Format(format!("the value at row {row}, column {col} is {value}: the weights are damaged (every weight must be a finite number)"))
    }
}

/// Every value of `data` (rows of `cols`) is finite and within what `dtype` stores.
fn check_values(dtype: DType, cols: usize, data: &[f32]) -> Result<()> {
    let limit = max_magnitude(dtype);
    match data.iter().position(|x| !x.is_finite() || x.abs() > limit) {
        Some(e) => Err(bad_weight(dtype, e / cols.max(1), e % cols.max(1), data[e])),
        None => Ok(()),
    }
}

impl Packed {
    /// Fails on the first value that is not a finite number, for the float types (f32, f16,
    /// bf16), whose words may be copied from a file as they are. Packing from f32 (`pack`) and
    /// from ggml blocks (`blocks::from_ggml`) check their inputs themselves.
    pub fn check_finite(&self) -> Result<()> {
        if !matches!(self.dtype, DType::F32 | DType::F16 | DType::Bf16) {
            return Ok(());
        }
        for r in 0..self.rows {
            for c in 0..self.cols {
                let v = self.get(r, c);
                if !v.is_finite() {
                    return Err(bad_weight(self.dtype, r, c, v));
                }
            }
        }
        Ok(())
    }

    /// Pack f32 values `data` (row-major, `rows*cols` long) as `dtype`. A value that is NaN,
    /// infinite or beyond what `dtype` stores (±65504 for f16 and the quantized types, whose
    /// parameters are fp16) is an error naming its row and column.
    pub fn pack(dtype: DType, rows: usize, cols: usize, data: &[f32]) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(Error::invalid("pack", format!("{} values for a [{rows}, {cols}] tensor", data.len())));
        }
        if !cols.is_multiple_of(dtype.group_cols()) {
            return Err(Error::invalid("pack", format!("{} needs the input dimension to be a multiple of {}; it is {cols}", dtype.name(), dtype.group_cols())));
        }
        check_values(dtype, cols, data)?;
        if let Some(block) = GgmlBlock::of(dtype) {
            return blocks::from_ggml(block, rows, cols, &blocks::quantize_all(block, data)?);
        }
        let mut words = vec![0u32; dtype.words(rows, cols)];
        match dtype {
            DType::F32 => words.iter_mut().zip(data).for_each(|(w, x)| *w = x.to_bits()),
            DType::F16 => data.iter().enumerate().for_each(|(i, x)| set_half(&mut words, i, f16::from_f32(*x).to_bits())),
            DType::Bf16 => data.iter().enumerate().for_each(|(i, x)| set_half(&mut words, i, bf16::from_f32(*x).to_bits())),
            DType::Int4 => {
                let params_at = rows * cols / 8;
                for (g, (group, (scale, min))) in data.chunks_exact(INT4_GROUP).zip(int4_grids(data)).enumerate() {
                    words[params_at + g] = scale.to_bits() as u32 | ((min.to_bits() as u32) << 16);
                    let (s, m) = (scale.to_f32(), min.to_f32());
                    for (j, x) in group.iter().enumerate() {
                        let q = if s > 0.0 { ((x - m) / s).round().clamp(0.0, 15.0) as u32 } else { 0 };
                        let e = g * INT4_GROUP + j;
                        words[e >> 3] |= q << ((e & 7) * 4);
                    }
                }
            }
            DType::Int8 => {
                let scales_at = 2 * (rows * cols / 4);
                for (g, group) in data.chunks_exact(INT4_GROUP).enumerate() {
                    let amax = group.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let scale = f16::from_f32(amax / 127.0);
                    set_half(&mut words, scales_at + g, scale.to_bits());
                    let s = scale.to_f32();
                    for (j, x) in group.iter().enumerate() {
                        let q = if s > 0.0 { (x / s).round().clamp(-127.0, 127.0) as i32 } else { 0 };
                        let e = g * INT4_GROUP + j;
                        words[e >> 2] |= ((q as u8) as u32) << ((e & 3) * 8);
                    }
                }
            }
            _ => return Err(Error::invalid("pack", format!("no packer for {}", dtype.name()))),
        }
        Ok(Self { dtype, rows, cols, words })
    }

    /// Word index where the group parameters start (0 for ungrouped types).
    pub fn scales_offset(&self) -> usize {
        self.dtype.scales_offset(self.rows, self.cols)
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
                let params = self.words[self.scales_offset() + e / INT4_GROUP];
                let (scale, min) = (f16::from_bits(params as u16).to_f32(), f16::from_bits((params >> 16) as u16).to_f32());
                q as f32 * scale + min
            }
            DType::Int8 => {
                let q = (self.words[e >> 2] >> ((e & 3) * 8)) as u8 as i8;
                q as f32 * f16::from_bits(get_half(&self.words, 2 * self.scales_offset() + e / INT4_GROUP)).to_f32()
            }
            _ => blocks::get(self, e),
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

    /// Rows `start..end` as a self-contained packed tensor, bit-exact (no re-quantisation):
    /// each plane's run of those rows copied (`planes`).
    pub fn rows_slice(&self, start: usize, end: usize) -> Self {
        let (rows, cols) = (end - start, self.cols);
        let mut words = vec![0u32; self.dtype.words(rows, cols)];
        match self.dtype {
            DType::F32 => words.copy_from_slice(&self.words[start * cols..end * cols]),
            DType::F16 | DType::Bf16 => copy_halves(&self.words, start * cols, &mut words, 0, rows * cols),
            dtype => {
                let (chunks, row_chunks) = (self.rows * cols / INT4_GROUP, cols / INT4_GROUP);
                let (mut src_at, mut dst_at) = (0, 0);
                for &bits in dtype.planes() {
                    let bits = bits as usize;
                    // Every plane's rows start on a half word (bits per row is a multiple of 16).
                    let halves = |chunks: usize| chunks * bits / 16;
                    copy_halves(&self.words, 2 * src_at + halves(start * row_chunks), &mut words, 2 * dst_at, halves(rows * row_chunks));
                    src_at += (chunks * bits).div_ceil(32);
                    dst_at += (rows * row_chunks * bits).div_ceil(32);
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
        DType::Int4 => cols as u64 / 2 + 4 * (cols / INT4_GROUP) as u64,
        DType::Int8 => cols as u64 + 2 * (cols / INT4_GROUP) as u64 + 4,
        // Each plane's share of a row, plus a word for a plane whose rows end mid-word.
        dtype => dtype.planes().iter().map(|&b| (cols / INT4_GROUP) as u64 * b as u64 / 8 + 4).sum(),
    }
}
