//! Untrusted model files (issue 14's list, the parsers' part): every field a hostile or
//! damaged manifest, `config.json` or safetensors header can set to break the engine is refused
//! by a named error that says what is wrong, before anything is fetched or allocated from it.
//! Each case failed before these checks (a panic, an allocation abort, a wrapped sum, a path
//! outside the model's directory, a tensor silently dropped or mixed). GGUF cases are in
//! tests/gguf.rs; mutation fuzzing of all the parsers in tests/fuzz.rs.
#![cfg(not(target_arch = "wasm32"))]

use gemma_webgpu::convert::{convert_in_memory, safetensors::Checkpoint};
use gemma_webgpu::format::Manifest;
use gemma_webgpu::model::config::ModelConfig;
use gemma_webgpu::quant::DType;
use serde_json::{json, Value};

const CONFIG: &str = include_str!("fixtures/tiny-f32/config.json");
const WEIGHTS: &[u8] = include_bytes!("fixtures/tiny-f32/model.safetensors");

/// The tiny model's manifest (int4), as JSON to break.
fn manifest() -> Value {
    let mut ck = Checkpoint::default();
    ck.add_bytes("model.safetensors", WEIGHTS.to_vec()).expect("fixture");
    let (mut m, _) = convert_in_memory(CONFIG, &ck, DType::Int4, 64 << 10).expect("convert");
    m.tokenizer = Some("tokenizer.json".into());
    serde_json::from_str(&m.to_json()).expect("json")
}

/// `v` is refused, with an error mentioning each of `want`.
fn refused(case: &str, v: &Value, want: &[&str]) {
    match Manifest::from_json(&v.to_string()) {
        Ok(_) => panic!("{case}: accepted"),
        Err(e) => {
            let e = e.to_string();
            assert!(want.iter().all(|w| e.contains(w)), "{case}: {e}");
            println!("{case}: {e}");
        }
    }
}

#[test]
fn the_untouched_manifest_is_accepted() {
    Manifest::from_json(&manifest().to_string()).expect("valid");
}

#[test]
fn config_fields_out_of_range_are_named() {
    for (field, value, want) in [
        ("num_key_value_heads", json!(0), "num_key_value_heads"),
        ("head_dim", json!(0), "head_dim"),
        ("vocab_size", json!(0), "vocab_size"),
        ("hidden_size", json!(4_000_000_000u64), "hidden_size"),
        ("num_hidden_layers", json!(1_000_000), "num_hidden_layers"),
        ("max_position_embeddings", json!(0), "max_position_embeddings"),
        ("rms_norm_eps", json!(-1.0), "rms_norm_eps"),
    ] {
        let mut m = manifest();
        m["config"][field] = value;
        refused(&format!("config.{field}"), &m, &[want]);
    }
}

#[test]
fn shards_no_tensor_uses_and_sizes_that_overflow_are_refused() {
    // An extra 3 GB shard no tensor uses: it would have been downloaded, and preallocated.
    let mut m = manifest();
    m["shards"].as_array_mut().unwrap().push(json!({ "file": "model-99999.bin", "size": 3_000_000_000u64, "sha256": "" }));
    refused("unused shard", &m, &["model-99999.bin", "holds no tensor"]);
    // Sizes whose sum wraps around u64.
    let mut m = manifest();
    m["shards"][0]["size"] = json!(u64::MAX);
    m["shards"].as_array_mut().unwrap().push(json!({ "file": "model-99999.bin", "size": 2, "sha256": "" }));
    refused("sizes that overflow", &m, &["add up to more than"]);
}

#[test]
fn file_names_stay_inside_the_models_directory() {
    for name in ["../x.bin", "/dev/zero", "a/b.bin", "manifest.json", ".hidden", "gemma-webgpu-cache.json", "", "x?y"] {
        let mut m = manifest();
        m["shards"][0]["file"] = json!(name);
        refused(&format!("shard file {name:?}"), &m, &["plain names"]);
        let mut m = manifest();
        m["tokenizer"] = json!(name);
        refused(&format!("tokenizer file {name:?}"), &m, &["plain names"]);
    }
    // The tokenizer may not share a shard's name either.
    let mut m = manifest();
    m["tokenizer"] = m["shards"][0]["file"].clone();
    refused("tokenizer named like a shard", &m, &["named twice"]);
}

#[test]
fn tensors_must_be_the_configs_once_each() {
    // A duplicate name (its parts would have been mixed with the original's).
    let mut m = manifest();
    let name = m["tensors"][1]["name"].clone();
    m["tensors"][2]["name"] = name;
    refused("duplicate tensor", &m, &["exactly once"]);
    // An extra tensor the config does not use (it would have been uploaded anyway).
    let mut m = manifest();
    let extra = m["tensors"][1].clone();
    m["tensors"].as_array_mut().unwrap().push(extra);
    refused("extra tensor", &m, &["tensors where the config uses"]);
    // A shape the config does not give.
    let mut m = manifest();
    m["tensors"][1]["shape"][1] = json!(96);
    refused("wrong shape", &m, &["the config makes it"]);
    // A type whose groups do not fit the rows (q4_k needs rows of whole 256-value blocks).
    let mut m = manifest();
    m["tensors"][1]["dtype"] = json!("q4_k");
    refused("rows not whole groups", &m, &["256-value groups"]);
    // Parts out of order, or longer than the tensor.
    let mut m = manifest();
    m["tensors"][1]["parts"][0]["rows"] = json!(u32::MAX);
    refused("part rows past the tensor", &m, &["does not continue"]);
}

#[test]
fn a_text_config_that_is_not_an_object_is_an_error_not_a_panic() {
    let e = ModelConfig::from_hf_json(r#"{"model_type": "gemma3", "text_config": 5}"#).unwrap_err().to_string();
    assert!(e.contains("text_config") && e.contains("must be an object"), "{e}");
}

/// A safetensors file: the header JSON, then `data` bytes.
fn safetensors(header: Value, data: usize) -> Vec<u8> {
    let h = header.to_string().into_bytes();
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h);
    b.extend(vec![0u8; data]);
    b
}

#[test]
fn safetensors_offsets_must_tile_the_data_exactly() {
    let err = |header: Value, data: usize| {
        let mut ck = Checkpoint::default();
        ck.add_bytes("x.safetensors", safetensors(header, data)).unwrap_err().to_string()
    };
    let t = |a: u64, b: u64, shape: u64| json!({ "dtype": "F32", "shape": [shape], "data_offsets": [a, b] });
    // Offsets near u64::MAX wrapped (release) or panicked (debug).
    let e = err(json!({ "a": t(u64::MAX - 3, u64::MAX, 1) }), 4);
    assert!(e.contains("lie past any file"), "{e}");
    // A shape whose byte count overflows.
    let e = err(json!({ "a": { "dtype": "F32", "shape": [u64::MAX / 2, 4], "data_offsets": [0, 8] } }), 8);
    assert!(e.contains("bytes for shape"), "{e}");
    // Overlapping tensors, a gap between them, and bytes after the last.
    let e = err(json!({ "a": t(0, 8, 2), "b": t(4, 12, 2) }), 12);
    assert!(e.contains("overlaps"), "{e}");
    let e = err(json!({ "a": t(0, 8, 2), "b": t(12, 20, 2) }), 20);
    assert!(e.contains("gap"), "{e}");
    let e = err(json!({ "a": t(0, 8, 2) }), 12);
    assert!(e.contains("no tensor covers"), "{e}");
    // And the well-formed file reads.
    let mut ck = Checkpoint::default();
    ck.add_bytes("x.safetensors", safetensors(json!({ "a": t(0, 8, 2), "b": t(8, 12, 1) }), 12)).expect("valid");
}

#[test]
fn a_weight_map_cannot_name_files_outside_the_checkpoint() {
    let dir = std::env::temp_dir().join(format!("gemma-weight-map-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    for f in ["../model.safetensors", "/dev/zero", "sub/x.safetensors", ".hidden.safetensors"] {
        std::fs::write(dir.join("model.safetensors.index.json"), json!({ "weight_map": { "model.embed_tokens.weight": f } }).to_string()).unwrap();
        let e = gemma_webgpu::convert::convert_hf(&dir, &dir.join("out"), DType::F32, 1 << 20, false).unwrap_err().to_string();
        assert!(e.contains("plain *.safetensors names"), "{f}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tokenizer_larger_than_the_models_vocabulary_is_refused() {
    let tok = gemma_webgpu::tokenizer::Tokenizer::from_json(include_bytes!("fixtures/tiny-tokenizer.json"), 2).expect("tokenizer");
    tok.check_fits(512).expect("the tiny model's own");
    let e = tok.check_fits(100).unwrap_err().to_string();
    assert!(e.contains("512 tokens") && e.contains("100 rows"), "{e}");
}

/// The tiny checkpoint with element `index` of tensor `name` (f32) set to `value`.
fn weights_with(name: &str, index: usize, value: f32) -> Checkpoint {
    let mut bytes = WEIGHTS.to_vec();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).expect("header");
    assert_eq!(header[name]["dtype"], "F32", "{name}");
    let begin = header[name]["data_offsets"][0].as_u64().expect("offset") as usize;
    let at = 8 + header_len + begin + 4 * index;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    let mut ck = Checkpoint::default();
    ck.add_bytes("model.safetensors", bytes).expect("fixture");
    ck
}

#[test]
fn weights_that_are_not_finite_numbers_are_named_not_converted() {
    let down = "model.layers.1.mlp.down_proj.weight";
    let cols = ModelConfig::from_hf_json(CONFIG).expect("config").intermediate_size as usize;
    let (row, col) = (3, 40);
    let expect = |dtype: DType, value: f32, want: &[&str]| {
        let e = convert_in_memory(CONFIG, &weights_with(down, row * cols + col, value), dtype, 64 << 10).map(|_| ()).unwrap_err().to_string();
        let mut all = vec![down, "row 3, column 40"];
        all.extend_from_slice(want);
        assert!(all.iter().all(|w| e.contains(w)), "{} {value}: {e}", dtype.name());
        println!("{} {value}: {e}", dtype.name());
    };
    // Before these checks, int4 turned the NaN's whole 32-value group into NaN, silently.
    for dtype in [DType::Int4, DType::Int8, DType::F16, DType::F32, DType::Q4K] {
        expect(dtype, f32::NAN, &["is NaN", "damaged"]);
        expect(dtype, f32::NEG_INFINITY, &["is -inf", "damaged"]);
    }
    // Finite but beyond fp16: the f16 value, or an int4 group's fp16 scale, would be infinite.
    for dtype in [DType::Int4, DType::F16, DType::Int8] {
        expect(dtype, 1e6, &["1e6", "6.5504e4", dtype.name(), "convert to f32"]);
    }
    for dtype in [DType::F32, DType::Bf16] {
        convert_in_memory(CONFIG, &weights_with(down, row * cols + col, 1e6), dtype, 64 << 10).expect("f32 and bf16 hold 1e6");
    }
}

#[test]
fn ggml_blocks_and_copied_floats_must_be_finite() {
    use gemma_webgpu::quant::{blocks, GgmlBlock, Packed};
    // A Q4_0 row of two blocks: fp16 d, then 16 bytes of codes. The second block's d is NaN,
    // then +inf; a finite d is accepted.
    for (d, want) in [(0x7e00u16, Some("a NaN scale")), (0x7c00, Some("an infinite scale")), (0x3c00, None)] {
        let mut row = vec![0u8; 36];
        row[18..20].copy_from_slice(&d.to_le_bytes());
        match (blocks::from_ggml(GgmlBlock::Q4_0, 1, 64, &row), want) {
            (Ok(_), None) => {}
            (Err(e), Some(w)) => {
                let e = e.to_string();
                assert!(e.contains(w) && e.contains("row 0, columns 32..64"), "{e}");
            }
            (r, w) => panic!("{d:#x}: {:?}, expected {w:?}", r.map(|_| ())),
        }
    }
    // A Q6_K super-block keeps its d at byte 208.
    let mut sb = vec![0u8; 210];
    sb[208..210].copy_from_slice(&0xfc00u16.to_le_bytes());
    assert!(blocks::from_ggml(GgmlBlock::Q6K, 1, 256, &sb).unwrap_err().to_string().contains("an infinite scale"));
    // f16 words copied from a file as they are (a GGUF's F16 tensor): NaN at value 5 of row 1.
    let mut words = vec![0x3c00_3c00u32; 32];
    words[(32 + 5) / 2] = 0x7e01 << 16 | 0x3c00;
    let p = Packed { dtype: DType::F16, rows: 2, cols: 32, words };
    let e = p.check_finite().unwrap_err().to_string();
    assert!(e.contains("row 1, column 5") && e.contains("NaN"), "{e}");
}
