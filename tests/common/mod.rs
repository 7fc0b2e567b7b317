//! Kernel test cases shared by the native (lavapipe) and browser (SwiftShader) harnesses.
//! Each case runs one kernel on seeded random inputs with awkward sizes and compares it with
//! its CPU twin in `gemma_webgpu::reference`; a failure names the op, case, index, expected
//! and actual values. Each function returns a report with the number of cases checked.

#![allow(dead_code)]

use gemma_webgpu::gpu::weights::GpuWeight;
use gemma_webgpu::gpu::{run_pass, ContextOptions, GpuContext};
use gemma_webgpu::ops::attention::{part_len_per_head, Attention, AttentionShape};
use gemma_webgpu::ops::embedding::Embedding;
use gemma_webgpu::ops::fused::{Fused, QkNormRope, QkvShape};
use gemma_webgpu::ops::geglu::GeGlu;
use gemma_webgpu::ops::kv_cache::{KvCache, KvWrite};
use gemma_webgpu::ops::linear::{MatMul, MatMulPath, MatVec, MATVEC_TEAMS};
use gemma_webgpu::ops::logits::{LogitOps, LogitRules};
use gemma_webgpu::ops::rmsnorm::RmsNorm;
use gemma_webgpu::ops::rope::{Rope, RopeTable};
use gemma_webgpu::ops::sample::{Sampler, Sampling};
use gemma_webgpu::ops::StepParams;
use gemma_webgpu::quant::{blocks, DType, GgmlBlock, Packed};
use gemma_webgpu::reference;

pub type TestResult = Result<Report, String>;

/// What a kernel test checked: cases run and the largest error seen (in the kernel's metric).
#[derive(Debug, Default)]
pub struct Report {
    pub kernel: &'static str,
    pub cases: usize,
    pub max_err: f64,
    /// Measured figures worth printing beside the count (e.g. a test statistic).
    pub notes: Vec<String>,
}

impl Report {
    fn new(kernel: &'static str) -> Self {
        Report { kernel, ..Default::default() }
    }
    fn add(&mut self, err: f64) {
        self.cases += 1;
        self.max_err = self.max_err.max(err);
    }
    fn note(&mut self, note: String) {
        self.notes.push(note);
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} cases passed, max error {:.3e}", self.kernel, self.cases, self.max_err)?;
        if !self.notes.is_empty() {
            write!(f, "; {}", self.notes.join("; "))?;
        }
        Ok(())
    }
}

/// xorshift64*; seeded, portable, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 32) as u32
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
    /// Approximately normal (sum of 4 uniforms), standard deviation `std`.
    pub fn normal(&mut self, std: f32) -> f32 {
        (self.uniform() + self.uniform() + self.uniform() + self.uniform()) * std * 0.866
    }
    pub fn vec(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal(std)).collect()
    }
}

pub async fn context() -> Result<GpuContext, String> {
    GpuContext::new(&ContextOptions::default()).await.map_err(|e| e.to_string())
}

fn e<T>(r: gemma_webgpu::Result<T>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

fn buf(ctx: &GpuContext, data: &[f32]) -> Result<wgpu::Buffer, String> {
    e(ctx.storage_from("test input", bytemuck::cast_slice(data)))
}

fn buf_u32(ctx: &GpuContext, data: &[u32]) -> Result<wgpu::Buffer, String> {
    e(ctx.storage_from("test input", bytemuck::cast_slice(data)))
}

fn zeros(ctx: &GpuContext, n: usize) -> Result<wgpu::Buffer, String> {
    e(ctx.storage_zeroed("test output", n as u64 * 4))
}

async fn read(ctx: &GpuContext, b: &wgpu::Buffer, n: usize) -> Result<Vec<f32>, String> {
    e(ctx.read_back::<f32>(b, 0, n as u64).await)
}

/// Compare element-wise: |got - want| <= atol + rtol * scale[i] (scale defaults to |want|).
/// Returns the largest error normalised by the allowed error's rtol term (`|d| / scale`).
fn compare(op: &str, case: &str, got: &[f32], want: &[f32], scale: Option<&[f64]>, rtol: f64, atol: f64) -> Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!("{op} [{case}]: {} values, expected {}", got.len(), want.len()));
    }
    let mut worst = 0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let s = scale.map(|s| s[i]).unwrap_or((*w as f64).abs());
        let d = (*g as f64 - *w as f64).abs();
        if !g.is_finite() || d > atol + rtol * s {
            return Err(format!("{op} [{case}]: index {i}: expected {w:.7e}, got {g:.7e} (|diff| {d:.3e} > allowed {:.3e})", atol + rtol * s));
        }
        worst = worst.max(d / s.max(atol / rtol.max(1e-30)).max(1e-30));
    }
    Ok(worst)
}

// ---------------------------------------------------------------------------------------------

/// Rows of one block format: (format, rows, cols, the rows' block bytes, ggml's values).
pub type BlockRows = (GgmlBlock, usize, usize, Vec<u8>, Vec<f32>);

/// llama.cpp's blocks as PyPI's `gguf` dequantizes them (tools/make_ggml_blocks_fixture.py:
/// rows of the real 270M's Q5_0, Q8_0, Q4_K and Q6_K tensors, random Q4_0, Q4_1, Q5_1 and Q5_K
/// blocks): (format, rows, cols, the rows' block bytes, ggml's values).
pub fn ggml_fixture() -> Vec<BlockRows> {
    let mut ck = gemma_webgpu::convert::safetensors::Checkpoint::default();
    ck.add_bytes("blocks.safetensors", include_bytes!("../fixtures/ggml-blocks/blocks.safetensors").to_vec()).expect("fixture");
    let types = [
        ("Q4_0", GgmlBlock::Q4_0),
        ("Q4_1", GgmlBlock::Q4_1),
        ("Q5_0", GgmlBlock::Q5_0),
        ("Q5_1", GgmlBlock::Q5_1),
        ("Q8_0", GgmlBlock::Q8_0),
        ("Q4_K", GgmlBlock::Q4K),
        ("Q5_K", GgmlBlock::Q5K),
        ("Q6_K", GgmlBlock::Q6K),
    ];
    types
        .into_iter()
        .map(|(name, block)| {
            let (shape, values) = ck.read_f32(&format!("{name}.values")).expect("values");
            let bytes = ck.read_i32(&format!("{name}.bytes")).expect("bytes").into_iter().map(|b| b as u8).collect();
            (block, shape[0], shape[1], bytes, values)
        })
        .collect()
}

pub async fn embedding(ctx: &GpuContext) -> TestResult {
    let mut rep = Report::new("embedding");
    let mut rng = Rng::new(1);
    // (vocab, hidden, part size in rows (0 = whole), scale)
    // Every case with scale 1 also checks the gather bit for bit: what the kernels decode is
    // exactly the CPU codec's value (for llama.cpp's blocks, ggml's own dequantization).
    let cases: &[(usize, usize, usize, f32)] = &[(1000, 2336, 0, 48.0), (1000, 2336, 350, 3584f32.sqrt()), (517, 96, 100, 1.0), (300, 512, 100, 1.0)];
    // Rows of llama.cpp's blocks gathered with scale 1: ggml's own values (PyPI's gguf), bit
    // for bit.
    for (block, rows, cols, bytes, values) in ggml_fixture() {
        let packed = e(blocks::from_ggml(block, rows, cols, &bytes))?;
        let op = e(Embedding::new(ctx, packed.dtype).await)?;
        let w = e(GpuWeight::upload(ctx, "blocks", &packed, 0))?;
        let ids: Vec<u32> = (0..rows as u32).rev().collect();
        let (ids_b, out) = (buf_u32(ctx, &ids)?, zeros(ctx, rows * cols)?);
        let bound = e(op.bind(ctx, &ids_b, &w, &out))?;
        e(run_pass(ctx, "embedding", |p| bound.dispatch(p, rows as u32, 1.0).expect("shape checked")).await)?;
        let got = read(ctx, &out, rows * cols).await?;
        let want: Vec<f32> = ids.iter().flat_map(|&r| values[r as usize * cols..(r as usize + 1) * cols].to_vec()).collect();
        let case = format!("{block:?} as {} (gguf's dequantization of {rows} rows of {cols})", packed.dtype.name());
        if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
            return Err(format!("embedding {case}: value {i} is {} on the GPU, {} by ggml", got[i], want[i]));
        }
        rep.add(compare("embedding", &case, &got, &want, None, 0.0, 0.0)?);
    }
    for dtype in DType::ALL {
        let op = e(Embedding::new(ctx, dtype).await)?;
        for &(v, h, part_rows, scale) in cases {
            if h % dtype.group_cols() != 0 {
                continue;
            }
            let table = e(Packed::pack(dtype, v, h, &rng.vec(v * h, 0.05)))?;
            let part_bytes = if part_rows == 0 { 0 } else { table.rows_slice(0, part_rows).bytes() };
            let w = e(GpuWeight::upload(ctx, "table", &table, part_bytes))?;
            if part_rows != 0 && w.parts.len() < 2 {
                return Err(format!("embedding: expected a split table, got {} part(s)", w.parts.len()));
            }
            let mut ids: Vec<u32> = (0..37).map(|_| rng.next_u32() % v as u32).collect();
            ids[0] = 0;
            ids[1] = v as u32 - 1;
            ids[2] = part_rows.max(1) as u32; // first row of the second part
            let (ids_b, out) = (buf_u32(ctx, &ids)?, zeros(ctx, ids.len() * h)?);
            let bound = e(op.bind(ctx, &ids_b, &w, &out))?;
            e(run_pass(ctx, "embedding", |p| bound.dispatch(p, ids.len() as u32, scale).expect("shape checked")).await)?;
            let got = read(ctx, &out, ids.len() * h).await?;
            let want = reference::embedding(&table.unpack(), h, &ids, scale);
            let case = format!("{} V={v} H={h} parts={}", dtype.name(), w.parts.len());
            rep.add(compare("embedding", &case, &got, &want, None, 1e-6, 1e-12)?);
            if scale == 1.0 {
                if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
                    return Err(format!("embedding {case}: value {i} is {} on the GPU, {} by the CPU codec (not bit for bit)", got[i], want[i]));
                }
            }
            if part_rows == 0 {
                continue;
            }
            // Parts regrouped two by two (as a load joins shard-sized parts up to the binding
            // limit): the gather, and the tied LM head's matrix-vector product, read the same.
            let parts = w.parts.len();
            let two = table.rows_slice(0, 2 * part_rows).bytes();
            // Parts join only if each plane ends on a word: int8's, q4_0's and q5_0's fp16
            // scales need an even number of groups, which some parts of these uploads (349 rows
            // of 73 groups) do not have. Those stay as they are, and must read the same.
            let aligned = |rows: u32| dtype.planes().iter().all(|&b| (rows as usize * h / 32 * b as usize).is_multiple_of(32));
            // The runs regroup forms: consecutive parts while they fit the limit together.
            let mut runs: Vec<(Vec<u32>, u64)> = Vec::new();
            for p in &w.parts {
                let bytes = 4 * dtype.words(p.rows as usize, h) as u64;
                match runs.last_mut() {
                    Some((run, total)) if *total + bytes <= two => {
                        run.push(p.rows);
                        *total += bytes;
                    }
                    _ => runs.push((vec![p.rows], bytes)),
                }
            }
            let expected: usize = runs.iter().map(|(run, _)| if run.iter().all(|r| aligned(*r)) { 1 } else { run.len() }).sum();
            let w = e(w.regroup_within(ctx, "table", two))?;
            if w.parts.len() != expected {
                return Err(format!("embedding: {parts} parts regrouped by two into {} (expected {expected})", w.parts.len()));
            }
            let bound = e(op.bind(ctx, &ids_b, &w, &out))?;
            e(run_pass(ctx, "embedding", |p| bound.dispatch(p, ids.len() as u32, scale).expect("shape checked")).await)?;
            let case = format!("{} V={v} H={h} regrouped {parts} -> {} parts", dtype.name(), w.parts.len());
            rep.add(compare("embedding", &case, &read(ctx, &out, ids.len() * h).await?, &want, None, 1e-6, 1e-12)?);
            let x = rng.vec(h, 1.0);
            let (xb, yb) = (buf(ctx, &x)?, zeros(ctx, v)?);
            let head = e(e(MatVec::new(ctx, dtype).await)?.bind(ctx, &xb, &w, &yb))?;
            e(run_pass(ctx, "matvec", |p| head.dispatch(p).expect("shape checked")).await)?;
            let wf = table.unpack();
            let want = reference::linear(&x, &wf, h, v);
            rep.add(compare("embedding as LM head", &case, &read(ctx, &yb, v).await?, &want, Some(&abs_products(&x, &wf, h, v)), 2e-6, 1e-9)?);
        }
    }
    Ok(rep)
}

pub async fn rmsnorm(ctx: &GpuContext) -> TestResult {
    let mut rep = Report::new("rmsnorm");
    let mut rng = Rng::new(2);
    let op = e(RmsNorm::new(ctx).await)?;
    for &(rows, cols) in &[(37usize, 2304usize), (5, 1000), (1, 3)] {
        for add in [false, true] {
            let x: Vec<f32> = (0..rows * cols).map(|i| rng.normal(if i % 7 == 0 { 40.0 } else { 2.0 })).collect();
            let w = rng.vec(cols, 0.5);
            let residual = rng.vec(rows * cols, 5.0);
            let (xb, wb) = (buf(ctx, &x)?, buf(ctx, &w)?);
            let out = if add { buf(ctx, &residual)? } else { zeros(ctx, rows * cols)? };
            let bound = op.bind(ctx, &xb, &wb, &out, add);
            e(run_pass(ctx, "rmsnorm", |p| bound.dispatch(p, rows as u32, cols as u32, 1e-6).expect("shape checked")).await)?;
            let got = read(ctx, &out, rows * cols).await?;
            let mut want = reference::rmsnorm(&x, &w, 1e-6);
            let mut scale: Vec<f64> = want.iter().map(|v| v.abs() as f64).collect();
            if add {
                for ((wv, r), s) in want.iter_mut().zip(&residual).zip(scale.iter_mut()) {
                    *s += r.abs() as f64;
                    *wv += r;
                }
            }
            rep.add(compare("rmsnorm", &format!("{rows}x{cols} add={add}"), &got, &want, Some(&scale), 1e-5, 1e-6)?);
        }
        // The fused end of a sub-block: x += norm(o, wa); h = norm(x, wb).
        let o: Vec<f32> = (0..rows * cols).map(|i| rng.normal(if i % 5 == 0 { 30.0 } else { 3.0 })).collect();
        let x = rng.vec(rows * cols, 5.0);
        let (wa, wb) = (rng.vec(cols, 0.5), rng.vec(cols, 0.5));
        let (ob, xb, wab, wbb, hb) = (buf(ctx, &o)?, buf(ctx, &x)?, buf(ctx, &wa)?, buf(ctx, &wb)?, zeros(ctx, rows * cols)?);
        let bound = op.bind_add_norm(ctx, &ob, &wab, &xb, &wbb, &hb);
        e(run_pass(ctx, "add_rmsnorm", |p| bound.dispatch(p, rows as u32, cols as u32, 1e-6).expect("shape checked")).await)?;
        let (got_x, got_h) = (read(ctx, &xb, rows * cols).await?, read(ctx, &hb, rows * cols).await?);
        let normed = reference::rmsnorm(&o, &wa, 1e-6);
        let want_x: Vec<f32> = x.iter().zip(&normed).map(|(a, b)| a + b).collect();
        let scale_x: Vec<f64> = x.iter().zip(&normed).map(|(a, b)| (a.abs() + b.abs()) as f64).collect();
        rep.add(compare("add_rmsnorm x", &format!("{rows}x{cols}"), &got_x, &want_x, Some(&scale_x), 1e-5, 1e-6)?);
        // h from the x the CPU computed: an error in x shows above, not twice.
        let want_h = reference::rmsnorm(&want_x, &wb, 1e-6);
        rep.add(compare("add_rmsnorm h", &format!("{rows}x{cols}"), &got_h, &want_h, None, 1e-5, 1e-6)?);
    }
    Ok(rep)
}

pub async fn rope(ctx: &GpuContext) -> TestResult {
    let mut rep = Report::new("rope");
    let mut rng = Rng::new(3);
    let op = e(Rope::new(ctx).await)?;
    // (T, heads, D, first position, theta, linear factor): factor 8 with base 10^6 is Gemma 3's
    // global layers in the 4B and larger models.
    let cases = [
        (37usize, 8usize, 256usize, 0usize, 10_000.0f32, 1.0f32),
        (37, 4, 256, 8150, 10_000.0, 1.0),
        (3, 3, 128, 100, 10_000.0, 1.0),
        (1, 1, 2, 5, 10_000.0, 1.0),
        (37, 4, 256, 8150, 1_000_000.0, 8.0),
        (5, 2, 128, 3, 10_000.0, 8.0),
    ];
    for (t, heads, d, pos_start, theta, factor) in cases {
        let table = e(RopeTable::scaled(ctx, d as u32, theta, factor, 8192))?;
        let x = rng.vec(t * heads * d, 1.0);
        let xb = buf(ctx, &x)?;
        let bound = op.bind(ctx, &xb, &table);
        e(run_pass(ctx, "rope", |p| bound.dispatch(p, t as u32, heads as u32, pos_start as u32).expect("shape checked")).await)?;
        let got = read(ctx, &xb, x.len()).await?;
        let want = reference::rope_scaled(&x, heads, d, theta, factor, pos_start);
        // Error relative to the pair's magnitude (a rotation preserves it).
        let half = d / 2;
        let pair = |i: usize| {
            let (h0, j) = (i - i % d, (i % d) % half);
            ((x[h0 + j] as f64).powi(2) + (x[h0 + j + half] as f64).powi(2)).sqrt()
        };
        let scale: Vec<f64> = (0..x.len()).map(pair).collect();
        let case = format!("T={t} heads={heads} D={d} pos={pos_start} theta={theta} factor={factor}");
        rep.add(compare("rope", &case, &got, &want, Some(&scale), 1e-5, 1e-7)?);
        if factor != 1.0 {
            // The scaled table against a rule written here in f64 (the launcher and the CPU
            // twin share `inv_freq / factor`): angle = pos / (factor * theta^(2j / D)).
            // Hugging Face rounds the angle to f32, about 4 ulp of it over the steps, so the
            // allowance grows with the angle: 1e-5 + 5e-7 * angle, times the pair's size.
            let mut exact = x.clone();
            let mut angle_scale = scale.clone();
            for (r, row) in exact.chunks_mut(heads * d).enumerate() {
                let pos = (pos_start + r) as f64;
                for (h, head) in row.chunks_mut(d).enumerate() {
                    for j in 0..half {
                        let a = pos / (factor as f64 * (theta as f64).powf((2 * j) as f64 / d as f64));
                        let (s, c) = a.sin_cos();
                        let (x1, x2) = (head[j] as f64, head[j + half] as f64);
                        head[j] = (x1 * c - x2 * s) as f32;
                        head[j + half] = (x2 * c + x1 * s) as f32;
                        for i in [j, j + half] {
                            angle_scale[r * heads * d + h * d + i] *= 1.0 + 0.05 * a;
                        }
                    }
                }
            }
            compare("rope (f64 rule)", &case, &got, &exact, Some(&angle_scale), 1e-5, 1e-7)?;
            // And the factor reached the kernel: unscaled angles are far from these.
            let unscaled = reference::rope(&x, heads, d, theta, pos_start);
            let moved = got.iter().zip(&unscaled).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            if moved < 0.1 {
                return Err(format!("rope [{case}]: the output is within {moved} of the unscaled rotation"));
            }
        }
    }
    Ok(rep)
}

/// Scale for a product's error: sum_k |x_k w_nk| per output.
fn abs_products(x: &[f32], w: &[f32], k: usize, n: usize) -> Vec<f64> {
    let ax: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let aw: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    reference::linear(&ax, &aw, k, n).iter().map(|v| *v as f64).collect()
}

const LINEAR_SHAPES: &[(usize, usize, usize, usize)] = &[
    // (rows of x, K, N, rows per weight part (0 = one part))
    (37, 2336, 1000, 0),
    (37, 2336, 1000, 384),
    (1, 64, 3, 0),
    (65, 96, 130, 0),
    (70, 256, 67, 0),
    // K not a multiple of 32 (float types only): the element-wise paths.
    (6, 100, 19, 0),
    // Few rows: tiles mostly past the end of x.
    (17, 2336, 1000, 0),
    (32, 256, 67, 40),
    // Gemma 2's hidden size: whole k-quant super-blocks and teams of 16.
    (9, 2304, 67, 0),
];

pub async fn matmul(ctx: &GpuContext) -> TestResult {
    linear_cases(ctx, false).await
}

pub async fn matvec(ctx: &GpuContext) -> TestResult {
    let mut rep = linear_cases(ctx, true).await?;
    // A vocabulary-sized output: more workgroups than one grid dimension holds (teams of 64
    // lanes, 4 rows per workgroup; K = 32 alone would pick teams of 4).
    let mut rng = Rng::new(5);
    let (k, n) = (32usize, 270_000usize);
    let op = e(MatVec::new(ctx, DType::Int4).await)?;
    let w = e(Packed::pack(DType::Int4, n, k, &rng.vec(n * k, 0.1)))?;
    let x = rng.vec(k, 1.0);
    let (wg, xb, yb) = (e(GpuWeight::upload(ctx, "w", &w, 0))?, buf(ctx, &x)?, zeros(ctx, n)?);
    let bound = e(op.bind_team(ctx, &xb, &wg, &yb, 64))?;
    e(run_pass(ctx, "matvec", |p| bound.dispatch(p).expect("shape checked")).await)?;
    let got = read(ctx, &yb, n).await?;
    let wf = w.unpack();
    let want = reference::linear(&x, &wf, k, n);
    rep.add(compare("matvec", "int4 K=32 N=270000 (folded grid)", &got, &want, Some(&abs_products(&x, &wf, k, n)), 2e-6, 1e-9)?);
    Ok(rep)
}

async fn linear_cases(ctx: &GpuContext, decode: bool) -> TestResult {
    let name = if decode { "matvec" } else { "matmul" };
    let mut rep = Report::new(name);
    let mut rng = Rng::new(4);
    for dtype in DType::ALL {
        let (mm, mv) = if decode { (None, Some(e(MatVec::new(ctx, dtype).await)?)) } else { (Some(e(MatMul::new(ctx, dtype).await)?), None) };
        for &(m, k, n, part_rows) in LINEAR_SHAPES {
            if k % dtype.group_cols() != 0 {
                continue;
            }
            let m = if decode { 1 } else { m };
            let w = e(Packed::pack(dtype, n, k, &rng.vec(n * k, 0.05)))?;
            let part_bytes = if part_rows == 0 { 0 } else { w.rows_slice(0, part_rows).bytes() };
            let wg = e(GpuWeight::upload(ctx, "w", &w, part_bytes))?;
            let x = rng.vec(m * k, 1.0);
            let (xb, yb) = (buf(ctx, &x)?, zeros(ctx, m * n)?);
            let wf = w.unpack();
            let want = reference::linear(&x, &wf, k, n);
            let bounds = abs_products(&x, &wf, k, n);
            let case = format!("{} M={m} K={k} N={n} parts={}", dtype.name(), wg.parts.len());
            if let Some(op) = &mm {
                // Both kernels on every shape: tiles, and the matrix-vector kernel in blocks
                // of rows (what short prompts take).
                let bound = e(op.bind(ctx, &xb, &wg, &yb))?;
                for path in [MatMulPath::Tiles, MatMulPath::MatVec] {
                    ctx.queue.write_buffer(&yb, 0, bytemuck::cast_slice(&vec![f32::NAN; m * n]));
                    e(run_pass(ctx, name, |p| bound.dispatch_with(p, m as u32, path).expect("shape checked")).await)?;
                    let got = read(ctx, &yb, m * n).await?;
                    rep.add(compare(name, &format!("{case} {path:?}"), &got, &want, Some(&bounds), 2e-6, 1e-9)?);
                }
            } else if let Some(op) = &mv {
                // Every team size on every shape, not only the one the launcher picks for K.
                for team in MATVEC_TEAMS {
                    ctx.queue.write_buffer(&yb, 0, bytemuck::cast_slice(&vec![f32::NAN; n]));
                    let bound = e(op.bind_team(ctx, &xb, &wg, &yb, team))?;
                    e(run_pass(ctx, name, |p| bound.dispatch(p).expect("shape checked")).await)?;
                    let got = read(ctx, &yb, m * n).await?;
                    rep.add(compare(name, &format!("{case} lanes={team}"), &got, &want, Some(&bounds), 2e-6, 1e-9)?);
                }
            }
        }
    }
    Ok(rep)
}

pub async fn geglu(ctx: &GpuContext) -> TestResult {
    let mut rep = Report::new("geglu");
    let mut rng = Rng::new(6);
    let op = e(GeGlu::new(ctx).await)?;
    for &n in &[37 * 1000usize, 5] {
        let mut gate = rng.vec(n, 4.0);
        let up = rng.vec(n, 2.0);
        // Large gates would make an unclamped tanh NaN on some drivers.
        for (i, v) in [100.0f32, -100.0, 1e4, -1e4, 88.0, -88.0, 0.0].iter().enumerate() {
            if i < n {
                gate[i] = *v;
            }
        }
        let (gb, ub, ob) = (buf(ctx, &gate)?, buf(ctx, &up)?, zeros(ctx, n)?);
        let bound = op.bind(ctx, &gb, &ub, &ob);
        e(run_pass(ctx, "geglu", |p| bound.dispatch(p, n as u32).expect("shape checked")).await)?;
        let got = read(ctx, &ob, n).await?;
        let want = reference::geglu(&gate, &up);
        let scale: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| (g.abs() * u.abs()) as f64).collect();
        rep.add(compare("geglu", &format!("n={n}"), &got, &want, Some(&scale), 1e-5, 1e-7)?);
    }
    Ok(rep)
}

/// The final soft-cap, applied by the LM head's matrix-vector and matmul kernels as they write
/// each logit (`with_softcap`), against `reference::softcap` of `reference::linear`: outputs up
/// to ~±200 so the cap bends them, and a cap of 0 leaves them alone.
pub async fn softcap(ctx: &GpuContext) -> TestResult {
    let mut rep = Report::new("softcap");
    let mut rng = Rng::new(7);
    let (k, n, m) = (64usize, 10_000usize, 5usize);
    let w = e(Packed::pack(DType::Int8, n, k, &rng.vec(n * k, 1.0)))?;
    let wf = w.unpack();
    let wg = e(GpuWeight::upload(ctx, "w", &w, 0))?;
    let x = rng.vec(m * k, 4.0);
    let plain = reference::linear(&x, &wf, k, n);
    let top = plain.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    if top < 90.0 {
        return Err(format!("softcap: outputs reach only {top}; the cap of 30 would barely bend them"));
    }
    let (xb, yb) = (buf(ctx, &x)?, zeros(ctx, m * n)?);
    let matvec = e(MatVec::new(ctx, DType::Int8).await)?;
    let matmul = e(MatMul::new(ctx, DType::Int8).await)?;
    for cap in [30.0f32, 50.0, 0.0] {
        let want: Vec<f32> = plain.iter().map(|v| if cap > 0.0 { reference::softcap(*v, cap) } else { *v }).collect();
        let scale: Vec<f64> = abs_products(&x, &wf, k, n).iter().map(|s| s.max(cap as f64)).collect();
        // One row through the matrix-vector kernel (decode's LM head).
        let bound = e(e(matvec.bind(ctx, &xb, &wg, &yb))?.with_softcap(cap))?;
        ctx.queue.write_buffer(&yb, 0, bytemuck::cast_slice(&vec![f32::NAN; m * n]));
        e(run_pass(ctx, "softcap", |p| bound.dispatch(p).expect("shape checked")).await)?;
        let got = read(ctx, &yb, n).await?;
        rep.add(compare("softcap", &format!("matvec cap={cap}"), &got, &want[..n], Some(&scale[..n]), 2e-6, 1e-9)?);
        // Several rows through both prefill paths (`logits()`'s head).
        let bound = e(e(matmul.bind(ctx, &xb, &wg, &yb))?.with_softcap(cap))?;
        for path in [MatMulPath::Tiles, MatMulPath::MatVec] {
            ctx.queue.write_buffer(&yb, 0, bytemuck::cast_slice(&vec![f32::NAN; m * n]));
            e(run_pass(ctx, "softcap", |p| bound.dispatch_with(p, m as u32, path).expect("shape checked")).await)?;
            let got = read(ctx, &yb, m * n).await?;
            rep.add(compare("softcap", &format!("matmul {path:?} cap={cap}"), &got, &want, Some(&scale), 2e-6, 1e-9)?);
        }
    }
    let bound = e(matvec.bind(ctx, &xb, &wg, &yb))?;
    if bound.with_softcap(f32::NAN).is_ok() {
        return Err("softcap: a NaN cap was accepted".into());
    }
    Ok(rep)
}

/// Round through fp16, as the cache stores K and V.
fn f16_round(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect()
}

pub async fn kv_cache(ctx: &GpuContext) -> TestResult {
    let mut rep = Report::new("kv_cache");
    let mut rng = Rng::new(8);
    let op = e(KvWrite::for_cache(ctx, false).await)?;
    // (rows written per call, calls, width, capacity): the second wraps a ring twice.
    for &(t, calls, width, capacity) in &[(37usize, 1usize, 1024usize, 64usize), (7, 20, 256, 24)] {
        let cache = e(KvCache::new(ctx, "cache", capacity as u32, width as u32))?;
        let mut all_k = Vec::new();
        let mut all_v = Vec::new();
        for c in 0..calls {
            let (k, v) = (rng.vec(t * width, 3.0), rng.vec(t * width, 3.0));
            let (kb, vb) = (buf(ctx, &k)?, buf(ctx, &v)?);
            let bound = e(op.bind(ctx, &kb, &vb, &cache))?;
            e(run_pass(ctx, "kv_write", |p| bound.dispatch(p, t as u32, (c * t) as u32).expect("shape checked")).await)?;
            all_k.extend(k);
            all_v.extend(v);
        }
        let total = t * calls;
        for (name, all, gpu) in [("k", &all_k, &cache.k), ("v", &all_v, &cache.v)] {
            let words = e(ctx.read_back::<u32>(gpu, 0, (capacity * width / 2) as u64).await)?;
            // Slot s holds the newest position p with p % capacity == s.
            for s in 0..capacity.min(total) {
                let pos = (0..total).rev().find(|p| p % capacity == s).unwrap_or(s);
                for c in 0..width {
                    let want = half::f16::from_f32(all[pos * width + c]).to_bits();
                    let got = (words[s * width / 2 + c / 2] >> ((c % 2) * 16)) as u16;
                    if got != want {
                        return Err(format!(
                            "kv_cache [{name} T={t} x{calls} cap={capacity}]: slot {s} (position {pos}) column {c}: expected fp16 bits {want:#06x}, got {got:#06x}"
                        ));
                    }
                }
            }
        }
        rep.add(0.0);
    }
    Ok(rep)
}

struct AttnCase {
    name: &'static str,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    window: usize,
    query_pre_attn_scalar: f32,
    softcap: f32,
    /// Positions processed, and how many per call (prefill blocks; 1 = decode).
    positions: usize,
    block: usize,
    /// Cache slots (a ring when < positions).
    capacity: usize,
    qk_std: f32,
}

#[rustfmt::skip] // a table: one case per line
const ATTN_CASES: &[AttnCase] = &[
    // Gemma 2 2B-like: GQA 2, D 256, window shorter than the sequence, soft-cap 50 engaged.
    AttnCase { name: "prefill gqa2 D256 W16", n_heads: 8, n_kv_heads: 4, head_dim: 256, window: 16, query_pre_attn_scalar: 256.0, softcap: 50.0, positions: 37, block: 37, capacity: 64, qk_std: 4.0 },
    AttnCase { name: "prefill gqa2 D256 global", n_heads: 8, n_kv_heads: 4, head_dim: 256, window: 0, query_pre_attn_scalar: 256.0, softcap: 50.0, positions: 37, block: 37, capacity: 64, qk_std: 4.0 },
    AttnCase { name: "prefill gqa1 D64 global no-cap", n_heads: 4, n_kv_heads: 4, head_dim: 64, window: 0, query_pre_attn_scalar: 64.0, softcap: 0.0, positions: 37, block: 37, capacity: 37, qk_std: 1.0 },
    // Gemma 3 270M-like: 4 query heads on one KV head (a prefill workgroup holds 2 queries).
    AttnCase { name: "prefill gqa4 D256 W16", n_heads: 4, n_kv_heads: 1, head_dim: 256, window: 16, query_pre_attn_scalar: 256.0, softcap: 0.0, positions: 37, block: 37, capacity: 64, qk_std: 2.0 },
    // 27B-like scaling (query_pre_attn_scalar 144 != head_dim 128), GQA 3.
    AttnCase { name: "prefill gqa3 D128 W8 q144", n_heads: 6, n_kv_heads: 2, head_dim: 128, window: 8, query_pre_attn_scalar: 144.0, softcap: 50.0, positions: 37, block: 37, capacity: 64, qk_std: 4.5 },
    // Chunked prefill then decode through a ring of window + block - 1 slots.
    AttnCase { name: "ring gqa2 D256 W16 blocks of 5", n_heads: 4, n_kv_heads: 2, head_dim: 256, window: 16, query_pre_attn_scalar: 256.0, softcap: 50.0, positions: 70, block: 5, capacity: 20, qk_std: 4.0 },
    AttnCase { name: "decode gqa3 D128 W8 ring", n_heads: 3, n_kv_heads: 1, head_dim: 128, window: 8, query_pre_attn_scalar: 144.0, softcap: 50.0, positions: 40, block: 1, capacity: 8, qk_std: 4.5 },
    AttnCase { name: "decode gqa2 D256 global", n_heads: 8, n_kv_heads: 4, head_dim: 256, window: 0, query_pre_attn_scalar: 256.0, softcap: 50.0, positions: 45, block: 1, capacity: 45, qk_std: 4.0 },
    // Decode past one tile of keys through a ring: the split kernel's splits wrap the ring.
    AttnCase { name: "decode gqa2 D64 W100 ring", n_heads: 4, n_kv_heads: 2, head_dim: 64, window: 100, query_pre_attn_scalar: 64.0, softcap: 50.0, positions: 140, block: 1, capacity: 100, qk_std: 2.0 },
    // GQA 1, no cap; and 5 query heads on one KV head, more than the split kernel serves: the
    // one-workgroup-per-head kernel decodes it.
    AttnCase { name: "decode gqa1 D64 global no-cap", n_heads: 2, n_kv_heads: 2, head_dim: 64, window: 0, query_pre_attn_scalar: 64.0, softcap: 0.0, positions: 70, block: 1, capacity: 70, qk_std: 1.0 },
    AttnCase { name: "decode gqa5 D64 global", n_heads: 5, n_kv_heads: 1, head_dim: 64, window: 0, query_pre_attn_scalar: 64.0, softcap: 50.0, positions: 20, block: 1, capacity: 20, qk_std: 2.0 },
];

pub async fn attention(ctx: &GpuContext) -> TestResult {
    let mut rep = Report::new("attention");
    let mut rng = Rng::new(9);
    let (attn, kvw) = (e(Attention::for_cache(ctx, false).await)?, e(KvWrite::for_cache(ctx, false).await)?);
    let step = step_uniform(ctx);
    let mut max_pre_cap = 0f32;
    // Prefill blocks take attention_prefill.wgsl; each case runs again through the
    // one-workgroup-per-(head, query) kernel (`--attention blocked`), which decode still uses.
    let cases = ATTN_CASES.iter().flat_map(|c| if c.block > 1 { vec![(c, true), (c, false)] } else { vec![(c, true)] });
    for (c, tiled) in cases {
        let (qw, kw) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let q = rng.vec(c.positions * qw, c.qk_std);
        let k = f16_round(&rng.vec(c.positions * kw, c.qk_std));
        let v = f16_round(&rng.vec(c.positions * kw, 1.0));
        let scale = c.query_pre_attn_scalar.powf(-0.5);
        let cache = e(KvCache::new(ctx, "cache", c.capacity as u32, kw as u32))?;
        let part = zeros(ctx, c.n_heads * part_len_per_head(c.head_dim as u32) as usize)?;
        let mut got = Vec::with_capacity(q.len());
        let mut start = 0;
        while start < c.positions {
            let t = c.block.min(c.positions - start);
            let (kb, vb) = (buf(ctx, &k[start * kw..(start + t) * kw])?, buf(ctx, &v[start * kw..(start + t) * kw])?);
            let (qb, ob) = (buf(ctx, &q[start * qw..(start + t) * qw])?, zeros(ctx, t * qw)?);
            let kv_bound = e(kvw.bind(ctx, &kb, &vb, &cache))?;
            let mut bound = e(attn.bind(ctx, &qb, &cache, &ob, &part, &step))?;
            bound.tiled_prefill = tiled;
            set_step(ctx, &step, start, t);
            let shape = AttentionShape {
                n_queries: t as u32,
                q_pos_start: start as u32,
                n_heads: c.n_heads as u32,
                n_kv_heads: c.n_kv_heads as u32,
                head_dim: c.head_dim as u32,
                window: c.window as u32,
                scale,
                softcap: c.softcap,
            };
            let mut failed = None;
            e(run_pass(ctx, "attention", |p| {
                if let Err(err) = kv_bound.dispatch(p, t as u32, start as u32).and_then(|_| bound.dispatch(p, &shape)) {
                    failed = Some(err.to_string());
                }
            })
            .await)?;
            if let Some(err) = failed {
                return Err(format!("attention [{}]: {err}", c.name));
            }
            got.extend(read(ctx, &ob, t * qw).await?);
            start += t;
        }
        let want = reference::attention(&q, &k, &v, c.n_heads, c.n_kv_heads, c.head_dim, 0, c.window, scale, c.softcap);
        for (i, row) in q.chunks(c.head_dim).enumerate() {
            let t = i / c.n_heads;
            let g = (i % c.n_heads) / (c.n_heads / c.n_kv_heads);
            for j in 0..=t {
                let kr = &k[j * kw + g * c.head_dim..][..c.head_dim];
                max_pre_cap = max_pre_cap.max(row.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>().abs() * scale);
            }
        }
        let vmax = v.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        let name = if tiled { c.name.to_string() } else { format!("{} (blocked kernel)", c.name) };
        rep.add(compare("attention", &name, &got, &want, Some(&vec![vmax; want.len()]), 2e-5, 0.0)?);
    }
    // One decode query at the end of an 8192-token context (global, and a 4096 window): long
    // key loops are where llvmpipe's per-invocation loop budget would cut a kernel short, and
    // the split kernel takes its most splits (64 of 128 keys, 64 of 64). Four query heads on
    // one KV head (Gemma 3 270M's grouping, the split kernel's largest), then 2B's 8 on 4.
    for (n_heads, n_kv_heads) in [(4usize, 1usize), (8, 4)] {
        let (head_dim, ctx_len) = (256usize, 8192usize);
        let kw = n_kv_heads * head_dim;
        let k = f16_round(&rng.vec(ctx_len * kw, 1.0));
        let v = f16_round(&rng.vec(ctx_len * kw, 1.0));
        let q = rng.vec(n_heads * head_dim, 1.0);
        let cache = e(KvCache::new(ctx, "cache", ctx_len as u32, kw as u32))?;
        let part = zeros(ctx, n_heads * part_len_per_head(head_dim as u32) as usize)?;
        let (kb, vb, qb, ob) = (buf(ctx, &k)?, buf(ctx, &v)?, buf(ctx, &q)?, zeros(ctx, q.len())?);
        let kv_bound = e(kvw.bind(ctx, &kb, &vb, &cache))?;
        e(run_pass(ctx, "kv_write", |p| kv_bound.dispatch(p, ctx_len as u32, 0).expect("shape checked")).await)?;
        let vmax = v.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        for window in [0usize, 4096] {
            let bound = e(attn.bind(ctx, &qb, &cache, &ob, &part, &step))?;
            set_step(ctx, &step, ctx_len - 1, 1);
            let shape = AttentionShape {
                n_queries: 1,
                q_pos_start: (ctx_len - 1) as u32,
                n_heads: n_heads as u32,
                n_kv_heads: n_kv_heads as u32,
                head_dim: head_dim as u32,
                window: window as u32,
                scale: 1.0 / 16.0,
                softcap: 50.0,
            };
            e(run_pass(ctx, "attention", |p| bound.dispatch(p, &shape).expect("shape checked")).await)?;
            let got = read(ctx, &ob, q.len()).await?;
            let want = reference::attention(&q, &k, &v, n_heads, n_kv_heads, head_dim, ctx_len - 1, window, 1.0 / 16.0, 50.0);
            let case = format!("decode at position 8191, window {window}, {n_heads} heads on {n_kv_heads}");
            rep.add(compare("attention", &case, &got, &want, Some(&vec![vmax; want.len()]), 2e-5, 0.0)?);
            // A prefill block of 13 queries ending there (the prefill kernel's longest walk:
            // 512 tiles of keys; 13 x heads rows leave the last workgroup part-filled).
            let n_q = 13usize;
            let qs = rng.vec(n_q * n_heads * head_dim, 1.0);
            let (qsb, osb) = (buf(ctx, &qs)?, zeros(ctx, qs.len())?);
            let bound = e(attn.bind(ctx, &qsb, &cache, &osb, &part, &step))?;
            let shape = AttentionShape { n_queries: n_q as u32, q_pos_start: (ctx_len - n_q) as u32, ..shape };
            e(run_pass(ctx, "attention", |p| bound.dispatch(p, &shape).expect("shape checked")).await)?;
            let got = read(ctx, &osb, qs.len()).await?;
            let want = reference::attention(&qs, &k, &v, n_heads, n_kv_heads, head_dim, ctx_len - n_q, window, 1.0 / 16.0, 50.0);
            let case = format!("prefill of {n_q} at positions {}..8191, window {window}, {n_heads} heads on {n_kv_heads}", ctx_len - n_q);
            rep.add(compare("attention", &case, &got, &want, Some(&vec![vmax; want.len()]), 2e-5, 0.0)?);
        }
    }
    if max_pre_cap < 50.0 {
        return Err(format!("attention: the soft-cap never engaged (max |pre-cap score| {max_pre_cap}); raise qk_std"));
    }
    Ok(rep)
}

pub async fn sample(ctx: &GpuContext) -> TestResult {
    let mut rep = Report::new("sample");
    let mut rng = Rng::new(10);
    let op = e(Sampler::new(ctx).await)?;
    let out = zeros(ctx, 1)?;
    let mut mismatched_borderline = 0;
    let mut cases = Vec::new();
    for &n in &[1000usize, 256_000] {
        let mut logits = rng.vec(n, 3.0);
        // Ties at the maximum: greedy must return the lowest id.
        let top = logits.iter().fold(f32::MIN, |m, x| m.max(*x)) + 1.0;
        logits[n / 2] = top;
        logits[n - 3] = top;
        logits[n / 3 + 1] = top;
        cases.push(logits);
    }
    // Ties at the top-k boundary (the first kernel keeps at most SAMPLE_LOCAL = 128 per chunk
    // of 4096 logits, the second compacts at most 1024):
    // - 29 distinct large values above 200 ids that share the 30th largest: top-k keeps all
    //   the ties, about 47 per chunk, few enough for both kernels;
    // - 3000 ids sharing the largest, about 600 per chunk: the chunks overflow and the second
    //   kernel reads the logits itself;
    // - 5000 ids sharing the largest over 63 chunks, about 80 per chunk: every chunk keeps its
    //   ties, but 5000 are too many to compact, so the passes go over all the candidates.
    for (n, above, tied) in [(20_000usize, 29usize, 200usize), (20_000, 0, 3000), (256_000, 0, 5000)] {
        let mut logits: Vec<f32> = rng.vec(n, 1.0).into_iter().map(|l| l.min(2.5)).collect();
        for j in 0..tied {
            logits[j * (n / tied)] = 3.0;
        }
        for j in 0..above {
            logits[j * (n / above) + 1] = 5.0 + j as f32 * 0.01;
        }
        cases.push(logits);
    }
    // 400 distinct high logits packed into the first 25 threads' ranges of a chunk (16 ids
    // each): the threads' maxima put too many ids above the first kernel's quick threshold, so
    // it selects the chunk's exact k-th largest by radix.
    let mut packed = rng.vec(8192, 1.0);
    for l in packed.iter_mut().take(400) {
        *l = 4.0 + rng.uniform();
    }
    cases.push(packed);
    // Fewer logits than top-k (64 keeps them all), and a last chunk of 3 logits.
    cases.push(rng.vec(50, 2.0));
    cases.push(rng.vec(2 * 4096 + 3, 2.0));
    // With top-k 40 and 64, every case keeps each chunk's candidates (at most SAMPLE_LOCAL =
    // 128) except the one with 3000 ids tied at the top (case 3), whose chunks overflow and send
    // the draw back to the logits.
    for (case_no, logits) in cases.iter().enumerate() {
        let n = logits.len();
        let lb = buf(ctx, logits)?;
        let bound = e(op.bind(ctx, &lb, &out))?;
        let settings = [
            Sampling::GREEDY,
            Sampling { temperature: 0.7, top_k: 1, top_p: 1.0, seed: 3 },
            Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 1 },
            Sampling { temperature: 0.8, top_k: 40, top_p: 1.0, seed: 2 },
            Sampling { temperature: 1.3, top_k: 0, top_p: 0.9, seed: 4 },
            Sampling { temperature: 0.7, top_k: 64, top_p: 0.95, seed: 5 },
            Sampling { temperature: 2.0, top_k: 5, top_p: 0.5, seed: 6 },
        ];
        let draws = if n > 10_000 { 2 } else { 6 };
        for s in &settings {
            for counter in 0..draws {
                e(run_pass(ctx, "sample", |p| bound.dispatch(p, n as u32, s, counter).expect("shape checked")).await)?;
                let got = e(ctx.read_back::<u32>(&out, 0, 1).await)?[0];
                let trace = reference::sample(logits, s.temperature, s.top_k, s.top_p, s.seed, counter);
                let case = format!("n={n} {s:?} counter={counter}");
                if s.top_k == 40 || s.top_k == 64 {
                    let counts = e(bound.candidate_counts(ctx, n as u32).await)?;
                    let overflowed = counts.iter().filter(|c| **c == u32::MAX).count();
                    let must_overflow = case_no == 3;
                    if !must_overflow && overflowed > 0 {
                        return Err(format!("sample [{case}]: {overflowed} chunks overflowed (counts {counts:?}); their candidates should fit"));
                    }
                    if must_overflow && overflowed == 0 {
                        return Err(format!("sample [{case}]: no chunk overflowed with 3000 ids tied at the top (counts {counts:?})"));
                    }
                    if counts.iter().any(|c| *c != u32::MAX && *c > 128) {
                        return Err(format!("sample [{case}]: a chunk kept more than 128 candidates: {counts:?}"));
                    }
                }
                if got == trace.chosen {
                    rep.add(0.0);
                    continue;
                }
                // Accept a different id only where f32 and f64 sums legitimately disagree: the
                // draw lands within 1e-5 of the kept mass from the boundary between the two ids.
                let total: f64 = trace.kept.iter().map(|(_, p)| p).sum();
                let Some(pos) = trace.kept.iter().position(|(i, _)| *i == got) else {
                    return Err(format!("sample [{case}]: got id {got}, which the rule does not keep (expected {})", trace.chosen));
                };
                let before: f64 = trace.kept[..pos].iter().map(|(_, p)| p).sum();
                let after = before + trace.kept[pos].1;
                let gap = (before - trace.target).abs().min((after - trace.target).abs()) / total;
                if gap > 1e-5 {
                    return Err(format!(
                        "sample [{case}]: expected id {}, got {got} (draw {:.6} of mass {:.6} is {gap:.2e} from the boundary)",
                        trace.chosen, trace.target, total
                    ));
                }
                mismatched_borderline += 1;
                rep.add(gap);
            }
        }
    }
    if mismatched_borderline > 2 {
        return Err(format!("sample: {mismatched_borderline} draws differed from the CPU rule at a boundary; expected at most 2"));
    }
    // Different seeds must be able to give different tokens at high temperature.
    let n = 64;
    let flat = vec![0.0f32; n];
    let lb = buf(ctx, &flat)?;
    let bound = e(op.bind(ctx, &lb, &out))?;
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..16 {
        let s = Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, seed };
        e(run_pass(ctx, "sample", |p| bound.dispatch(p, n as u32, &s, 0).expect("shape checked")).await)?;
        let got = e(ctx.read_back::<u32>(&out, 0, 1).await)?[0];
        if got != reference::sample(&flat, 1.0, 0, 1.0, seed, 0).chosen {
            return Err(format!("sample [uniform n=64 seed={seed}]: got {got}, expected {}", reference::sample(&flat, 1.0, 0, 1.0, seed, 0).chosen));
        }
        seen.insert(got);
    }
    if seen.len() < 8 {
        return Err(format!("sample: 16 seeds over 64 equal logits gave only {} distinct ids", seen.len()));
    }
    rep.add(0.0);
    // Natively only: it is a property of the shader's arithmetic, which the cases above
    // already check the browser's compiler reproduces, and 800 draws cost the browser's
    // longest test runner about 15 s.
    #[cfg(not(target_arch = "wasm32"))]
    sample_distribution(ctx, &op, &mut rep).await?;
    Ok(rep)
}

/// The sampler's draws against the softmax they should follow, computed here from the logits
/// alone (not by `reference::sample`, which shares the kernel's walk and its random draw): 400
/// successive draws with one seed (counter 0..400, as a generation's steps) over 6 logits,
/// binned, and Pearson's chi-squared statistic against the expected counts. The draws are
/// deterministic, so the statistic is a fixed number; the bound is the statistic's 0.1% point
/// (a fair sampler fails it once in a thousand seeds; a wrong temperature, a biased draw or a
/// leak past top-k fails it by far).
#[cfg(not(target_arch = "wasm32"))]
async fn sample_distribution(ctx: &GpuContext, op: &Sampler, rep: &mut Report) -> Result<(), String> {
    const DRAWS: u32 = 400;
    let logits = [1.0f32, 0.2, -0.4, 0.7, -1.0, 0.0];
    let (lb, out) = (buf(ctx, &logits)?, zeros(ctx, 1)?);
    let bound = e(op.bind(ctx, &lb, &out))?;
    // (settings, ids kept, chi-squared 0.1% point for (kept - 1) degrees of freedom)
    let cases = [
        (Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 7 }, vec![0usize, 1, 2, 3, 4, 5], 20.52),
        (Sampling { temperature: 0.6, top_k: 3, top_p: 1.0, seed: 8 }, vec![0, 1, 3], 13.82),
    ];
    for (s, kept, critical) in cases {
        let weights: Vec<f64> = kept.iter().map(|&i| (logits[i] as f64 / s.temperature as f64).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut counts = [0u32; 6];
        for counter in 0..DRAWS {
            e(run_pass(ctx, "sample", |p| bound.dispatch(p, logits.len() as u32, &s, counter).expect("shape checked")).await)?;
            let got = e(ctx.read_back::<u32>(&out, 0, 1).await)?[0] as usize;
            if !kept.contains(&got) {
                return Err(format!("sample [{s:?} counter={counter}]: drew id {got}, outside the kept ids {kept:?}"));
            }
            counts[got] += 1;
        }
        let chi2: f64 = kept
            .iter()
            .zip(&weights)
            .map(|(&i, w)| {
                let expected = DRAWS as f64 * w / total;
                (counts[i] as f64 - expected).powi(2) / expected
            })
            .sum();
        if chi2 > critical {
            return Err(format!("sample [{s:?}]: {DRAWS} draws gave counts {counts:?}, chi-squared {chi2:.1} > {critical} against the softmax"));
        }
        rep.add(0.0);
        rep.note(format!("chi-squared {chi2:.1} (bound {critical}) over {DRAWS} draws, top_k {}", s.top_k));
    }
    Ok(())
}

/// Misuse is a clear error value, never a panic, and the device stays usable afterwards.
pub async fn errors(ctx: &GpuContext) -> TestResult {
    let mut rep = Report::new("errors");
    let expect_err = |what: &str, r: gemma_webgpu::Result<()>, needle: &str| -> Result<(), String> {
        match r {
            Ok(()) => Err(format!("errors [{what}]: succeeded, expected an error mentioning '{needle}'")),
            Err(err) if err.to_string().contains(needle) => Ok(()),
            Err(err) => Err(format!("errors [{what}]: error '{err}' does not mention '{needle}'")),
        }
    };
    // A context that needs more than the adapter can bind.
    let opts = ContextOptions { min_storage_binding: u64::MAX, ..Default::default() };
    expect_err("limits", GpuContext::new(&opts).await.map(|_| ()), "maxStorageBufferBindingSize")?;
    rep.add(0.0);
    // A shader that does not compile.
    let broken = gemma_webgpu::shaders::Shader { name: "broken.wgsl", parts: &["@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }"], teams: false };
    expect_err("shader", gemma_webgpu::gpu::Kernel::new(ctx, &broken, &[]).await.map(|_| ()), "broken.wgsl")?;
    rep.add(0.0);
    // A weight whose single row exceeds the allowed part size.
    let w = e(Packed::pack(DType::F32, 2, 64, &[0.5; 128]))?;
    let upload = GpuWeight::upload(ctx, "w", &w, 100).map(|_| ());
    expect_err("binding cap", upload, "maxStorageBufferBindingSize")?;
    rep.add(0.0);
    // Ring too small for the keys a block of queries needs; too many rows for a ring.
    let (attn, kvw) = (e(Attention::for_cache(ctx, false).await)?, e(KvWrite::for_cache(ctx, false).await)?);
    let cache = e(KvCache::new(ctx, "cache", 8, 16))?;
    let (qb, ob, kb) = (zeros(ctx, 16 * 16)?, zeros(ctx, 16 * 16)?, zeros(ctx, 16 * 16)?);
    let shape = AttentionShape { n_queries: 4, q_pos_start: 20, n_heads: 1, n_kv_heads: 1, head_dim: 16, window: 8, scale: 0.25, softcap: 50.0 };
    let part = zeros(ctx, part_len_per_head(16) as usize)?;
    let step = step_uniform(ctx);
    let bound = e(attn.bind(ctx, &qb, &cache, &ob, &part, &step))?;
    let kv_bound = e(kvw.bind(ctx, &kb, &kb, &cache))?;
    let mut results = Vec::new();
    e(run_pass(ctx, "errors", |p| {
        results.push(bound.dispatch(p, &shape));
        results.push(kv_bound.dispatch(p, 9, 0));
        results.push(bound.dispatch(p, &AttentionShape { head_dim: 12, ..shape }));
    })
    .await)?;
    let mut results = results.into_iter();
    expect_err("ring", results.next().unwrap_or(Ok(())), "keeps only the last 8")?;
    expect_err("ring overwrite", results.next().unwrap_or(Ok(())), "overwrite each other")?;
    expect_err("head_dim", results.next().unwrap_or(Ok(())), "multiple of 8")?;
    // An f32 cache given to kernels compiled for fp16 caches.
    let cache32 = e(KvCache::with_type(ctx, "cache32", 8, 16, true))?;
    expect_err("attention cache type", attn.bind(ctx, &qb, &cache32, &ob, &part, &step).map(|_| ()), "compiled for fp16 caches, given f32")?;
    expect_err("kv_write cache type", kvw.bind(ctx, &kb, &kb, &cache32).map(|_| ()), "compiled for fp16 caches, given f32")?;
    rep.add(0.0);
    // The device is still fine: a kernel runs and gives the right answer.
    softcap(ctx).await?;
    if let Some(err) = ctx.take_device_error() {
        return Err(format!("errors: the device reported '{err}' after rejected calls"));
    }
    rep.add(0.0);
    Ok(rep)
}

/// A per-step uniform (`StepParams`) for kernels that read the position from it.
fn step_uniform(ctx: &GpuContext) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("step"),
        size: std::mem::size_of::<StepParams>() as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Set the step uniform's position.
fn set_step(ctx: &GpuContext, step: &wgpu::Buffer, pos: usize, n_tokens: usize) {
    ctx.queue.write_buffer(step, 0, bytemuck::bytes_of(&StepParams { pos: pos as u32, n_tokens: n_tokens as u32, ..Default::default() }));
}

/// A cache slot's expected k and v, and their error scales.
type SlotWant = (Vec<f32>, Vec<f32>, Vec<f64>, Vec<f64>);

/// Weights packed and uploaded one by one, then joined by rows (`GpuWeight::join`), with the
/// unpacked values of each.
fn joined(ctx: &GpuContext, dtype: DType, k: usize, rows: &[usize], rng: &mut Rng) -> Result<(GpuWeight, Vec<Vec<f32>>), String> {
    let mut packed = Vec::new();
    for &n in rows {
        packed.push(e(Packed::pack(dtype, n, k, &rng.vec(n * k, 0.05)))?);
    }
    let uploaded = packed.iter().map(|w| e(GpuWeight::upload(ctx, "w", w, 0))).collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&GpuWeight> = uploaded.iter().collect();
    let joined = e(GpuWeight::join(ctx, "joined", &refs))?.ok_or_else(|| format!("{} weights of {rows:?} rows did not join", dtype.name()))?;
    Ok((joined, packed.iter().map(Packed::unpack).collect()))
}

/// Decode's fused products against the unfused ops' CPU twins: gate/up with GeGLU, and q/k/v
/// with RoPE and the KV-cache write (fp16 and f32 caches, rings, GQA 1/2/3, positions up to
/// 8191); and a joined weight's views through the ordinary matmul and matvec kernels (their
/// `w_row0`), which is how prompts read joined weights.
pub async fn fused(ctx: &GpuContext) -> TestResult {
    let mut rep = Report::new("fused");
    let mut rng = Rng::new(21);
    // Weights of different types do not join.
    let a = e(GpuWeight::upload(ctx, "a", &e(Packed::pack(DType::Int4, 8, 64, &rng.vec(512, 0.1)))?, 0))?;
    let b = e(GpuWeight::upload(ctx, "b", &e(Packed::pack(DType::Int8, 8, 64, &rng.vec(512, 0.1)))?, 0))?;
    if e(GpuWeight::join(ctx, "mixed", &[&a, &b]))?.is_some() {
        return Err("int4 and int8 weights were joined".into());
    }
    // Pipelines compiled once per (type, K, cache type): SwiftShader takes seconds for each.
    let mut compiled: Vec<((DType, usize, bool), Fused)> = Vec::new();
    for dtype in DType::ALL {
        let mm = e(MatMul::new(ctx, dtype).await)?;
        // (K, I): teams of 4, 16 and 64 lanes (by K); I not a multiple of the workgroup's outputs.
        for (k, i) in [(64usize, 12usize), (2336, 1000), (256, 4), (2304, 20)] {
            if (dtype == DType::F32 && k > 256) || k % dtype.group_cols() != 0 || (k == 2304 && dtype.group_cols() != 256) {
                continue;
            }
            let (w, parts) = joined(ctx, dtype, k, &[i, i], &mut rng)?;
            let x = rng.vec(k, 1.0);
            let (xb, act) = (buf(ctx, &x)?, zeros(ctx, i)?);
            if !compiled.iter().any(|(key, _)| *key == (dtype, k, false)) {
                compiled.push(((dtype, k, false), e(Fused::new(ctx, dtype, k as u32, false).await)?));
            }
            let op = compiled.iter().find(|(key, _)| *key == (dtype, k, false)).map(|(_, f)| f).ok_or("compiled above")?;
            let bound = e(op.bind_geglu(ctx, &xb, &w, &act))?;
            e(run_pass(ctx, "matvec_geglu", |p| bound.dispatch(p, 0).expect("no table to check")).await)?;
            let got = read(ctx, &act, i).await?;
            let (gate, up) = (reference::linear(&x, &parts[0], k, i), reference::linear(&x, &parts[1], k, i));
            let want = reference::geglu(&gate, &up);
            // Error bound: the products' (sum |x w|) carried through gelu (slope < 1.13) times up.
            let (sg, su) = (abs_products(&x, &parts[0], k, i), abs_products(&x, &parts[1], k, i));
            let scale: Vec<f64> = (0..i).map(|j| 1.13 * sg[j] * (up[j].abs() as f64 + su[j]) + gate[j].abs() as f64 * su[j]).collect();
            let case = format!("{} K={k} I={i}", dtype.name());
            rep.add(compare("matvec_geglu", &case, &got, &want, Some(&scale), 2e-6, 1e-9)?);
            // The up rows as a view: the prompt path's matmul (tiles and blocks) and matvec.
            let up_view = e(w.view(i as u32, i as u32))?;
            let m = 5;
            let xm = rng.vec(m * k, 1.0);
            let (xmb, yb) = (buf(ctx, &xm)?, zeros(ctx, m * i)?);
            let mm_bound = e(mm.bind(ctx, &xmb, &up_view, &yb))?;
            let want = reference::linear(&xm, &parts[1], k, i);
            let bounds = abs_products(&xm, &parts[1], k, i);
            for path in [MatMulPath::Tiles, MatMulPath::MatVec] {
                e(run_pass(ctx, "matmul", |p| mm_bound.dispatch_with(p, m as u32, path).expect("shape checked")).await)?;
                rep.add(compare("joined view", &format!("{case} {path:?}"), &read(ctx, &yb, m * i).await?, &want, Some(&bounds), 2e-6, 1e-9)?);
            }
        }
    }
    // q/k/v: (heads, KV heads, D, K, positions decoded one by one, cache slots, f32 cache).
    let cases = [
        (8usize, 4usize, 256usize, 2304usize, vec![0usize, 1, 2], 64usize, false),
        (3, 1, 128, 256, vec![7, 8191], 8192, false),
        (3, 1, 128, 256, vec![5, 6, 13], 8, true),
        (4, 2, 64, 64, vec![100, 101], 24, false),
        (2, 2, 8, 32, vec![3], 4, true),
    ];
    for dtype in [DType::F16, DType::Int4, DType::Int8, DType::Q5_0, DType::Q4K, DType::Q6K] {
        for (nh, nkv, d, k, positions, capacity, kv_f32) in &cases {
            let (nh, nkv, d, k, capacity, kv_f32) = (*nh, *nkv, *d, *k, *capacity, *kv_f32);
            if k % dtype.group_cols() != 0 {
                continue;
            }
            let (qn, kvn) = (nh * d, nkv * d);
            let (w, parts) = joined(ctx, dtype, k, &[qn, kvn, kvn], &mut rng)?;
            if !compiled.iter().any(|(key, _)| *key == (dtype, k, kv_f32)) {
                compiled.push(((dtype, k, kv_f32), e(Fused::new(ctx, dtype, k as u32, kv_f32).await)?));
            }
            let op = compiled.iter().find(|(key, _)| *key == (dtype, k, kv_f32)).map(|(_, f)| f).ok_or("compiled above")?;
            let table = e(RopeTable::new(ctx, d as u32, 10_000.0, 8192))?;
            let cache = e(KvCache::with_type(ctx, "cache", capacity as u32, kvn as u32, kv_f32))?;
            let step = step_uniform(ctx);
            let (xb, qb) = (zeros(ctx, k)?, zeros(ctx, qn)?);
            let shape = QkvShape { n_heads: nh as u32, n_kv_heads: nkv as u32, head_dim: d as u32 };
            let bound = e(op.bind_qkv(ctx, &xb, &w, &qb, &cache, &table, &step, shape))?;
            let case = format!("{} NH={nh} NKV={nkv} D={d} K={k} cap={capacity} kv={}", dtype.name(), if kv_f32 { "f32" } else { "fp16" });
            // What each slot should hold: (k, v, their error scales) of the newest position.
            let mut slots: Vec<Option<SlotWant>> = vec![None; capacity];
            for &pos in positions {
                let x = rng.vec(k, 1.0);
                ctx.queue.write_buffer(&xb, 0, bytemuck::cast_slice(&x));
                set_step(ctx, &step, pos, 1);
                e(run_pass(ctx, "matvec_qkv", |p| bound.dispatch(p, pos as u32).expect("shape checked")).await)?;
                let rot = |y: Vec<f32>, heads| reference::rope(&y, heads, d, 10_000.0, pos);
                // A rotation mixes a pair: its scale is both products' sum |x w|.
                let pair_scale = |ab: Vec<f64>| -> Vec<f64> { (0..ab.len()).map(|j| ab[j] + ab[(j / d) * d + (j % d + d / 2) % d]).collect() };
                let want_q = rot(reference::linear(&x, &parts[0], k, qn), nh);
                let got_q = read(ctx, &qb, qn).await?;
                rep.add(compare(
                    "matvec_qkv q",
                    &format!("{case} pos={pos}"),
                    &got_q,
                    &want_q,
                    Some(&pair_scale(abs_products(&x, &parts[0], k, qn))),
                    2e-6,
                    1e-9,
                )?);
                let want_k = rot(reference::linear(&x, &parts[1], k, kvn), nkv);
                let want_v = reference::linear(&x, &parts[2], k, kvn);
                slots[pos % capacity] = Some((want_k, want_v, pair_scale(abs_products(&x, &parts[1], k, kvn)), abs_products(&x, &parts[2], k, kvn)));
            }
            check_cache(ctx, "matvec_qkv", &case, &cache, &slots, &mut rep).await?;
        }
    }
    // Gemma 3's q/k norms, RoPE and cache write after a plain product over the joined weight
    // (given its output here): (heads, KV heads, D, positions, cache slots, f32 cache).
    let cases = [(4usize, 1usize, 256usize, vec![0usize, 7, 8191], 8192usize, false), (3, 1, 128, vec![5, 6, 13], 8, true), (2, 2, 8, vec![3], 4, false)];
    for (nh, nkv, d, positions, capacity, kv_f32) in cases {
        let (qn, kvn) = (nh * d, nkv * d);
        let op = e(QkNormRope::new(ctx, kv_f32).await)?;
        let table = e(RopeTable::new(ctx, d as u32, 1_000_000.0, 8192))?;
        let cache = e(KvCache::with_type(ctx, "cache", capacity as u32, kvn as u32, kv_f32))?;
        let (qw, kw) = (rng.vec(d, 0.5), rng.vec(d, 0.5));
        let (src, qb, qwb, kwb, step) = (zeros(ctx, qn + 2 * kvn)?, zeros(ctx, qn)?, buf(ctx, &qw)?, buf(ctx, &kw)?, step_uniform(ctx));
        let shape = QkvShape { n_heads: nh as u32, n_kv_heads: nkv as u32, head_dim: d as u32 };
        let bound = e(op.bind(ctx, &src, (&qwb, &kwb), &qb, &cache, &table, &step, (shape, 1e-6)))?;
        let case = format!("qk_norm_rope NH={nh} NKV={nkv} D={d} cap={capacity} kv={}", if kv_f32 { "f32" } else { "fp16" });
        let mut slots: Vec<Option<SlotWant>> = vec![None; capacity];
        for &pos in &positions {
            // Some heads far from unit scale: the norm must bring them back.
            let x: Vec<f32> = (0..qn + 2 * kvn).map(|i| rng.normal(if (i / d) % 2 == 0 { 30.0 } else { 0.5 })).collect();
            ctx.queue.write_buffer(&src, 0, bytemuck::cast_slice(&x));
            set_step(ctx, &step, pos, 1);
            e(run_pass(ctx, "qk_norm_rope", |p| bound.dispatch(p, pos as u32).expect("shape checked")).await)?;
            let norm_rope = |y: &[f32], w: &[f32], heads| reference::rope_scaled(&reference::rmsnorm(y, w, 1e-6), heads, d, 1_000_000.0, 1.0, pos);
            let want_q = norm_rope(&x[..qn], &qw, nh);
            // Normed values are O(1): error relative to each rotated pair's size, at least 1.
            let pair = |y: &[f32]| -> Vec<f64> { (0..y.len()).map(|j| (y[j].abs() + y[(j / d) * d + (j % d + d / 2) % d].abs()).max(1.0) as f64).collect() };
            rep.add(compare("qk_norm_rope q", &format!("{case} pos={pos}"), &read(ctx, &qb, qn).await?, &want_q, Some(&pair(&want_q)), 1e-5, 1e-9)?);
            let want_k = norm_rope(&x[qn..qn + kvn], &kw, nkv);
            let want_v = x[qn + kvn..].to_vec();
            let (scale_k, scale_v) = (pair(&want_k), want_v.iter().map(|v| v.abs() as f64).collect());
            slots[pos % capacity] = Some((want_k, want_v, scale_k.iter().map(|s| s * 5.0).collect(), scale_v));
        }
        check_cache(ctx, "qk_norm_rope", &case, &cache, &slots, &mut rep).await?;
    }
    Ok(rep)
}

/// Every slot of `cache` holds what `slots` expects (k and v within their scales, fp16-rounded
/// for an fp16 cache), and slots never written are still zero.
async fn check_cache(ctx: &GpuContext, op: &str, case: &str, cache: &KvCache, slots: &[Option<SlotWant>], rep: &mut Report) -> Result<(), String> {
    let (kv_f32, width) = (cache.f32, cache.width as usize);
    let words_per_row = if kv_f32 { width } else { width / 2 };
    for (name, gpu) in [("k", &cache.k), ("v", &cache.v)] {
        let words = e(ctx.read_back::<u32>(gpu, 0, (slots.len() * words_per_row) as u64).await)?;
        for (s, slot) in slots.iter().enumerate() {
            let row = &words[s * words_per_row..(s + 1) * words_per_row];
            let got: Vec<f32> = if kv_f32 {
                row.iter().map(|w| f32::from_bits(*w)).collect()
            } else {
                row.iter().flat_map(|w| [half::f16::from_bits(*w as u16).to_f32(), half::f16::from_bits((*w >> 16) as u16).to_f32()]).collect()
            };
            let Some((want_k, want_v, scale_k, scale_v)) = slot else {
                if got.iter().any(|v| *v != 0.0) {
                    return Err(format!("{op} [{case}]: {name} slot {s} was never written but is not zero"));
                }
                continue;
            };
            let (want, scale) = if name == "k" { (want_k, scale_k) } else { (want_v, scale_v) };
            // fp16: the GPU and the CPU may round a value near a half-way point apart.
            let scale: Vec<f64> = if kv_f32 { scale.clone() } else { scale.iter().zip(want.iter()).map(|(s, w)| s + w.abs() as f64 * 500.0).collect() };
            let want = if kv_f32 { want.clone() } else { f16_round(want) };
            rep.add(compare(&format!("{op} cache"), &format!("{case} {name} slot {s}"), &got, &want, Some(&scale), 2e-6, 1e-9)?);
        }
    }
    Ok(())
}

/// Every kernel test, in order, for harnesses that run them all at once.
pub async fn all(ctx: &GpuContext) -> Result<Vec<Report>, String> {
    Ok(vec![
        embedding(ctx).await?,
        rmsnorm(ctx).await?,
        rope(ctx).await?,
        matmul(ctx).await?,
        matvec(ctx).await?,
        geglu(ctx).await?,
        fused(ctx).await?,
        softcap(ctx).await?,
        kv_cache(ctx).await?,
        attention(ctx).await?,
        sample(ctx).await?,
        errors(ctx).await?,
    ])
}

/// The logit rules (`logit_penalty.wgsl`: penalties over the context and the recorded draws,
/// then the bias) and the log-probabilities of a draw (`logprobs.wgsl`), against their CPU
/// rules (`reference::penalize`, `reference::logprobs`), over one, five and 64 chunks of
/// logits with ties at the top.
pub async fn logit_rules(ctx: &GpuContext) -> TestResult {
    let mut rep = Report::new("logit rules");
    let mut rng = Rng::new(21);
    let ops = e(LogitOps::new(ctx).await)?;
    for &n in &[300usize, 20_000, 262_144] {
        let mut base = rng.vec(n, 3.0);
        let top = base.iter().fold(f32::MIN, |m, x| m.max(*x)) + 1.0;
        for i in [n / 2, 11, n - 3] {
            base[i] = top;
        }
        let logits = buf(ctx, &base)?;
        let ids = buf_u32(ctx, &[0])?;
        let mut state = e(ops.bind(ctx, &logits, &ids, n as u32, 64))?;
        let context: Vec<u32> = (0..40).map(|_| rng.next_u32() % 64 * (n as u32 / 64)).collect();
        // Drawn tokens: one from the context, one three times, the last id, an id twice.
        let generated = [context[0], 7, 7, 7, n as u32 - 1, 5, 5];
        let bias = vec![(3, 5.0), (n as u32 - 2, -100.0), (context[1], -2.5), (7, 1.5)];
        let rules = [
            LogitRules { repetition_penalty: 1.3, ..Default::default() },
            LogitRules { frequency_penalty: 0.5, presence_penalty: 0.8, ..Default::default() },
            LogitRules { repetition_penalty: 1.2, frequency_penalty: -0.4, presence_penalty: 1.1, logit_bias: bias.clone(), top_logprobs: Some(20) },
            LogitRules { logit_bias: bias.clone(), top_logprobs: Some(3), ..Default::default() },
            LogitRules { repetition_penalty: 0.8, top_logprobs: Some(0), ..Default::default() },
            LogitRules { top_logprobs: Some(20), ..Default::default() },
        ];
        for r in &rules {
            let case = format!("n={n} {r:?}");
            ctx.queue.write_buffer(&logits, 0, bytemuck::cast_slice(&base));
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            e(state.begin(&mut enc, ctx, r, &context))?;
            let mut rec = gemma_webgpu::gpu::Recorder::begin(ctx, &mut enc, "begin");
            e(state.record_begin(&mut rec))?;
            drop(rec);
            e(ctx.submit_checked("begin", enc).await)?;
            // Each draw is recorded as a step records it: its id in ids[0], then `record_after`.
            for &t in &generated {
                ctx.queue.write_buffer(&ids, 0, bytemuck::bytes_of(&t));
                let mut out = Ok(());
                e(run_pass(ctx, "record", |p| out = state.record_after(p)).await)?;
                e(out)?;
            }
            let mut out = Ok(());
            e(run_pass(ctx, "adjust", |p| out = state.record_adjust(p)).await)?;
            e(out)?;
            let got = e(ctx.read_back::<f32>(&logits, 0, n as u64).await)?;
            let mut want = base.clone();
            reference::penalize(&mut want, r, &context, &generated);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let err = ((g - w) / w.abs().max(1.0)).abs() as f64;
                if err > 1e-6 {
                    return Err(format!("logit rules [{case}]: logit {i} is {g}, the rule gives {w}"));
                }
                rep.add(err);
            }
            if want.iter().zip(&base).filter(|(w, b)| w != b).count() == 0 && r.is_active() && (r.penalizes() || !r.logit_bias.is_empty()) {
                return Err(format!("logit rules [{case}]: the rule changed nothing, so the case tests nothing"));
            }
            let Some(k) = r.top_logprobs else { continue };
            // The log-probabilities of a draw of id 5 (drawn twice before).
            let drawn = 5u32;
            ctx.queue.write_buffer(&ids, 0, bytemuck::bytes_of(&drawn));
            let mut out = Ok(());
            e(run_pass(ctx, "logprobs", |p| out = state.record_after(p)).await)?;
            e(out)?;
            let words = e(ctx.read_back::<u32>(&state.out, 0, 2 + 2 * k as u64).await)?;
            let lp = e(gemma_webgpu::ops::logits::Logprobs::from_words(&words, k as usize))?;
            let (want_lp, want_top) = reference::logprobs(&want, drawn, k as usize);
            let close = |a: f32, b: f64| ((a as f64 - b) / b.abs().max(1.0)).abs();
            if lp.id != drawn || close(lp.logprob, want_lp) > 1e-5 {
                return Err(format!("logprobs [{case}]: drawn ({}, {}), the rule gives ({drawn}, {want_lp})", lp.id, lp.logprob));
            }
            rep.add(close(lp.logprob, want_lp));
            for (j, ((gi, gl), (wi, wl))) in lp.top.iter().zip(&want_top).enumerate() {
                if gi != wi || close(*gl, *wl) > 1e-5 {
                    return Err(format!("logprobs [{case}]: top {j} is ({gi}, {gl}), the rule gives ({wi}, {wl}); all: {:?}", lp.top));
                }
                rep.add(close(*gl, *wl));
            }
        }
        // A mask of allowed tokens (a grammar's): every other logit is banned, the rest kept.
        ctx.queue.write_buffer(&logits, 0, bytemuck::cast_slice(&base));
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        e(state.begin(&mut enc, ctx, &LogitRules::default(), &context))?;
        e(ctx.submit_checked("begin", enc).await)?;
        let words: Vec<u32> = (0..n.div_ceil(32)).map(|_| rng.next_u32() & rng.next_u32()).collect();
        if state.set_mask(ctx, Some(&words[1..])).is_ok() {
            return Err("logit rules: a mask of the wrong length was accepted".into());
        }
        e(state.set_mask(ctx, Some(&words)))?;
        let mut out = Ok(());
        e(run_pass(ctx, "mask", |p| out = state.record_adjust(p)).await)?;
        e(out)?;
        let got = e(ctx.read_back::<f32>(&logits, 0, n as u64).await)?;
        for (i, (g, b)) in got.iter().zip(&base).enumerate() {
            let allowed = (words[i / 32] >> (i % 32)) & 1 == 1;
            let want = if allowed { *b } else { -3.4e38 };
            if *g != want {
                return Err(format!("logit mask n={n}: logit {i} (allowed {allowed}) is {g}, expected {want}"));
            }
        }
        rep.note(format!("mask n={n}: {} of {n} allowed", words.iter().map(|w| w.count_ones()).sum::<u32>()));
        e(state.set_mask(ctx, None))?;
    }
    Ok(rep)
}
