//! llama.cpp's quantized blocks as storage types, value for value.
//!
//! A GGUF tensor of type Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K is laid out for WGSL
//! at conversion time (`from_ggml`) without changing a single value: the same codes and the
//! same scales, rearranged so that a kernel reads a 32-value chunk of a row with whole-word
//! loads. Q4_1 becomes our `int4` and Q8_0 our `int8`, which already decode exactly as ggml
//! does (`q * d + m` and `q * d`, with fp16 `d` and `m`); the others get storage types of their
//! own. Every type is stored in *planes*, each a run of words over all the tensor's chunks
//! (chunk `g` = values `32g..32g+31` in row-major order; a chunk never crosses a row):
//!
//! | type | plane 0: low codes | plane 1: high bits | plane 2: parameters | value of code q |
//! |------|-------------|-------------|-------------|-----------------|
//! | q4_0 | 4 words / chunk | — | fp16 `d` per chunk (2 per word) | `(q - 8) * d` |
//! | q5_0 | 4 | 1 word / chunk: bit i = bit 4 of value i | fp16 `d` per chunk | `(q - 16) * d` |
//! | q5_1 | 4 | 1 | `d` low, `m` high half of 1 word per chunk | `q * d + m` |
//! | q4_k | 4 | — | 5 words per 256 values (below) | `(d * sc) * q - dmin * mn` |
//! | q5_k | 4 | 1 | 5 words per 256 values | as q4_k |
//! | q6_k | 4 | 2 words / chunk: 2 bits per value, values 0-15 then 16-31 | 5 words per 256 | `(d * sc) * (q - 32)` |
//!
//! Low codes: nibble `e & 7` of word `e >> 3` holds the low 4 bits of value `e`, as in `int4`.
//! K-quant parameters of a 256-value super-block: word 0 holds `d` (low half) and `dmin` (high
//! half, q4_k/q5_k) as fp16; q4_k/q5_k then hold the eight 6-bit sub-block scales `sc` as bytes
//! (words 1-2) and the eight mins `mn` (words 3-4), unpacked from ggml's 12 bytes; q6_k holds
//! its sixteen int8 scales, one per 16 values, in words 1-4. Each plane starts where the one
//! before it ends (`DType::planes`); the kernels find plane 1 from `scales_offset` (plane 2's
//! start), since plane 0 is 4 words per chunk and plane 1 one or two.
//!
//! The decoded value is computed with ggml's own operations in ggml's order (`get`), so it
//! equals ggml's `dequantize_row_*` bit for bit on the CPU, and on the GPU too, whatever order
//! or fused multiply-add a shader compiler picks: an fp16 `d` has 11 significant bits, a scale
//! at most 8 and a code at most 6, so every product but Q6_K's last (`(d * sc) * (q - 32)`, up
//! to 25 bits) is exact in f32, and each value is its exact real value rounded once (at that
//! last product, or at the addition of the min). The quantizers here (`quantize`)
//! write ggml's block bytes from f32 following ggml's reference quantizers (`quantize_row_*_ref`,
//! without an importance matrix): the k-quants search each sub-block's scale and min for least
//! weighted error, then round those to 6 bits against the super-block's fp16 `d` and `dmin`.

use half::f16;

use super::{get_half, set_half, DType, Packed};
use crate::error::{Error, Result};

/// A llama.cpp block format that `from_ggml` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlBlock {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlBlock {
    /// (values, bytes) of one block.
    pub fn size(self) -> (usize, usize) {
        match self {
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
        }
    }

    /// The storage type that holds this block format value for value.
    pub fn dtype(self) -> DType {
        match self {
            Self::Q4_0 => DType::Q4_0,
            Self::Q4_1 => DType::Int4,
            Self::Q5_0 => DType::Q5_0,
            Self::Q5_1 => DType::Q5_1,
            Self::Q8_0 => DType::Int8,
            Self::Q4K => DType::Q4K,
            Self::Q5K => DType::Q5K,
            Self::Q6K => DType::Q6K,
        }
    }

    /// The block format a GGML-block storage type came from (`None` for our own int4/int8
    /// and the float types, which `Packed::pack` writes directly).
    pub fn of(dtype: DType) -> Option<Self> {
        Some(match dtype {
            DType::Q4_0 => Self::Q4_0,
            DType::Q5_0 => Self::Q5_0,
            DType::Q5_1 => Self::Q5_1,
            DType::Q4K => Self::Q4K,
            DType::Q5K => Self::Q5K,
            DType::Q6K => Self::Q6K,
            _ => return None,
        })
    }
}

fn f16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// Byte `j` of the bytes packed into `words[at..]` (byte 0 = low bits of the first word).
fn byte_at(words: &[u32], at: usize, j: usize) -> u32 {
    (words[at + j / 4] >> (8 * (j % 4))) & 0xff
}

fn set_byte(words: &mut [u32], at: usize, j: usize, v: u8) {
    words[at + j / 4] |= (v as u32) << (8 * (j % 4));
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` from 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Word offsets of the three planes of a `[rows, cols]` tensor of a block type.
pub(super) fn plane_starts(dtype: DType, rows: usize, cols: usize) -> [usize; 3] {
    let chunks = rows * cols / 32;
    let bits = dtype.planes();
    let words = |b: u32| (chunks * b as usize).div_ceil(32);
    let p1 = words(bits.first().copied().unwrap_or(0));
    let p2 = if bits.len() > 2 { p1 + words(bits[1]) } else { p1 };
    [0, p1, p2]
}

/// Value `e` of a packed block-type tensor, computed as ggml's dequantizer computes it.
pub(super) fn get(p: &Packed, e: usize) -> f32 {
    let w = &p.words;
    let [_, hi_at, params_at] = plane_starts(p.dtype, p.rows, p.cols);
    let (g, i) = (e / 32, e % 32);
    let lo = (w[e >> 3] >> ((e & 7) * 4)) & 15;
    let half = |k: usize| f16::from_bits(get_half(w, k)).to_f32();
    match p.dtype {
        DType::Q4_0 => (lo as i32 - 8) as f32 * half(2 * params_at + g),
        DType::Q5_0 => {
            let q = lo | (((w[hi_at + g] >> i) & 1) << 4);
            (q as i32 - 16) as f32 * half(2 * params_at + g)
        }
        DType::Q5_1 => {
            let q = lo | (((w[hi_at + g] >> i) & 1) << 4);
            q as f32 * half(2 * (params_at + g)) + half(2 * (params_at + g) + 1)
        }
        DType::Q4K | DType::Q5K => {
            let q = if p.dtype == DType::Q5K { lo | (((w[hi_at + g] >> i) & 1) << 4) } else { lo };
            let base = params_at + 5 * (g / 8);
            let (d, dmin) = (half(2 * base), half(2 * base + 1));
            let (sc, mn) = (byte_at(w, base + 1, g % 8), byte_at(w, base + 3, g % 8));
            let (d1, m1) = (d * sc as f32, dmin * mn as f32);
            d1 * q as f32 - m1
        }
        DType::Q6K => {
            let q = lo | (((w[hi_at + 2 * g + i / 16] >> (2 * (i % 16))) & 3) << 4);
            let base = params_at + 5 * (g / 8);
            let sc = byte_at(w, base + 1, (e % 256) / 16) as u8 as i8;
            half(2 * base) * sc as f32 * (q as i32 - 32) as f32
        }
        _ => f32::NAN,
    }
}

/// A GGUF tensor's data (`rows * cols` values in `block`s, ggml's byte layout) as a packed
/// tensor of `block.dtype()`, every value unchanged.
pub fn from_ggml(block: GgmlBlock, rows: usize, cols: usize, bytes: &[u8]) -> Result<Packed> {
    from_ggml_as(block, block.dtype(), rows, cols, bytes)
}

/// `from_ggml` into `dtype`: the block's own type, or int8 for Q4_0, Q5_0 and Q8_0, which hold
/// it exactly (codes `q - 8` and `q - 16` in -16..15 with the same fp16 `d`: the same products,
/// so the same values bit for bit). A load can then join, say, Q5_0 q/k with a Q8_0 v.
pub fn from_ggml_as(block: GgmlBlock, dtype: DType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Packed> {
    let offset: i32 = match (block, dtype) {
        (b, d) if b.dtype() == d => 0,
        (GgmlBlock::Q4_0, DType::Int8) => 8,
        (GgmlBlock::Q5_0, DType::Int8) => 16,
        _ => return Err(Error::invalid("ggml blocks", format!("{block:?} cannot be stored exactly as {}", dtype.name()))),
    };
    let (bv, bb) = block.size();
    let n = rows.checked_mul(cols).ok_or_else(|| Error::invalid("ggml blocks", format!("a [{rows}, {cols}] tensor is too large")))?;
    if !cols.is_multiple_of(dtype.group_cols()) || !cols.is_multiple_of(bv) {
        return Err(Error::invalid("ggml blocks", format!("{} rows must hold whole {bv}-value blocks; these have {cols} values", dtype.name())));
    }
    if bytes.len() != n / bv * bb {
        return Err(Error::invalid("ggml blocks", format!("a [{rows}, {cols}] {block:?} tensor takes {} bytes, got {}", n / bv * bb, bytes.len())));
    }
    let mut words = vec![0u32; dtype.words(rows, cols)];
    let [_, hi_at, params_at] = plane_starts(dtype, rows, cols);
    let mut codes = [0u8; 256];
    // Where each block keeps its fp16 parameters (`d`, and `m` or `dmin`).
    let params: &[usize] = match block {
        GgmlBlock::Q4_0 | GgmlBlock::Q5_0 | GgmlBlock::Q8_0 => &[0],
        GgmlBlock::Q4_1 | GgmlBlock::Q5_1 | GgmlBlock::Q4K | GgmlBlock::Q5K => &[0, 2],
        GgmlBlock::Q6K => &[208],
    };
    for (k, b) in bytes.chunks_exact(bb).enumerate() {
        let e0 = k * bv;
        let g0 = e0 / 32;
        // A NaN or infinite parameter would make every value of the block NaN or infinite.
        if let Some(h) = params.iter().map(|&at| f16_at(b, at)).find(|h| h & 0x7c00 == 0x7c00) {
            let what = if h & 0x3ff == 0 { "an infinite" } else { "a NaN" };
            let (row, col) = (e0 / cols, e0 % cols);
            return Err(Error::Format(format!(
                "the {block:?} block at row {row}, columns {col}..{} has {what} scale: the weights are damaged (every weight must be a finite number)",
                col + bv
            )));
        }
        // Unsigned codes of the block's values, in order, and its parameters.
        match block {
            GgmlBlock::Q4_0 | GgmlBlock::Q4_1 | GgmlBlock::Q5_0 | GgmlBlock::Q5_1 => {
                let (qh, qs) = match block {
                    GgmlBlock::Q4_0 => (0, &b[2..18]),
                    GgmlBlock::Q4_1 => (0, &b[4..20]),
                    GgmlBlock::Q5_0 => (u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &b[6..22]),
                    _ => (u32::from_le_bytes([b[4], b[5], b[6], b[7]]), &b[8..24]),
                };
                for j in 0..16 {
                    codes[j] = (qs[j] & 15) | ((((qh >> j) & 1) as u8) << 4);
                    codes[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                }
                match block {
                    GgmlBlock::Q4_0 | GgmlBlock::Q5_0 => set_half(&mut words, 2 * params_at + g0, f16_at(b, 0)),
                    _ => words[params_at + g0] = f16_at(b, 0) as u32 | ((f16_at(b, 2) as u32) << 16),
                }
            }
            GgmlBlock::Q8_0 => {
                codes[..32].copy_from_slice(&b[2..34]);
                set_half(&mut words, 2 * params_at + g0, f16_at(b, 0));
            }
            GgmlBlock::Q4K | GgmlBlock::Q5K => {
                let (scales, qh, qs) = if block == GgmlBlock::Q4K { (&b[4..16], None, &b[16..144]) } else { (&b[4..16], Some(&b[16..48]), &b[48..176]) };
                for n in 0..4 {
                    for l in 0..32 {
                        let byte = qs[32 * n + l];
                        let (h0, h1) = qh.map_or((0, 0), |h| ((h[l] >> (2 * n)) & 1, (h[l] >> (2 * n + 1)) & 1));
                        codes[64 * n + l] = (byte & 15) | (h0 << 4);
                        codes[64 * n + 32 + l] = (byte >> 4) | (h1 << 4);
                    }
                }
                let base = params_at + 5 * (e0 / 256);
                words[base] = f16_at(b, 0) as u32 | ((f16_at(b, 2) as u32) << 16);
                for j in 0..8 {
                    let (sc, mn) = scale_min_k4(j, scales);
                    set_byte(&mut words, base + 1, j, sc);
                    set_byte(&mut words, base + 3, j, mn);
                }
            }
            GgmlBlock::Q6K => {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                for n in 0..2 {
                    for l in 0..32 {
                        let (a, c, h) = (ql[64 * n + l], ql[64 * n + 32 + l], qh[32 * n + l]);
                        codes[128 * n + l] = (a & 15) | ((h & 3) << 4);
                        codes[128 * n + 32 + l] = (c & 15) | (((h >> 2) & 3) << 4);
                        codes[128 * n + 64 + l] = (a >> 4) | (((h >> 4) & 3) << 4);
                        codes[128 * n + 96 + l] = (c >> 4) | (((h >> 6) & 3) << 4);
                    }
                }
                let base = params_at + 5 * (e0 / 256);
                words[base] = f16_at(b, 208) as u32;
                for (j, s) in sc.iter().enumerate() {
                    set_byte(&mut words, base + 1, j, *s);
                }
            }
        }
        for (i, &q) in codes[..bv].iter().enumerate() {
            let e = e0 + i;
            if dtype == DType::Int8 {
                words[e >> 2] |= ((q as i32 - offset) as u8 as u32) << ((e & 3) * 8);
                continue;
            }
            words[e >> 3] |= ((q & 15) as u32) << ((e & 7) * 4);
            match dtype {
                DType::Q5_0 | DType::Q5_1 | DType::Q5K => words[hi_at + e / 32] |= (((q >> 4) & 1) as u32) << (e % 32),
                DType::Q6K => words[hi_at + 2 * (e / 32) + (e % 32) / 16] |= (((q >> 4) & 3) as u32) << (2 * (e % 16)),
                _ => {}
            }
        }
    }
    Ok(Packed { dtype, rows, cols, words })
}

/// ggml's `nearest_int`: round to nearest, ties to even.
fn nearest(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// Index and value of the element of largest magnitude (the first of equals).
fn signed_max(x: &[f32]) -> f32 {
    x.iter().fold((0f32, 0f32), |(amax, max), &v| if v.abs() > amax { (v.abs(), v) } else { (amax, max) }).1
}

/// ggml's `make_qkx2_quants` without `use_mad`: an affine grid `scale * l + min` (`min <= 0`,
/// `l` in 0..=nmax) for `x`, searched over `nstep + 1` candidate steps around
/// `(max - min) / nmax`, each refitted by weighted least squares. Returns (scale, -min) and
/// leaves the codes in `l`.
fn qkx2(x: &[f32], weights: &[f32], l: &mut [u8], nmax: i32, rmin: f32, rdelta: f32, nstep: i32) -> (f32, f32) {
    let (mut min, mut max) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = (0f32, 0f32);
    for (&v, &w) in x.iter().zip(weights) {
        min = min.min(v);
        max = max.max(v);
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.iter_mut().for_each(|q| *q = 0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0f32;
    for (i, (&v, &w)) in x.iter().zip(weights).enumerate() {
        let q = nearest(iscale * (v - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - v;
        best += w * diff * diff;
    }
    let mut aux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sl, mut sl2, mut sxl) = (0f32, 0f32, 0f32);
        for (i, (&v, &w)) in x.iter().zip(weights).enumerate() {
            let q = nearest(iscale * (v - min)).clamp(0, nmax);
            aux[i] = q as u8;
            sl += w * q as f32;
            sl2 += w * (q * q) as f32;
            sxl += w * q as f32 * v;
        }
        let det = sum_w * sl2 - sl * sl;
        if det > 0.0 {
            let mut this_scale = (sum_w * sxl - sum_x * sl) / det;
            let mut this_min = (sl2 * sum_x - sl * sxl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sxl / sl2;
            }
            let err: f32 = x.iter().zip(weights).zip(&aux).map(|((&v, &w), &q)| w * (this_scale * q as f32 + this_min - v).powi(2)).sum();
            if err < best {
                l[..x.len()].copy_from_slice(&aux[..x.len()]);
                (best, scale, min) = (err, this_scale, this_min);
            }
        }
    }
    (scale, -min)
}

/// ggml's `make_qx_quants` with `rmse_type` 1 (weights x²): a symmetric grid `scale * l`,
/// `l` in -nmax..nmax, searched over 19 steps; returns the scale, codes `l + nmax` in `out`.
fn qx(x: &[f32], out: &mut [u8], nmax: i32) -> f32 {
    let max = signed_max(x);
    if max.abs() < 1e-15 {
        out.iter_mut().for_each(|q| *q = 0);
        return 0.0;
    }
    let fit = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let l = nearest(iscale * v).clamp(-nmax, nmax - 1) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    let (sumlx, suml2) = fit(iscale);
    let mut scale = if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let cand = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = fit(cand);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            (iscale, scale, best) = (cand, sumlx / suml2, sumlx * sumlx / suml2);
        }
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (nearest(iscale * v).clamp(-nmax, nmax - 1) + nmax) as u8;
    }
    scale
}

fn push_f16(b: &mut Vec<u8>, v: f32) {
    b.extend(f16::from_f32(v).to_le_bytes());
}

/// One block of `x` (32 or 256 values) in ggml's byte layout.
fn quantize_block(block: GgmlBlock, x: &[f32], b: &mut Vec<u8>) {
    match block {
        GgmlBlock::Q4_0 | GgmlBlock::Q5_0 => {
            let (levels, off) = if block == GgmlBlock::Q4_0 { (-8.0, 8.5) } else { (-16.0, 16.5) };
            let d = signed_max(x) / levels;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let top = if block == GgmlBlock::Q4_0 { 15 } else { 31 };
            let q: Vec<u8> = x.iter().map(|v| ((v * id + off) as i32).clamp(0, top) as u8).collect();
            push_f16(b, d);
            if block == GgmlBlock::Q5_0 {
                let qh = q.iter().enumerate().fold(0u32, |h, (j, q)| h | (((q >> 4) & 1) as u32) << j);
                b.extend(qh.to_le_bytes());
            }
            b.extend((0..16).map(|j| (q[j] & 15) | ((q[j + 16] & 15) << 4)));
        }
        GgmlBlock::Q4_1 | GgmlBlock::Q5_1 => {
            let top = if block == GgmlBlock::Q4_1 { 15 } else { 31 };
            let (min, max) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
            let d = (max - min) / top as f32;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let q: Vec<u8> = x.iter().map(|v| (((v - min) * id + 0.5) as i32).clamp(0, top) as u8).collect();
            push_f16(b, d);
            push_f16(b, min);
            if block == GgmlBlock::Q5_1 {
                let qh = q.iter().enumerate().fold(0u32, |h, (j, q)| h | (((q >> 4) & 1) as u32) << j);
                b.extend(qh.to_le_bytes());
            }
            b.extend((0..16).map(|j| (q[j] & 15) | ((q[j + 16] & 15) << 4)));
        }
        GgmlBlock::Q8_0 => {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            push_f16(b, d);
            b.extend(x.iter().map(|v| nearest(v * id) as i8 as u8));
        }
        GgmlBlock::Q4K | GgmlBlock::Q5K => {
            let (nmax, rmin, nstep) = if block == GgmlBlock::Q4K { (15, -1.0, 20) } else { (31, -0.5, 15) };
            let mut l = [0u8; 256];
            let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
            for j in 0..8 {
                let xs = &x[32 * j..32 * j + 32];
                let av = (xs.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
                let weights: Vec<f32> = xs.iter().map(|v| av + v.abs()).collect();
                (scales[j], mins[j]) = qkx2(xs, &weights, &mut l[32 * j..32 * j + 32], nmax, rmin, 0.1, nstep);
            }
            let (max_scale, max_min) = (scales.iter().fold(0f32, |a, &s| a.max(s)), mins.iter().fold(0f32, |a, &m| a.max(m)));
            let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
            let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
            let mut packed = [0u8; 12];
            let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
            for j in 0..8 {
                ls[j] = nearest(inv_scale * scales[j]).min(63) as u8;
                lm[j] = nearest(inv_min * mins[j]).min(63) as u8;
            }
            for j in 0..4 {
                packed[j] = ls[j] | ((ls[j + 4] >> 4) << 6);
                packed[j + 4] = lm[j] | ((lm[j + 4] >> 4) << 6);
                packed[j + 8] = (ls[j + 4] & 0xF) | ((lm[j + 4] & 0xF) << 4);
            }
            let (d, dmin) = (f16::from_f32(max_scale / 63.0), f16::from_f32(max_min / 63.0));
            for j in 0..8 {
                let (d1, dm) = (d.to_f32() * ls[j] as f32, dmin.to_f32() * lm[j] as f32);
                if d1 == 0.0 {
                    continue;
                }
                for i in 32 * j..32 * j + 32 {
                    l[i] = nearest((x[i] + dm) / d1).clamp(0, nmax) as u8;
                }
            }
            b.extend(d.to_le_bytes());
            b.extend(dmin.to_le_bytes());
            b.extend(packed);
            if block == GgmlBlock::Q5K {
                let mut qh = [0u8; 32];
                for (e, q) in l.iter().enumerate() {
                    qh[e % 32] |= ((q >> 4) & 1) << (e / 32);
                }
                b.extend(qh);
            }
            for n in 0..4 {
                b.extend((0..32).map(|i| (l[64 * n + i] & 15) | ((l[64 * n + 32 + i] & 15) << 4)));
            }
        }
        GgmlBlock::Q6K => {
            let mut l = [0u8; 256];
            let mut scales = [0f32; 16];
            for j in 0..16 {
                scales[j] = qx(&x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16], 32);
            }
            let max_scale = signed_max(&scales);
            let (mut sc, mut d) = ([0i8; 16], f16::ZERO);
            if max_scale.abs() >= 1e-15 {
                let iscale = -128.0 / max_scale;
                d = f16::from_f32(1.0 / iscale);
                for j in 0..16 {
                    sc[j] = nearest(iscale * scales[j]).min(127) as i8;
                    let dj = d.to_f32() * sc[j] as f32;
                    if dj == 0.0 {
                        continue;
                    }
                    for i in 16 * j..16 * j + 16 {
                        l[i] = (nearest(x[i] / dj).clamp(-32, 31) + 32) as u8;
                    }
                }
            } else {
                l = [32; 256];
            }
            let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
            for n in 0..2 {
                for i in 0..32 {
                    let q = |k: usize| l[128 * n + 32 * k + i];
                    ql[64 * n + i] = (q(0) & 15) | ((q(2) & 15) << 4);
                    ql[64 * n + 32 + i] = (q(1) & 15) | ((q(3) & 15) << 4);
                    qh[32 * n + i] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
                }
            }
            b.extend(ql);
            b.extend(qh);
            b.extend(sc.iter().map(|s| *s as u8));
            b.extend(d.to_le_bytes());
        }
    }
}

/// `x` (a whole number of blocks) quantized to ggml's block bytes, as ggml's reference
/// quantizers would write them (what `gemma convert --quant q4_k` and the tests use).
pub fn quantize(block: GgmlBlock, x: &[f32]) -> Result<Vec<u8>> {
    let (bv, bb) = block.size();
    if !x.len().is_multiple_of(bv) {
        return Err(Error::invalid("quantize", format!("{block:?} takes whole blocks of {bv} values; got {}", x.len())));
    }
    let mut out = Vec::with_capacity(x.len() / bv * bb);
    for blk in x.chunks_exact(bv) {
        quantize_block(block, blk, &mut out);
    }
    Ok(out)
}

/// `quantize` on all cores natively (a k-quant's search is the slow part of a conversion:
/// the 2B's 2.6 billion values), in one thread in a browser; the same bytes either way.
pub fn quantize_all(block: GgmlBlock, x: &[f32]) -> Result<Vec<u8>> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let (bv, _) = block.size();
        let blocks = x.len() / bv;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(32);
        if threads > 1 && blocks >= 1024 && x.len().is_multiple_of(bv) {
            let per = blocks.div_ceil(threads) * bv;
            return std::thread::scope(|s| {
                let jobs: Vec<_> = x.chunks(per).map(|c| s.spawn(move || quantize(block, c))).collect();
                let mut out = Vec::new();
                for job in jobs {
                    out.extend(job.join().map_err(|_| Error::invalid("quantize", "a quantizer thread failed"))??);
                }
                Ok(out)
            });
        }
    }
    quantize(block, x)
}
