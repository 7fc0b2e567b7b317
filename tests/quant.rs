//! The packed weight codecs: round-trip error against stated bounds, and bit-exact row slicing
//! (what splitting a tensor across bindings relies on).

use gemma_webgpu::convert::gguf::{dequantize, GgmlType};
use gemma_webgpu::quant::{blocks, DType, GgmlBlock, Packed, INT4_GROUP};

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let u = (s.wrapping_mul(0x2545F4914F6CDD1D) >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            // Mostly small values with occasional outliers, like trained weights.
            if i % 97 == 0 {
                u * 8.0
            } else {
                u * 0.1
            }
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

/// Squared error of one group on the plain min/max grid, `(max - min) / 15` steps from `min`,
/// with the same fp16 rounding of the parameters.
fn min_max_grid_error(xs: &[f32]) -> f64 {
    let (lo, hi) = xs.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
    let (s, m) = (half::f16::from_f32((hi - lo) / 15.0).to_f32(), half::f16::from_f32(lo).to_f32());
    xs.iter().map(|x| if s > 0.0 { ((x - m) / s).round().clamp(0.0, 15.0) * s + m - x } else { m - x }).map(|e| (e as f64).powi(2)).sum()
}

#[test]
fn int4_searched_grid_never_loses_to_min_max_and_beats_symmetric() {
    let (rows, cols) = (64, 2304);
    let x = data(rows * cols, 3);
    let packed = Packed::pack(DType::Int4, rows, cols, &x).unwrap();
    assert_eq!(packed.words.len(), rows * cols / 8 + rows * cols / INT4_GROUP);
    let y = packed.unpack();
    let (mut sq_err, mut sq, mut min_max, mut symmetric) = (0f64, 0f64, 0f64, 0f64);
    for (g, (xs, ys)) in x.chunks(INT4_GROUP).zip(y.chunks(INT4_GROUP)).enumerate() {
        let err: f64 = xs.iter().zip(ys).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let mm = min_max_grid_error(xs);
        // The old symmetric scheme: 15 levels of max|x| / 7 around zero.
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let step = half::f16::from_f32(amax / 7.0).to_f32();
        let sym: f64 = xs.iter().map(|v| (((v / step).round().clamp(-8.0, 7.0) * step - v) as f64).powi(2)).sum();
        // Both are among the search's candidates; fp16 rounding of the parameters may cost a hair.
        assert!(err <= mm.min(sym) * 1.001 + 1e-12, "group {g}: squared error {err:.3e} > min/max grid's {mm:.3e} or symmetric's {sym:.3e}");
        symmetric += sym;
        sq_err += err;
        min_max += mm;
        sq += xs.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
    }
    let rel = |e: f64| (e / sq).sqrt();
    println!("int4 g32 relative RMS error: searched {:.4}, min/max {:.4}, symmetric {:.4}", rel(sq_err), rel(min_max), rel(symmetric));
    assert!(rel(sq_err) < 0.9 * rel(symmetric), "searched grid {} is not clearly better than symmetric {}", rel(sq_err), rel(symmetric));
    assert!(rel(sq_err) < 0.1, "relative RMS error {}", rel(sq_err));
}

#[test]
fn int4_reproduces_a_group_already_on_a_sixteen_level_grid() {
    // A Q4_K / Q4_1-style group: q * 0.01 - 0.07 with codes 0..=15 all used; the searched grid
    // must find it, up to the fp16 rounding of the scale and min.
    let (s, m) = (0.01f32, -0.07f32);
    let xs: Vec<f32> = (0..32).map(|i| ((i * 7) % 16) as f32 * s + m).collect();
    let ys = Packed::pack(DType::Int4, 1, 32, &xs).unwrap().unpack();
    for (a, b) in xs.iter().zip(&ys) {
        assert!((a - b).abs() <= 16.0 * s * 2f32.powi(-11) + m.abs() * 2f32.powi(-11), "{a} -> {b}");
    }
}

#[test]
fn int8_round_trip_error_is_within_half_a_step_and_exact_on_q8_0_blocks() {
    let (rows, cols) = (16, 640);
    let x = data(rows * cols, 5);
    let packed = Packed::pack(DType::Int8, rows, cols, &x).unwrap();
    assert_eq!(packed.words.len(), rows * cols / 4 + rows * cols / INT4_GROUP / 2);
    let y = packed.unpack();
    for (g, (xs, ys)) in x.chunks(INT4_GROUP).zip(y.chunks(INT4_GROUP)).enumerate() {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let bound = 0.5 * half::f16::from_f32(amax / 127.0).to_f32() + amax * 2f32.powi(-10);
        for (a, b) in xs.iter().zip(ys) {
            assert!((a - b).abs() <= bound, "group {g}: {a} -> {b} (bound {bound})");
        }
    }
    // Q8_0 / Q5_0 blocks: an fp16 scale d times integer codes with max |q| = 127 come back
    // exactly, negative codes included.
    let d = half::f16::from_f32(0.0123).to_f32();
    let code = |i: usize| if i % 32 == 5 { -127.0 } else { ((i * 37) % 255) as f32 - 127.0 };
    let xs: Vec<f32> = (0..64).map(|i| code(i) * d).collect();
    assert_eq!(Packed::pack(DType::Int8, 2, 32, &xs).unwrap().unpack(), xs);
}

#[test]
fn quantized_all_zero_groups_are_zero() {
    for dtype in [DType::Int4, DType::Int8] {
        let y = Packed::pack(dtype, 1, 64, &[0.0; 64]).unwrap().unpack();
        assert!(y.iter().all(|v| *v == 0.0), "{dtype:?}");
    }
    // A constant group: scale 0, min the constant.
    let y = Packed::pack(DType::Int4, 1, 32, &[0.25; 32]).unwrap().unpack();
    assert!(y.iter().all(|v| *v == 0.25), "{y:?}");
}

#[test]
fn int4_rejects_an_input_dimension_not_divisible_by_the_group() {
    for dtype in [DType::Int4, DType::Int8] {
        let err = Packed::pack(dtype, 2, 40, &[0.0; 80]).unwrap_err();
        assert!(err.to_string().contains("multiple of 32") && err.to_string().contains(dtype.name()), "{err}");
    }
    let err = Packed::pack(DType::F16, 2, 40, &[0.0; 79]).unwrap_err();
    assert!(err.to_string().contains("79 values"), "{err}");
}

#[test]
fn row_slices_are_bit_exact_for_every_type() {
    for (dtype, cols) in [(DType::F32, 33), (DType::F16, 33), (DType::Bf16, 33), (DType::Int4, 96), (DType::Int4, 32), (DType::Int8, 96), (DType::Int8, 32)] {
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

/// llama.cpp's block formats.
const BLOCKS: [GgmlBlock; 8] =
    [GgmlBlock::Q4_0, GgmlBlock::Q4_1, GgmlBlock::Q5_0, GgmlBlock::Q5_1, GgmlBlock::Q8_0, GgmlBlock::Q4K, GgmlBlock::Q5K, GgmlBlock::Q6K];

fn ggml_type(b: GgmlBlock) -> GgmlType {
    match b {
        GgmlBlock::Q4_0 => GgmlType::Q4_0,
        GgmlBlock::Q4_1 => GgmlType::Q4_1,
        GgmlBlock::Q5_0 => GgmlType::Q5_0,
        GgmlBlock::Q5_1 => GgmlType::Q5_1,
        GgmlBlock::Q8_0 => GgmlType::Q8_0,
        GgmlBlock::Q4K => GgmlType::Q4_K,
        GgmlBlock::Q5K => GgmlType::Q5_K,
        GgmlBlock::Q6K => GgmlType::Q6_K,
    }
}

#[test]
fn ggml_blocks_are_stored_value_for_value() {
    // Quantized by our port of ggml's reference quantizers, laid out for the GPU, and read back
    // element by element: every value equals ggml's dequantizer on the original block bytes
    // (`gguf::dequantize`, itself checked against PyPI's gguf in tests/gguf.rs), bit for bit.
    let (rows, cols) = (5, 512);
    for block in BLOCKS {
        let x = data(rows * cols, 9);
        let bytes = blocks::quantize(block, &x).unwrap();
        let want = dequantize(ggml_type(block), &bytes).unwrap();
        let packed = blocks::from_ggml(block, rows, cols, &bytes).unwrap();
        assert_eq!(packed.dtype, block.dtype());
        assert_eq!(packed.words.len(), packed.dtype.words(rows, cols), "{block:?}");
        let got = packed.unpack();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{block:?} value {i}: {a} vs ggml {b}");
        }
        // Q4_0, Q5_0 and Q8_0 also go into int8 exactly (what a load joins them as).
        if matches!(block, GgmlBlock::Q4_0 | GgmlBlock::Q5_0 | GgmlBlock::Q8_0) {
            let as_int8 = blocks::from_ggml_as(block, DType::Int8, rows, cols, &bytes).unwrap().unpack();
            assert!(as_int8.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{block:?} as int8");
        } else {
            assert!(blocks::from_ggml_as(block, DType::Int8, rows, cols, &bytes).is_err(), "{block:?} as int8 is refused");
        }
        // Packing f32 directly as the block type is the same thing.
        if let Some(b) = GgmlBlock::of(packed.dtype) {
            assert_eq!(Packed::pack(packed.dtype, rows, cols, &x).unwrap(), packed, "{b:?}");
        }
        // And row slices of it are bit-exact.
        for (start, end) in [(0, 1), (1, 4), (2, 5)] {
            let part = packed.rows_slice(start, end);
            assert_eq!(part.words.len(), packed.dtype.words(end - start, cols));
            assert_eq!(part.unpack(), got[start * cols..end * cols].to_vec(), "{block:?} rows {start}..{end}");
        }
    }
}

#[test]
fn ggml_quantizers_stay_within_their_steps() {
    // Relative RMS error of each block quantizer on trained-weight-like data: a wrong code
    // order, scale or min shows up as an error of the order of the values themselves.
    let x = data(64 * 256, 11);
    let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
    for (block, bound) in [
        (GgmlBlock::Q4_0, 0.08),
        (GgmlBlock::Q4_1, 0.12),
        (GgmlBlock::Q5_0, 0.08),
        (GgmlBlock::Q5_1, 0.07),
        (GgmlBlock::Q8_0, 0.02),
        (GgmlBlock::Q4K, 0.08),
        (GgmlBlock::Q5K, 0.07),
        (GgmlBlock::Q6K, 0.045),
    ] {
        let y = dequantize(ggml_type(block), &blocks::quantize(block, &x).unwrap()).unwrap();
        let err = (x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / x.len() as f32).sqrt();
        eprintln!("{block:?}: relative RMS error {:.4}", err / rms);
        assert!(err <= bound * rms, "{block:?}: RMS error {err} of RMS {rms}");
    }
}

#[test]
fn k_quants_need_whole_super_blocks() {
    for dtype in [DType::Q4K, DType::Q5K, DType::Q6K] {
        let err = Packed::pack(dtype, 2, 96, &[0.0; 192]).unwrap_err();
        assert!(err.to_string().contains("multiple of 256"), "{err}");
    }
    let err = blocks::from_ggml(GgmlBlock::Q4K, 1, 256, &[0u8; 100]).unwrap_err();
    assert!(err.to_string().contains("144 bytes"), "{err}");
}

#[test]
fn ggml_blocks_equal_pypi_gguf_dequantization() {
    // Rows of the real 270M's tensors and random blocks, dequantized by llama.cpp's own Python
    // package (tools/make_ggml_blocks_fixture.py): our layout's values and our port of ggml's
    // dequantizers both equal them bit for bit.
    let mut ck = gemma_webgpu::convert::safetensors::Checkpoint::default();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ggml-blocks/blocks.safetensors");
    ck.add_bytes("blocks.safetensors", std::fs::read(path).unwrap()).unwrap();
    for block in BLOCKS {
        let name = ggml_type(block).name();
        let (shape, want) = ck.read_f32(&format!("{name}.values")).unwrap();
        let bytes: Vec<u8> = ck.read_i32(&format!("{name}.bytes")).unwrap().into_iter().map(|b| b as u8).collect();
        let ours = blocks::from_ggml(block, shape[0], shape[1], &bytes).unwrap().unpack();
        let port = dequantize(ggml_type(block), &bytes).unwrap();
        assert_eq!(ours.len(), want.len());
        for i in 0..want.len() {
            assert_eq!(ours[i].to_bits(), want[i].to_bits(), "{name} value {i}: ours {} vs gguf {}", ours[i], want[i]);
            assert_eq!(port[i].to_bits(), want[i].to_bits(), "{name} value {i}: dequantize {} vs gguf {}", port[i], want[i]);
        }
    }
}
