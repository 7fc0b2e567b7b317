//! The packed weight codecs: round-trip error against stated bounds, and bit-exact row slicing
//! (what splitting a tensor across bindings relies on).

use gemma_webgpu::quant::{DType, Packed, INT4_GROUP};

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let u = (s.wrapping_mul(0x2545F4914F6CDD1D) >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            // Mostly small values with occasional outliers, like trained weights.
            if i % 97 == 0 { u * 8.0 } else { u * 0.1 }
        })
        .collect()
}

#[test]
fn f32_round_trip_is_exact() {
    let x = data(3 * 100, 1);
    assert_eq!(Packed::pack(DType::F32, 3, 100, &x).unwrap().unpack(), x);
}

#[test]
fn half_types_round_trip_within_their_precision() {
    let x = data(7 * 333, 2);
    for (dtype, rel) in [(DType::F16, 2f32.powi(-11)), (DType::Bf16, 2f32.powi(-8))] {
        let y = Packed::pack(dtype, 7, 333, &x).unwrap().unpack();
        for (i, (a, b)) in x.iter().zip(&y).enumerate() {
            assert!((a - b).abs() <= a.abs() * rel + 6e-8, "{dtype:?} index {i}: {a} -> {b}");
        }
    }
}

#[test]
fn int4_round_trip_error_is_within_half_a_step() {
    let (rows, cols) = (64, 2304);
    let x = data(rows * cols, 3);
    let packed = Packed::pack(DType::Int4, rows, cols, &x).unwrap();
    assert_eq!(packed.words.len(), rows * cols / 8 + rows * cols / INT4_GROUP / 2);
    let y = packed.unpack();
    let (mut sq_err, mut sq) = (0f64, 0f64);
    for (g, (xs, ys)) in x.chunks(INT4_GROUP).zip(y.chunks(INT4_GROUP)).enumerate() {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let step = half::f16::from_f32(amax / 7.0).to_f32();
        // Half a quantisation step, plus what rounding the scale to fp16 can add at the ends.
        let bound = 0.5 * step + amax * 2f32.powi(-10);
        for (j, (a, b)) in xs.iter().zip(ys).enumerate() {
            let err = (a - b).abs();
            assert!(err <= bound, "group {g} element {j}: {a} -> {b}, error {err} > bound {bound}");
            sq_err += (err as f64).powi(2);
            sq += (*a as f64).powi(2);
        }
    }
    let rel_rms = (sq_err / sq).sqrt();
    println!("int4 g32 relative RMS error on outlier-heavy data: {rel_rms:.4}");
    assert!(rel_rms < 0.2, "relative RMS error {rel_rms}");
}

#[test]
fn int4_of_an_all_zero_group_is_zero() {
    let y = Packed::pack(DType::Int4, 1, 64, &[0.0; 64]).unwrap().unpack();
    assert!(y.iter().all(|v| *v == 0.0));
}

#[test]
fn int4_rejects_an_input_dimension_not_divisible_by_the_group() {
    let err = Packed::pack(DType::Int4, 2, 40, &[0.0; 80]).unwrap_err();
    assert!(err.to_string().contains("multiple of 32"), "{err}");
    let err = Packed::pack(DType::F16, 2, 40, &[0.0; 79]).unwrap_err();
    assert!(err.to_string().contains("79 values"), "{err}");
}

#[test]
fn row_slices_are_bit_exact_for_every_type() {
    for (dtype, cols) in [(DType::F32, 33), (DType::F16, 33), (DType::Bf16, 33), (DType::Int4, 96), (DType::Int4, 32)] {
        let rows = 11;
        let full = Packed::pack(dtype, rows, cols, &data(rows * cols, 4)).unwrap();
        let all = full.unpack();
        for (start, end) in [(0, 3), (3, 4), (4, 11), (1, 10)] {
            let part = full.rows_slice(start, end);
            assert_eq!(part.words.len(), dtype.words(end - start, cols));
            assert_eq!(part.unpack(), all[start * cols..end * cols].to_vec(), "{dtype:?} rows {start}..{end}");
        }
    }
}
