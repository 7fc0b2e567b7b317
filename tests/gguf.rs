//! GGUF import on synthetic files written here (native, no network): a tiny Gemma 2 with
//! tensors in F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K and Q6_K converts to our format with
//! every value equal to one computed independently while the blocks were packed (norms minus
//! llama.cpp's +1, Hugging Face orientation); the config and tokenizer come out right; and
//! broken files (truncated, unknown tensor type, other architecture, untied LM head) fail with
//! errors that say what is wrong.
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};

use gemma_webgpu::convert::{self, gguf::Gguf};
use gemma_webgpu::format::Manifest;
use gemma_webgpu::quant::{DType, Packed};
use gemma_webgpu::tokenizer::Tokenizer;
use half::{bf16, f16};

// ---- a GGUF writer (the layout from llama.cpp's gguf docs, written independently of the reader) ----

enum V {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(&'static str),
    Strs(Vec<String>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &V) {
    let array = |out: &mut Vec<u8>, ty: u32, n: usize| {
        out.extend(9u32.to_le_bytes());
        out.extend(ty.to_le_bytes());
        out.extend((n as u64).to_le_bytes());
    };
    match v {
        V::U32(x) => {
            out.extend(4u32.to_le_bytes());
            out.extend(x.to_le_bytes());
        }
        V::F32(x) => {
            out.extend(6u32.to_le_bytes());
            out.extend(x.to_le_bytes());
        }
        V::Bool(x) => {
            out.extend(7u32.to_le_bytes());
            out.push(*x as u8);
        }
        V::Str(s) => {
            out.extend(8u32.to_le_bytes());
            put_str(out, s);
        }
        V::Strs(a) => {
            array(out, 8, a.len());
            a.iter().for_each(|s| put_str(out, s));
        }
        V::F32s(a) => {
            array(out, 6, a.len());
            a.iter().for_each(|x| out.extend(x.to_le_bytes()));
        }
        V::I32s(a) => {
            array(out, 5, a.len());
            a.iter().for_each(|x| out.extend(x.to_le_bytes()));
        }
    }
}

/// A tensor to write: GGUF name, GGML dims (innermost first), type id, data bytes.
struct T {
    name: String,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
}

const ALIGN: usize = 32;

fn write_gguf(kvs: &[(&str, V)], tensors: &[T]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        put_str(&mut out, k);
        put_value(&mut out, v);
    }
    let mut offset = 0usize;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        t.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(t.ty.to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        offset = (offset + t.data.len()).div_ceil(ALIGN) * ALIGN;
    }
    for t in tensors {
        out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
        out.extend(&t.data);
    }
    out
}

// ---- block packers: each returns the bytes and the values they stand for, computed from the
// ---- codes and scales directly (not by the importer's dequantizer) ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }
    fn below(&mut self, n: u32) -> u32 {
        self.next() % n
    }
    /// A small f16-exact scale.
    fn scale(&mut self) -> f32 {
        (1 + self.below(64)) as f32 / 1024.0
    }
}

type Packer = fn(&mut Rng) -> (Vec<u8>, Vec<f32>);

/// Q8_0: f16 d, 32 x i8; x = q * d.
fn q8_0(r: &mut Rng) -> (Vec<u8>, Vec<f32>) {
    let d = r.scale();
    let q: Vec<i8> = (0..32).map(|_| (r.below(256) as i32 - 128) as i8).collect();
    let mut b = f16::from_f32(d).to_le_bytes().to_vec();
    b.extend(q.iter().map(|v| *v as u8));
    (b, q.iter().map(|v| *v as f32 * d).collect())
}

/// Q4_0: f16 d, 16 bytes; value j (< 16) is the low nibble of byte j, value 16 + j the high
/// nibble; x = (q - 8) * d.
fn q4_0(r: &mut Rng) -> (Vec<u8>, Vec<f32>) {
    let d = r.scale();
    let q: Vec<u8> = (0..32).map(|_| r.below(16) as u8).collect();
    let mut b = f16::from_f32(d).to_le_bytes().to_vec();
    b.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
    (b, q.iter().map(|v| (*v as f32 - 8.0) * d).collect())
}

/// Q4_1: f16 d, f16 m, 16 bytes of nibbles as Q4_0; x = q * d + m.
fn q4_1(r: &mut Rng) -> (Vec<u8>, Vec<f32>) {
    let (d, m) = (r.scale(), -r.scale());
    let q: Vec<u8> = (0..32).map(|_| r.below(16) as u8).collect();
    let mut b = [f16::from_f32(d).to_le_bytes(), f16::from_f32(m).to_le_bytes()].concat();
    b.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
    (b, q.iter().map(|v| *v as f32 * d + m).collect())
}

/// Q5_1: f16 d, f16 m, u32 of fifth bits and 16 bytes of low nibbles as Q5_0; x = q * d + m.
fn q5_1(r: &mut Rng) -> (Vec<u8>, Vec<f32>) {
    let (d, m) = (r.scale(), -r.scale());
    let q: Vec<u8> = (0..32).map(|_| r.below(32) as u8).collect();
    let qh: u32 = (0..32).map(|i| ((q[i] >> 4) as u32) << i).sum();
    let mut b = [f16::from_f32(d).to_le_bytes(), f16::from_f32(m).to_le_bytes()].concat();
    b.extend(qh.to_le_bytes());
    b.extend((0..16).map(|j| (q[j] & 15) | ((q[j + 16] & 15) << 4)));
    (b, q.iter().map(|v| *v as f32 * d + m).collect())
}

/// Q5_0: f16 d, u32 of fifth bits (bit i for value i), 16 bytes of low nibbles as Q4_0;
/// x = (q - 16) * d.
fn q5_0(r: &mut Rng) -> (Vec<u8>, Vec<f32>) {
    let d = r.scale();
    let q: Vec<u8> = (0..32).map(|_| r.below(32) as u8).collect();
    let qh: u32 = (0..32).map(|i| ((q[i] >> 4) as u32) << i).sum();
    let mut b = f16::from_f32(d).to_le_bytes().to_vec();
    b.extend(qh.to_le_bytes());
    b.extend((0..16).map(|j| (q[j] & 15) | ((q[j + 16] & 15) << 4)));
    (b, q.iter().map(|v| (*v as f32 - 16.0) * d).collect())
}

/// Q4_K: f16 d, f16 dmin, 12 bytes packing eight 6-bit scales and mins, 128 bytes of nibbles
/// (bytes 32g..32g+32 hold values 64g.. in the low nibbles and 64g+32.. in the high ones);
/// x = d * scale[v / 32] * q - dmin * min[v / 32].
fn q4_k(r: &mut Rng) -> (Vec<u8>, Vec<f32>) {
    let (d, dmin) = (r.scale(), r.scale());
    let sc: Vec<u8> = (0..8).map(|_| r.below(64) as u8).collect();
    let mn: Vec<u8> = (0..8).map(|_| r.below(64) as u8).collect();
    let q: Vec<u8> = (0..256).map(|_| r.below(16) as u8).collect();
    let mut b = [f16::from_f32(d).to_le_bytes(), f16::from_f32(dmin).to_le_bytes()].concat();
    b.extend(k_scales(&sc, &mn));
    for g in 0..4 {
        b.extend((0..32).map(|i| q[64 * g + i] | (q[64 * g + 32 + i] << 4)));
    }
    let x = (0..256).map(|v| d * sc[v / 32] as f32 * q[v] as f32 - dmin * mn[v / 32] as f32).collect();
    (b, x)
}

/// The 12 bytes in which Q4_K and Q5_K pack eight 6-bit scales and eight 6-bit mins: scale
/// and min j < 4 in the low 6 bits of bytes j and j + 4; for j >= 4 their low nibbles share
/// byte j + 4 and their top two bits sit in the top bits of bytes j - 4 and j.
fn k_scales(sc: &[u8], mn: &[u8]) -> [u8; 12] {
    let mut packed = [0u8; 12];
    for j in 0..4 {
        packed[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        packed[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        packed[j + 8] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4);
    }
    packed
}

/// Q5_K: Q4_K's header (f16 d, f16 dmin, 12 bytes of scales and mins), 32 bytes of fifth bits
/// (value 64g + i has bit 2g of byte i, value 64g + 32 + i bit 2g + 1), then Q4_K's 128 bytes
/// of nibbles; x = d * scale[v / 32] * q - dmin * min[v / 32].
fn q5_k(r: &mut Rng) -> (Vec<u8>, Vec<f32>) {
    let (d, dmin) = (r.scale(), r.scale());
    let sc: Vec<u8> = (0..8).map(|_| r.below(64) as u8).collect();
    let mn: Vec<u8> = (0..8).map(|_| r.below(64) as u8).collect();
    let q: Vec<u8> = (0..256).map(|_| r.below(32) as u8).collect();
    let mut b = [f16::from_f32(d).to_le_bytes(), f16::from_f32(dmin).to_le_bytes()].concat();
    b.extend(k_scales(&sc, &mn));
    let mut qh = [0u8; 32];
    for g in 0..4 {
        for i in 0..32 {
            qh[i] |= ((q[64 * g + i] >> 4) << (2 * g)) | ((q[64 * g + 32 + i] >> 4) << (2 * g + 1));
        }
    }
    b.extend(qh);
    for g in 0..4 {
        b.extend((0..32).map(|i| (q[64 * g + i] & 15) | ((q[64 * g + 32 + i] & 15) << 4)));
    }
    let x = (0..256).map(|v| d * sc[v / 32] as f32 * q[v] as f32 - dmin * mn[v / 32] as f32).collect();
    (b, x)
}

/// Q6_K: 128 bytes of low nibbles, 64 bytes of high bit pairs, 16 i8 scales, f16 d. In each
/// 128-value half h, for l < 32: values l, l+32, l+64, l+96 are nibbles (lo of ql[64h+l],
/// lo of ql[64h+32+l], hi of ql[64h+l], hi of ql[64h+32+l]) with bit pairs 0-1, 2-3, 4-5, 6-7
/// of qh[32h+l]; x = d * scale[v / 16] * (q - 32).
fn q6_k(r: &mut Rng) -> (Vec<u8>, Vec<f32>) {
    let d = r.scale();
    let sc: Vec<i8> = (0..16).map(|_| (r.below(255) as i32 - 127) as i8).collect();
    let q: Vec<u8> = (0..256).map(|_| r.below(64) as u8).collect();
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for h in 0..2 {
        for l in 0..32 {
            let v = |k: usize| q[128 * h + 32 * k + l];
            ql[64 * h + l] = (v(0) & 15) | ((v(2) & 15) << 4);
            ql[64 * h + 32 + l] = (v(1) & 15) | ((v(3) & 15) << 4);
            qh[32 * h + l] = (v(0) >> 4) | ((v(1) >> 4) << 2) | ((v(2) >> 4) << 4) | ((v(3) >> 4) << 6);
        }
    }
    let mut b = [ql.to_vec(), qh.to_vec(), sc.iter().map(|s| *s as u8).collect()].concat();
    b.extend(f16::from_f32(d).to_le_bytes());
    (b, (0..256).map(|v| d * sc[v / 16] as f32 * (q[v] as f32 - 32.0)).collect())
}

fn blocks(r: &mut Rng, n_values: usize, per_block: usize, pack: Packer) -> (Vec<u8>, Vec<f32>) {
    let (mut bytes, mut values) = (Vec::new(), Vec::new());
    for _ in 0..n_values / per_block {
        let (b, v) = pack(r);
        bytes.extend(b);
        values.extend(v);
    }
    (bytes, values)
}

#[derive(Clone, Copy)]
enum Enc {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4K,
    Q5K,
    Q6K,
}

/// A `[rows, cols]` (Hugging Face) matrix in `enc`: the tensor to write and its exact values.
fn matrix(r: &mut Rng, name: &str, rows: usize, cols: usize, enc: Enc) -> (T, Vec<f32>) {
    let n = rows * cols;
    let small = |r: &mut Rng| (r.below(2001) as f32 - 1000.0) / 4096.0;
    let (ty, data, values) = match enc {
        Enc::F32 => {
            let v: Vec<f32> = (0..n).map(|_| small(r)).collect();
            (0, v.iter().flat_map(|x| x.to_le_bytes()).collect(), v)
        }
        Enc::F16 => {
            let v: Vec<f32> = (0..n).map(|_| f16::from_f32(small(r)).to_f32()).collect();
            (1, v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect(), v)
        }
        Enc::Bf16 => {
            let v: Vec<f32> = (0..n).map(|_| bf16::from_f32(small(r)).to_f32()).collect();
            (30, v.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect(), v)
        }
        Enc::Q8_0 => with_ty(8, blocks(r, n, 32, q8_0)),
        Enc::Q4_0 => with_ty(2, blocks(r, n, 32, q4_0)),
        Enc::Q4_1 => with_ty(3, blocks(r, n, 32, q4_1)),
        Enc::Q5_0 => with_ty(6, blocks(r, n, 32, q5_0)),
        Enc::Q5_1 => with_ty(7, blocks(r, n, 32, q5_1)),
        Enc::Q4K => with_ty(12, blocks(r, n, 256, q4_k)),
        Enc::Q5K => with_ty(13, blocks(r, n, 256, q5_k)),
        Enc::Q6K => with_ty(14, blocks(r, n, 256, q6_k)),
    };
    (T { name: name.into(), dims: vec![cols as u64, rows as u64], ty, data }, values)
}

fn with_ty(ty: u32, (b, v): (Vec<u8>, Vec<f32>)) -> (u32, Vec<u8>, Vec<f32>) {
    (ty, b, v)
}

/// A norm weight `w`, stored as llama.cpp does: F32 `1 + w` (w a multiple of 1/64, so both
/// `1 + w` and the importer's `(1 + w) - 1` are exact).
fn norm(r: &mut Rng, name: &str, n: usize) -> (T, Vec<f32>) {
    let w: Vec<f32> = (0..n).map(|_| (r.below(64) as f32 - 32.0) / 64.0).collect();
    let data = w.iter().flat_map(|x| (1.0 + x).to_le_bytes()).collect();
    (T { name: name.into(), dims: vec![n as u64], ty: 0, data }, w)
}

// ---- the synthetic Gemma 2 ----

const H: usize = 64;
const I: usize = 256;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 64;
const LAYERS: usize = 2;

/// The tokenizer vocabulary: (piece, score, token type). Scores deliberately disagree with the
/// file order in places ("ba" scores above "ab"): transformers ranks Gemma merges by position.
fn vocab() -> Vec<(&'static str, f32, i32)> {
    vec![
        ("<pad>", -1000.0, 3),
        ("<eos>", -1000.0, 3),
        ("<bos>", -1000.0, 3),
        ("<unk>", -1000.0, 2),
        ("<start_of_turn>", -1000.0, 3),
        ("<end_of_turn>", -1000.0, 3),
        ("\n", -1000.0, 4),
        ("<0xE4>", 0.0, 6),
        ("<0xB8>", 0.0, 6),
        ("<0xAD>", 0.0, 6),
        ("  ", -1000.0, 4), // two spaces: respelled "▁▁"
        ("\u{2581}", -1.0, 1),
        ("a", -2.0, 1),
        ("b", -3.0, 1),
        ("ab", -4.0, 1),
        ("\u{2581}ab", -5.0, 1),
        ("\u{2581}a", -6.0, 1),
        ("ba", 5.0, 1),
        ("aba", -8.0, 1),
    ]
}

fn tokenizer_kvs() -> Vec<(&'static str, V)> {
    let v = vocab();
    vec![
        ("tokenizer.ggml.model", V::Str("llama")),
        ("tokenizer.ggml.tokens", V::Strs(v.iter().map(|t| t.0.to_string()).collect())),
        ("tokenizer.ggml.scores", V::F32s(v.iter().map(|t| t.1).collect())),
        ("tokenizer.ggml.token_type", V::I32s(v.iter().map(|t| t.2).collect())),
        ("tokenizer.ggml.bos_token_id", V::U32(2)),
        ("tokenizer.ggml.eos_token_id", V::U32(1)),
        ("tokenizer.ggml.unknown_token_id", V::U32(3)),
        ("tokenizer.ggml.padding_token_id", V::U32(0)),
        ("tokenizer.ggml.add_bos_token", V::Bool(true)),
    ]
}

fn gemma2_kvs(arch: &'static str) -> Vec<(&'static str, V)> {
    let mut kvs = vec![
        ("general.architecture", V::Str(arch)),
        ("general.alignment", V::U32(ALIGN as u32)),
        ("gemma2.context_length", V::U32(512)),
        ("gemma2.embedding_length", V::U32(H as u32)),
        ("gemma2.block_count", V::U32(LAYERS as u32)),
        ("gemma2.feed_forward_length", V::U32(I as u32)),
        ("gemma2.attention.head_count", V::U32(HEADS as u32)),
        ("gemma2.attention.head_count_kv", V::U32(KV_HEADS as u32)),
        ("gemma2.attention.key_length", V::U32(HEAD_DIM as u32)),
        ("gemma2.attention.value_length", V::U32(HEAD_DIM as u32)),
        ("gemma2.attention.layer_norm_rms_epsilon", V::F32(1e-6)),
        ("gemma2.attention.sliding_window", V::U32(128)),
        ("gemma2.attn_logit_softcapping", V::F32(50.0)),
        ("gemma2.final_logit_softcapping", V::F32(30.0)),
    ];
    kvs.extend(tokenizer_kvs());
    kvs
}

/// The tensors of the synthetic model (GGUF names, a mix of encodings) and, by Hugging Face
/// name, the values the import must produce.
fn tensor_table(seed: u64) -> (Vec<T>, Vec<(String, Vec<f32>)>) {
    let mut r = Rng(seed | 1);
    let (mut ts, mut want) = (Vec::new(), Vec::new());
    let mut add = |(t, v): (T, Vec<f32>), hf: String| {
        ts.push(t);
        want.push((hf, v));
    };
    let v = vocab().len();
    add(matrix(&mut r, "token_embd.weight", v, H, Enc::F16), "model.embed_tokens.weight".into());
    for l in 0..LAYERS {
        let (b, m) = (format!("blk.{l}."), format!("model.layers.{l}."));
        let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
        add(norm(&mut r, &(b.clone() + "attn_norm.weight"), H), m.clone() + "input_layernorm.weight");
        // Layer 0 has the types of a Q4_K_M file, layer 1 the others the importer reads.
        let first = l == 0;
        add(matrix(&mut r, &(b.clone() + "attn_q.weight"), q, H, if first { Enc::Q8_0 } else { Enc::Q4_1 }), m.clone() + "self_attn.q_proj.weight");
        add(matrix(&mut r, &(b.clone() + "attn_k.weight"), kv, H, if first { Enc::Q5_0 } else { Enc::Q5_1 }), m.clone() + "self_attn.k_proj.weight");
        add(matrix(&mut r, &(b.clone() + "attn_v.weight"), kv, H, if l == 0 { Enc::Bf16 } else { Enc::F32 }), m.clone() + "self_attn.v_proj.weight");
        add(matrix(&mut r, &(b.clone() + "attn_output.weight"), H, q, Enc::Q6K), m.clone() + "self_attn.o_proj.weight");
        add(norm(&mut r, &(b.clone() + "post_attention_norm.weight"), H), m.clone() + "post_attention_layernorm.weight");
        add(norm(&mut r, &(b.clone() + "ffn_norm.weight"), H), m.clone() + "pre_feedforward_layernorm.weight");
        add(matrix(&mut r, &(b.clone() + "ffn_gate.weight"), I, H, Enc::Q8_0), m.clone() + "mlp.gate_proj.weight");
        add(matrix(&mut r, &(b.clone() + "ffn_up.weight"), I, H, Enc::Q4_0), m.clone() + "mlp.up_proj.weight");
        add(matrix(&mut r, &(b.clone() + "ffn_down.weight"), H, I, if first { Enc::Q4K } else { Enc::Q5K }), m.clone() + "mlp.down_proj.weight");
        add(norm(&mut r, &(b.clone() + "post_ffw_norm.weight"), H), m.clone() + "post_feedforward_layernorm.weight");
    }
    add(norm(&mut r, "output_norm.weight", H), "model.norm.weight".into());
    (ts, want)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gemma-gguf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn write_file(dir: &Path, bytes: &[u8]) -> PathBuf {
    let p = dir.join("model.gguf");
    std::fs::write(&p, bytes).expect("write gguf");
    p
}

fn synthetic_gemma2() -> (Vec<u8>, Vec<(String, Vec<f32>)>) {
    let (ts, want) = tensor_table(42);
    (write_gguf(&gemma2_kvs("gemma2"), &ts), want)
}

/// Every element of tensor `name` as stored in the converted model.
fn stored(dir: &Path, m: &Manifest, name: &str) -> Vec<f32> {
    let t = m.tensor(name).expect("tensor");
    let mut out = Vec::new();
    for p in &t.parts {
        let shard = std::fs::read(dir.join(&m.shards[p.shard as usize].file)).expect("shard");
        let bytes = &shard[p.offset as usize..(p.offset + p.length) as usize];
        let words: Vec<u32> = bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        out.extend(Packed { dtype: t.dtype.into(), rows: p.rows as usize, cols: t.shape[1] as usize, words }.unpack());
    }
    out
}

#[test]
fn converts_a_synthetic_gemma2_gguf_exactly() {
    let dir = tmp("exact");
    let (bytes, want) = synthetic_gemma2();
    let path = write_file(&dir, &bytes);
    let out = dir.join("out");
    let m = convert::convert_gguf(&path, &out, DType::F32, 64 << 10, false).expect("convert");

    let c = &m.config;
    assert_eq!((c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers), (vocab().len() as u32, H as u32, I as u32, LAYERS as u32));
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (HEADS as u32, KV_HEADS as u32, HEAD_DIM as u32));
    assert_eq!((c.query_pre_attn_scalar, c.sliding_window, c.max_position_embeddings), (HEAD_DIM as f32, 128, 512));
    assert_eq!((c.attn_logit_softcapping, c.final_logit_softcapping, c.rms_norm_eps, c.rope_theta), (50.0, 30.0, 1e-6, 10000.0));
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone(), c.sliding_layers.clone()), (2, vec![1], vec![true, false]));
    assert_eq!(m.tensors.len(), want.len());

    // Every value, in Hugging Face orientation, exactly as packed.
    for (name, values) in &want {
        let t = m.tensor(name).expect(name);
        assert_eq!(t.shape[0] as usize * t.shape[1] as usize, values.len(), "{name}");
        if name.ends_with("norm.weight") {
            assert_eq!(t.shape, [1, values.len() as u32], "{name}");
        }
        let got = stored(&out, &m, name);
        if let Some(i) = (0..values.len()).find(|&i| got[i] != values[i]) {
            panic!("{name}[{i}]: got {} want {}", got[i], values[i]);
        }
    }
    assert_eq!(m.tensor("model.layers.0.self_attn.o_proj.weight").unwrap().shape, [H as u32, (HEADS * HEAD_DIM) as u32]);
    assert_eq!(m.tensor("model.layers.1.mlp.down_proj.weight").unwrap().shape, [H as u32, I as u32]);

    // The tokenizer was written, registered in the manifest, and loads.
    assert_eq!(m.tokenizer.as_deref(), Some("tokenizer.json"));
    let tok = Tokenizer::from_json(&std::fs::read(out.join("tokenizer.json")).expect("tokenizer.json"), c.bos_token_id).expect("load");
    assert_eq!(tok.encode(" ab").unwrap(), vec![2, 15]);
    assert_eq!(tok.end_of_turn(), Some(5));

    // The same file in int4 (the default): same tensors, packed.
    let m4 = convert::convert_gguf(&path, &dir.join("int4"), DType::Int4, 1 << 20, false).expect("int4");
    assert_eq!(m4.tensor("model.layers.0.mlp.up_proj.weight").unwrap().dtype, gemma_webgpu::format::StoredType::Int4);
    assert_eq!(m4.tensor("model.norm.weight").unwrap().dtype, gemma_webgpu::format::StoredType::F32);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gguf_in_memory_reads_like_the_file() {
    let (bytes, want) = synthetic_gemma2();
    let g = Gguf::from_bytes(bytes).expect("parse");
    assert_eq!((g.version, g.alignment, g.architecture().unwrap()), (3, 32, "gemma2"));
    let (shape, values) = g.read_hf_f32("model.layers.1.self_attn.k_proj.weight").expect("read");
    assert_eq!(shape, vec![KV_HEADS * HEAD_DIM, H]);
    assert_eq!(&values, &want.iter().find(|(n, _)| n == "model.layers.1.self_attn.k_proj.weight").unwrap().1);
    // GGML dims are innermost first; the Hugging Face shape is reversed.
    let t = g.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!((t.dims.clone(), t.hf_shape()), (vec![I as u64, H as u64], vec![H, I]));
    assert_eq!(t.ggml_type.name(), "Q4_K");
}

#[test]
fn the_config_follows_the_metadata() {
    let (bytes, _) = synthetic_gemma2();
    let cfg: serde_json::Value = serde_json::from_str(&Gguf::from_bytes(bytes).unwrap().hf_config_json().unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "gemma2");
    assert_eq!(cfg["rope_parameters"], serde_json::json!({ "rope_theta": 10000.0, "rope_type": "default" }));
    assert_eq!(cfg["layer_types"], serde_json::json!(["sliding_attention", "full_attention"]));
    assert_eq!((cfg["pad_token_id"].as_u64(), cfg["rms_norm_eps"].as_f64()), (Some(0), Some(1e-6)));

    // Gemma 3: every 6th layer global, two RoPE bases, linear scaling of the global one, no
    // soft-caps, and the 27B's query scale (62 layers: hidden / heads).
    let kvs = vec![
        ("general.architecture", V::Str("gemma3")),
        ("gemma3.context_length", V::U32(131072)),
        ("gemma3.embedding_length", V::U32(5376)),
        ("gemma3.block_count", V::U32(62)),
        ("gemma3.feed_forward_length", V::U32(21504)),
        ("gemma3.attention.head_count", V::U32(32)),
        ("gemma3.attention.head_count_kv", V::U32(16)),
        ("gemma3.attention.key_length", V::U32(128)),
        ("gemma3.attention.sliding_window", V::U32(1024)),
        ("gemma3.rope.freq_base", V::F32(1_000_000.0)),
        ("gemma3.rope.scaling.type", V::Str("linear")),
        ("gemma3.rope.scaling.factor", V::F32(8.0)),
        ("tokenizer.ggml.eos_token_id", V::U32(106)),
        ("gemma3.vocab_size", V::U32(262208)),
    ];
    let cfg: serde_json::Value = serde_json::from_str(&Gguf::from_bytes(write_gguf(&kvs, &[])).unwrap().hf_config_json().unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "gemma3_text");
    assert_eq!((cfg["vocab_size"].as_u64(), cfg["query_pre_attn_scalar"].as_u64(), cfg["sliding_window"].as_u64()), (Some(262208), Some(168), Some(1024)));
    assert!(cfg["attn_logit_softcapping"].is_null() && cfg["final_logit_softcapping"].is_null());
    assert_eq!(cfg["eos_token_id"], 106);
    assert_eq!(
        cfg["rope_parameters"],
        serde_json::json!({
            "sliding_attention": { "rope_type": "default", "rope_theta": 10000.0 },
            "full_attention": { "rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0 },
        })
    );
    let types: Vec<&str> = cfg["layer_types"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(types.len(), 62);
    for (i, t) in types.iter().enumerate() {
        assert_eq!(*t, if (i + 1) % 6 == 0 { "full_attention" } else { "sliding_attention" }, "layer {i}");
    }
}

#[test]
fn tokenizer_merges_follow_the_vocabulary_order() {
    let g = Gguf::from_bytes(write_gguf(&tokenizer_kvs(), &[])).expect("parse");
    let json = g.tokenizer_json().expect("tokenizer");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let model = &v["model"];
    assert_eq!((model["type"].as_str(), model["byte_fallback"].as_bool(), model["fuse_unk"].as_bool()), (Some("BPE"), Some(true), Some(true)));
    // Every split of a piece into two pieces, by the merged piece's position in the file, the
    // longer left part first; the two-space token is looked up as "▁▁".
    let merges: Vec<(String, String)> =
        model["merges"].as_array().unwrap().iter().map(|m| (m[0].as_str().unwrap().into(), m[1].as_str().unwrap().into())).collect();
    let want: Vec<(&str, &str)> = vec![("▁", "▁"), ("a", "b"), ("▁a", "b"), ("▁", "ab"), ("▁", "a"), ("b", "a"), ("ab", "a"), ("a", "ba")];
    assert_eq!(merges.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect::<Vec<_>>(), want);
    assert_eq!(model["vocab"]["▁▁"], 10);
    assert!(model["vocab"].get("  ").is_none());
    // Control tokens (and <unk>) are special added tokens, "\n" a plain one; the spaces token
    // (respelled) and byte tokens are not added.
    let added: Vec<(u64, bool)> = v["added_tokens"].as_array().unwrap().iter().map(|t| (t["id"].as_u64().unwrap(), t["special"].as_bool().unwrap())).collect();
    assert_eq!(added, vec![(0, true), (1, true), (2, true), (3, true), (4, true), (5, true), (6, false)]);

    let tok = Tokenizer::from_json(json.as_bytes(), 2).expect("load");
    let enc = |s: &str| tok.encode_plain(s).unwrap();
    assert_eq!(enc("ab"), vec![14]);
    assert_eq!(enc(" ab"), vec![15]); // (a,b) before (▁,a), then (▁,ab)
    assert_eq!(enc("aba"), vec![18]);
    assert_eq!(enc("bab"), vec![13, 14]); // (a,b) outranks (b,a) although "ba" scores higher
    assert_eq!(enc("  a"), vec![10, 12]);
    assert_eq!(enc("中"), vec![7, 8, 9]); // byte fallback
    assert_eq!(enc("x"), vec![3]); // no byte token for 'x': <unk>
    assert_eq!(enc("<start_of_turn>a\n<end_of_turn>"), vec![4, 12, 6, 5]);
    assert_eq!(tok.encode("a").unwrap(), vec![2, 12]);
    assert_eq!(tok.decode(&[2, 15, 12, 7, 8, 9]).unwrap(), " aba中");
}

fn err_of(r: Result<impl std::fmt::Debug, gemma_webgpu::Error>) -> String {
    r.expect_err("should fail").to_string()
}

#[test]
fn a_truncated_file_is_a_clear_error() {
    let (bytes, _) = synthetic_gemma2();
    // Cut inside the last tensor's data.
    let e = err_of(Gguf::from_bytes(bytes[..bytes.len() - 10].to_vec()));
    assert!(e.contains("output_norm.weight") && e.contains("truncated"), "{e}");
    // Cut inside the metadata (in the scores array): names the key being read.
    let key = b"tokenizer.ggml.scores";
    let at = bytes.windows(key.len()).position(|w| w == key).expect("scores key") + key.len() + 30;
    let e = err_of(Gguf::from_bytes(bytes[..at].to_vec()));
    assert!(e.contains("metadata key 'tokenizer.ggml.scores'") && e.contains("truncated"), "{e}");
    // Too short for the counts it declares.
    let e = err_of(Gguf::from_bytes(bytes[..200].to_vec()));
    assert!(e.contains("24 tensors") && e.contains("truncated"), "{e}");
    // Every prefix fails cleanly (no panic, no huge allocation).
    for cut in (0..bytes.len()).step_by(97) {
        assert!(Gguf::from_bytes(bytes[..cut].to_vec()).is_err(), "cut at {cut}");
    }
    // And through the converter, naming the file.
    let dir = tmp("truncated");
    let path = write_file(&dir, &bytes[..bytes.len() - 10]);
    let e = err_of(convert::convert_gguf(&path, &dir.join("out"), DType::F32, 1 << 20, false));
    assert!(e.contains("model.gguf") && e.contains("truncated"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bogus_counts_are_errors_not_allocations() {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(u64::MAX.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes());
    let e = err_of(Gguf::from_bytes(b));
    assert!(e.contains("more than the"), "{e}");
    let mut b = b"GGUF".to_vec();
    b.extend(2u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend((1u64 << 60).to_le_bytes()); // key length
    b.extend([0u8; 16]);
    let e = err_of(Gguf::from_bytes(b));
    assert!(e.contains("metadata key #0") && e.contains("claims"), "{e}");
    let mut b = b"GGUF".to_vec();
    b.extend(1u32.to_le_bytes());
    assert!(err_of(Gguf::from_bytes(b)).contains("version 1"));
}

#[test]
fn an_unreadable_tensor_type_is_named() {
    let (mut ts, _) = tensor_table(7);
    // Q2_K: a real GGML type this importer does not read (84 bytes per 256 values).
    let down = ts.iter_mut().find(|t| t.name == "blk.1.ffn_down.weight").unwrap();
    down.ty = 10;
    down.data = vec![0u8; I * H / 256 * 84];
    let bytes = write_gguf(&gemma2_kvs("gemma2"), &ts);
    let dir = tmp("q2k");
    let path = write_file(&dir, &bytes);
    let out = dir.join("out");
    let e = err_of(convert::convert_gguf(&path, &out, DType::F32, 1 << 20, false));
    assert!(e.contains("blk.1.ffn_down.weight") && e.contains("10 (Q2_K)") && e.contains("cannot read"), "{e}");
    assert!(!out.join("model-00000.bin").exists(), "nothing is written before the check");

    // A type id ggml does not define at all.
    let (mut ts, _) = tensor_table(7);
    ts.iter_mut().find(|t| t.name == "output_norm.weight").unwrap().ty = 99;
    let g = Gguf::from_bytes(write_gguf(&gemma2_kvs("gemma2"), &ts)).expect("parse");
    let e = err_of(g.read_hf_f32("model.norm.weight"));
    assert!(e.contains("output_norm.weight") && e.contains("99 (unknown)"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn other_architectures_and_untied_heads_are_refused() {
    let mut kvs = gemma2_kvs("llama");
    kvs.push(("llama.block_count", V::U32(2)));
    let g = Gguf::from_bytes(write_gguf(&kvs, &[])).expect("parse");
    let e = err_of(g.hf_config_json());
    assert!(e.contains("'llama'") && e.contains("Gemma 2 and Gemma 3"), "{e}");

    let (mut ts, _) = tensor_table(3);
    let (head, _) = matrix(&mut Rng(5), "output.weight", vocab().len(), H, Enc::Q8_0);
    ts.push(head);
    let dir = tmp("untied");
    let path = write_file(&dir, &write_gguf(&gemma2_kvs("gemma2"), &ts));
    let e = err_of(convert::convert_gguf(&path, &dir.join("out"), DType::F32, 1 << 20, false));
    assert!(e.contains("output.weight") && e.contains("untied"), "{e}");

    let mut kvs = gemma2_kvs("gemma2");
    kvs.retain(|(k, _)| *k != "tokenizer.ggml.model");
    kvs.push(("tokenizer.ggml.model", V::Str("gpt2")));
    let e = err_of(Gguf::from_bytes(write_gguf(&kvs, &[])).unwrap().tokenizer_json());
    assert!(e.contains("'gpt2'"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_cli_converts_a_gguf_file() {
    let dir = tmp("cli");
    let (bytes, _) = synthetic_gemma2();
    let path = write_file(&dir, &bytes);
    let out = dir.join("out");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["convert", path.to_str().unwrap(), out.to_str().unwrap(), "--quant", "fp16"])
        .output()
        .expect("run gemma");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let m = Manifest::from_json(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!((m.config.num_hidden_layers, m.tokenizer.as_deref()), (LAYERS as u32, Some("tokenizer.json")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn keeps_every_gguf_type_value_for_value() {
    // Without --quant every matrix keeps its GGUF type (Q4_1 as int4, Q8_0 as int8, the other
    // blocks as types of their own, F16/BF16/F32 as themselves), and every value read back is
    // the one the blocks were packed from, bit for bit.
    let dir = tmp("keep");
    let (bytes, want) = synthetic_gemma2();
    let path = write_file(&dir, &bytes);
    let out = dir.join("out");
    let m = convert::convert_gguf(&path, &out, convert::Quant::KEEP, 64 << 10, false).expect("convert");
    let dtype = |name: &str| DType::from(m.tensor(name).unwrap().dtype);
    let l0 = "model.layers.0.";
    let l1 = "model.layers.1.";
    assert_eq!(dtype(&format!("{l0}self_attn.q_proj.weight")), DType::Int8);
    assert_eq!(dtype(&format!("{l1}self_attn.q_proj.weight")), DType::Int4);
    assert_eq!(dtype(&format!("{l0}self_attn.k_proj.weight")), DType::Q5_0);
    assert_eq!(dtype(&format!("{l1}self_attn.k_proj.weight")), DType::Q5_1);
    assert_eq!(dtype(&format!("{l0}self_attn.v_proj.weight")), DType::Bf16);
    assert_eq!(dtype(&format!("{l0}self_attn.o_proj.weight")), DType::Q6K);
    // Each layer's gate (Q8_0) and up (Q4_0) differ, but int8 holds both exactly: both are
    // stored as int8 so that a load joins them for the fused kernel (q/k/v, Q8_0/Q5_0/BF16 and
    // Q4_1/Q5_1/F32, have no such common type and keep their own).
    for l in [l0, l1] {
        assert_eq!(dtype(&format!("{l}mlp.up_proj.weight")), DType::Int8);
        assert_eq!(dtype(&format!("{l}mlp.gate_proj.weight")), DType::Int8);
    }
    assert_eq!(dtype(&format!("{l0}mlp.down_proj.weight")), DType::Q4K);
    assert_eq!(dtype(&format!("{l1}mlp.down_proj.weight")), DType::Q5K);
    assert_eq!(dtype("model.embed_tokens.weight"), DType::F16);
    for (name, values) in &want {
        let got = stored(&out, &m, name);
        if let Some(i) = (0..values.len()).find(|&i| got[i].to_bits() != values[i].to_bits()) {
            panic!("{name}[{i}]: got {} want {}", got[i], values[i]);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A GGUF file read by ranges, as a browser reads one by URL; records the largest range.
struct FileRanges(Vec<u8>, std::cell::Cell<u64>);

impl convert::stream::RangeSource for FileRanges {
    async fn range(&self, begin: u64, len: u64) -> gemma_webgpu::Result<Vec<u8>> {
        self.1.set(self.1.get().max(len));
        Ok(self.0[begin as usize..(begin + len) as usize].to_vec())
    }
}

/// The header from growing prefixes, then the streamed conversion: (manifest, shards, largest
/// range read).
pub fn stream_convert(bytes: Vec<u8>, shard_bytes: u64) -> (Manifest, Vec<Vec<u8>>, u64) {
    let size = bytes.len() as u64;
    let mut n = 1024;
    let g = loop {
        match Gguf::from_prefix(&bytes[..n.min(bytes.len())], size, "model.gguf").expect("header") {
            Some(g) => break g,
            None => n *= 2,
        }
    };
    let src = FileRanges(bytes, std::cell::Cell::new(0));
    let mut stream = convert::stream::GgufStream::new(&g, shard_bytes).expect("stream");
    let mut shards: Vec<Option<Vec<u8>>> = Vec::new();
    let mut put = |i: usize, b: Vec<u8>| {
        if shards.len() <= i {
            shards.resize(i + 1, None);
        }
        assert!(shards[i].replace(b).is_none(), "shard {i} handed on twice");
    };
    while let Some(done) = pollster::block_on(stream.step(&src)).expect("step") {
        done.into_iter().for_each(|(i, b)| put(i, b));
    }
    let (m, rest) = stream.finish().expect("finish");
    rest.into_iter().for_each(|(i, b)| put(i, b));
    (m, shards.into_iter().map(|s| s.expect("every shard")).collect(), src.1.get())
}

#[test]
fn a_gguf_read_by_ranges_converts_as_the_file_does() {
    let dir = tmp("stream");
    let (bytes, _) = synthetic_gemma2();
    let path = write_file(&dir, &bytes);
    let shard_bytes = 64 << 10;
    let m = convert::convert_gguf(&path, &dir.join("out"), convert::Quant::KEEP, shard_bytes, false).expect("convert");
    let (ms, shards, largest) = stream_convert(bytes, shard_bytes);
    assert_eq!(ms, m, "the streamed manifest");
    assert!(m.shards.len() > 1 && shards.len() == m.shards.len(), "{} shards handed on for {} in the manifest", shards.len(), m.shards.len());
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(s, &std::fs::read(dir.join("out").join(&m.shards[i].file)).unwrap(), "shard {i}");
    }
    assert!(largest <= shard_bytes, "a range of {largest} bytes, more than a shard");
    // A prefix that ends inside the header asks for more; one that is not a GGUF is an error.
    let (bytes, _) = synthetic_gemma2();
    assert!(Gguf::from_prefix(&bytes[..100], bytes.len() as u64, "x").unwrap().is_none());
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert!(err_of(Gguf::from_prefix(&bad[..100], bad.len() as u64, "x")).contains("not a GGUF file"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The files the browser's GGUF-by-URL test (tests/e2e/gguf.test.mjs) serves, written by this
/// native test (the test command runs it first) into target/test-data/e2e-gguf/: the synthetic
/// Gemma 2 GGUF with all eight block types and its native conversion (the page compares the two
/// logit for logit), and two files it must refuse before downloading their weights: another
/// architecture, and a tensor type we do not read.
#[test]
fn writes_the_browser_tests_gguf_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-data/e2e-gguf");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("e2e-gguf dir");
    let (bytes, _) = synthetic_gemma2();
    std::fs::write(dir.join("synthetic-gemma2.gguf"), &bytes).expect("write");
    // The same shard size as the browser's conversion, so the manifests match too.
    let m = convert::convert_gguf(
        &dir.join("synthetic-gemma2.gguf"),
        &dir.join("synthetic-gemma2"),
        convert::Quant::KEEP,
        gemma_webgpu::format::DEFAULT_SHARD_BYTES,
        false,
    )
    .expect("convert");
    assert!(m.tensors.iter().any(|t| DType::from(t.dtype) == DType::Q4K));
    let (ts, _) = tensor_table(42);
    let mut kvs = gemma2_kvs("llama");
    kvs.push(("llama.block_count", V::U32(2)));
    std::fs::write(dir.join("llama.gguf"), write_gguf(&kvs, &ts)).expect("write");
    let (mut ts, _) = tensor_table(42);
    let down = ts.iter_mut().find(|t| t.name == "blk.1.ffn_down.weight").unwrap();
    down.ty = 10;
    down.data = vec![0u8; I * H / 256 * 84];
    std::fs::write(dir.join("q2k.gguf"), write_gguf(&gemma2_kvs("gemma2"), &ts)).expect("write");
}

#[test]
fn a_huge_block_count_or_metadata_array_is_an_error_not_an_allocation() {
    // 4 billion layers: the config builder allocated a per-layer list before any check.
    let mut kvs = gemma2_kvs("gemma2");
    kvs.retain(|(k, _)| *k != "gemma2.block_count");
    kvs.push(("gemma2.block_count", V::U32(4_000_000_000)));
    let e = err_of(Gguf::from_bytes(write_gguf(&kvs, &[])).expect("parse").hf_config_json());
    assert!(e.contains("block_count") && e.contains("1 to 1024"), "{e}");
    // 5 million 4-byte metadata elements: 20 MB in the file, 160 MB as parsed values; the
    // header's elements are capped in all.
    let mut kvs = gemma2_kvs("gemma2");
    kvs.push(("general.junk", V::I32s(vec![0; 5_000_000])));
    let e = err_of(Gguf::from_bytes(write_gguf(&kvs, &[])));
    assert!(e.contains("general.junk") && e.contains("array elements in all"), "{e}");
}

#[test]
fn a_header_read_by_ranges_cannot_ask_for_a_gigabyte_string() {
    // A file read by URL is checked against the whole file's size, so a 1 GiB key length in a
    // 2 GiB file once reached a 1 GiB allocation (found by tests/fuzz.rs at scale 5).
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend((1u64 << 30).to_le_bytes());
    let e = err_of(Gguf::from_prefix(&b, 2 << 30, "x.gguf"));
    assert!(e.contains("longer than any real one"), "{e}");
}
