//! Dequantization: ggml-quants.c `dequantize_row_*`, block by block, to f32 exactly as ggml's
//! reference code does.

use half::{bf16, f16};

use super::GgmlType;

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
}
