//! `gemma`: the native command-line tool. Converts Hugging Face checkpoints and GGUF files
//! into our format, writes synthetic models, generates text, dumps logits and benchmarks.
//! Every error is one line on stderr and a non-zero exit code.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    match cli::run(std::env::args().skip(1).collect()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    use gemma_webgpu::convert;
    use gemma_webgpu::format::DEFAULT_SHARD_BYTES;
    use gemma_webgpu::gpu::{ContextOptions, GpuContext};
    use gemma_webgpu::model::config::ModelConfig;
    use std::rc::Rc;

    use gemma_webgpu::format::Manifest;
    use gemma_webgpu::model::engine::{Engine, EngineOptions, KvType};
    use gemma_webgpu::model::load::{self, read_manifest};
    use gemma_webgpu::ops::sample::Sampling;
    use gemma_webgpu::quant::DType;
    use gemma_webgpu::session::{Finish, GenerateParams, Session};
    use gemma_webgpu::tokenizer::{Message, Tokenizer};

    const USAGE: &str = "usage:
  gemma convert <hf_dir|file.gguf> <out_dir> [--quant TYPE] [--embed TYPE] [--shard-mb 32]
      TYPE: int4, int8, fp16, f32, or llama.cpp's q4_0, q5_0, q5_1, q4_k, q5_k, q6_k. A GGUF
      keeps each tensor's own type (its blocks, value for value) unless --quant/--embed say
      otherwise; a checkpoint becomes int4. A k-quant falls back, for rows that are not whole
      256-value blocks, to int4 (q4_k), q5_1 (q5_k) or int8 (q6_k).
  gemma synth <out_dir> --preset 2b|9b|27b|demo|<config.json> [--quant TYPE] [--seed N]
              [--tokenizer tokenizer.json]
  gemma generate <model_dir> (--prompt TEXT | --tokens 2,651,...) [--chat] [--max-tokens 256]
                 [--temperature 0.7] [--top-k 64] [--top-p 0.95] [--seed 0] [--stop TEXT]...
                 [--max-context 4096] [--kv-f32] [--special-tokens]
  gemma logits <model_dir> --tokens 2,651,... [--decode] [--kv-f32] --out FILE.npy
  gemma bench <model_dir> [--prompt-tokens 128] [--gen-tokens 32] [--max-context N] [--json] [--profile]
              [--depth N] [--attention split|blocked] [--sample] [--unfused] [--sequential] [--no-subgroups]
      --depth N: start the prompt at position N of a cache taken as full (not computed: the
      timing of a long conversation without its prefill); --attention blocked: attention with
      one workgroup per (query head, query), instead of split across the keys (decode) and
      one workgroup per KV head and 8 query rows (prefill), for comparison;
      --sample: draw with generate's default sampling (temperature 0.7, top-k 64, top-p 0.95)
      instead of greedy arg-max; --unfused: decode q/k/v and gate/up through the separate
      kernels a prompt takes (products, RoPE, KV write, GeGLU) instead of the fused ones;
      --sequential: read each token back before submitting the next step (decode is pipelined
      by default, as generate runs it); --no-subgroups: the matrix-vector kernels sum their
      lanes through workgroup memory even where the adapter has subgroups (as in a browser)";

    type Res<T> = Result<T, String>;

    /// Positional arguments and `--flag [value]` options.
    struct Args {
        positional: Vec<String>,
        options: Vec<(String, Option<String>)>,
    }

    const SWITCHES: &[&str] =
        &["--chat", "--special-tokens", "--decode", "--json", "--kv-f32", "--profile", "--sample", "--unfused", "--sequential", "--no-subgroups", "--help"];

    impl Args {
        fn parse(raw: Vec<String>) -> Res<Self> {
            let (mut positional, mut options) = (Vec::new(), Vec::new());
            let mut it = raw.into_iter();
            while let Some(a) = it.next() {
                if a.starts_with("--") {
                    if SWITCHES.contains(&a.as_str()) {
                        options.push((a, None));
                    } else {
                        let v = it.next().ok_or_else(|| format!("{a} needs a value\n{USAGE}"))?;
                        options.push((a, Some(v)));
                    }
                } else {
                    positional.push(a);
                }
            }
            Ok(Self { positional, options })
        }
        fn has(&self, flag: &str) -> bool {
            self.options.iter().any(|(f, _)| f == flag)
        }
        /// Every value given for a repeatable option.
        fn all(&self, flag: &str) -> Vec<String> {
            self.options.iter().filter(|(f, _)| f == flag).filter_map(|(_, v)| v.clone()).collect()
        }
        fn get(&self, flag: &str) -> Option<&str> {
            self.options.iter().rev().find(|(f, _)| f == flag).and_then(|(_, v)| v.as_deref())
        }
        fn num<T: std::str::FromStr>(&self, flag: &str, default: T) -> Res<T> {
            match self.get(flag) {
                None => Ok(default),
                Some(v) => v.parse().map_err(|_| format!("{flag}: '{v}' is not a valid number")),
            }
        }
        fn pos(&self, i: usize, what: &str) -> Res<&str> {
            self.positional.get(i).map(String::as_str).ok_or_else(|| format!("missing {what}\n{USAGE}"))
        }
        fn check_known(&self, known: &[&str]) -> Res<()> {
            for (f, _) in &self.options {
                if !known.contains(&f.as_str()) {
                    return Err(format!("unknown option {f}\n{USAGE}"));
                }
            }
            Ok(())
        }
    }

    fn quant(args: &Args, default: DType) -> Res<DType> {
        args.get("--quant").map_or(Ok(default), |q| quant_named(q).map_err(|e| format!("--quant: {e}")))
    }

    fn quant_named(name: &str) -> Res<DType> {
        match name {
            "f16" => Ok(DType::F16),
            "bf16" => Err("bf16 is a storage type a checkpoint may come in, not one to convert to; use fp16".into()),
            other => DType::parse(other).ok_or_else(|| {
                let names: Vec<&str> = DType::ALL.iter().filter(|d| **d != DType::Bf16).map(|d| d.name()).collect();
                format!("'{other}' is not one of {}", names.join(", "))
            }),
        }
    }

    fn parse_tokens(s: &str) -> Res<Vec<u32>> {
        s.split(',').map(|t| t.trim().parse::<u32>().map_err(|_| format!("--tokens: '{t}' is not a token id"))).collect()
    }

    /// The device, with subgroups unless `--no-subgroups`.
    async fn context(args: &Args) -> Res<GpuContext> {
        GpuContext::new(&ContextOptions { no_subgroups: args.has("--no-subgroups"), ..Default::default() }).await.map_err(|e| e.to_string())
    }

    /// The engine for `dir`, with `--max-context` and `--kv-f32` (defaults: `EngineOptions`).
    async fn load(dir: &Path, manifest: &Manifest, args: &Args) -> Res<Engine> {
        let max_context = match args.get("--max-context") {
            Some(_) => Some(args.num("--max-context", 0)?),
            None => None,
        };
        let options = EngineOptions { max_context, kv: KvType::f32_if(args.has("--kv-f32")), ..Default::default() };
        load::load(context(args).await?, manifest, &load::Dir { dir, manifest }, options).await.map_err(|e| e.to_string())
    }

    async fn load_dir(dir: &Path, args: &Args) -> Res<Engine> {
        let manifest = read_manifest(dir).map_err(|e| e.to_string())?;
        load(dir, &manifest, args).await
    }

    pub fn run(raw: Vec<String>) -> Res<()> {
        let args = Args::parse(raw)?;
        let Some(cmd) = args.positional.first().cloned() else {
            return Err(USAGE.to_string());
        };
        let args = Args { positional: args.positional[1..].to_vec(), options: args.options };
        if args.has("--help") {
            println!("{USAGE}");
            return Ok(());
        }
        match cmd.as_str() {
            "convert" => cmd_convert(&args),
            "synth" => cmd_synth(&args),
            "generate" => pollster::block_on(cmd_generate(&args)),
            "logits" => pollster::block_on(cmd_logits(&args)),
            "bench" => pollster::block_on(cmd_bench(&args)),
            other => Err(format!("unknown command '{other}'\n{USAGE}")),
        }
    }

    fn cmd_convert(args: &Args) -> Res<()> {
        args.check_known(&["--quant", "--embed", "--shard-mb"])?;
        let (src, out) = (PathBuf::from(args.pos(0, "<hf_dir|file.gguf>")?), PathBuf::from(args.pos(1, "<out_dir>")?));
        let shard = args.num("--shard-mb", DEFAULT_SHARD_BYTES >> 20)? << 20;
        let is_gguf = src.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if src.is_file() && !is_gguf {
            return Err(format!("{} is a file; convert takes a Hugging Face checkpoint directory or a .gguf file", src.display()));
        }
        // A GGUF keeps its own types unless told otherwise; a checkpoint becomes int4.
        let named = |flag: &str| args.get(flag).map(|q| quant_named(q).map_err(|e| format!("{flag}: {e}"))).transpose();
        let matrices = named("--quant")?.or((!is_gguf).then_some(DType::Int4));
        let embedding = named("--embed")?.or(matrices);
        let quant = convert::Quant { matrices, embedding };
        let m = if is_gguf { convert::convert_gguf(&src, &out, quant, shard, true) } else { convert::convert_hf(&src, &out, quant, shard, true) }
            .map_err(|e| e.to_string())?;
        eprintln!(
            "wrote {} ({} shards, {:.1} MiB){}",
            out.display(),
            m.shards.len(),
            m.total_bytes() as f64 / (1 << 20) as f64,
            if m.tokenizer.is_some() { ", with tokenizer" } else { ", no tokenizer.json found" }
        );
        Ok(())
    }

    fn cmd_synth(args: &Args) -> Res<()> {
        args.check_known(&["--preset", "--quant", "--seed", "--shard-mb", "--tokenizer"])?;
        let out = PathBuf::from(args.pos(0, "<out_dir>")?);
        let preset = args.get("--preset").ok_or_else(|| format!("synth needs --preset\n{USAGE}"))?;
        let config = if preset.ends_with(".json") {
            let text = std::fs::read_to_string(preset).map_err(|e| format!("{preset}: {e}"))?;
            ModelConfig::from_hf_json(&text).map_err(|e| e.to_string())?
        } else {
            convert::preset(preset).map_err(|e| e.to_string())?
        };
        let shard = args.num("--shard-mb", DEFAULT_SHARD_BYTES >> 20)? << 20;
        let mut m = convert::synth(config, &out, quant(args, DType::Int4)?, args.num("--seed", 0)?, shard, true).map_err(|e| e.to_string())?;
        if let Some(tok) = args.get("--tokenizer") {
            m = convert::attach_tokenizer(&out, Path::new(tok)).map_err(|e| e.to_string())?;
        }
        eprintln!("wrote {} ({} shards, {:.1} MiB)", out.display(), m.shards.len(), m.total_bytes() as f64 / (1 << 20) as f64);
        Ok(())
    }

    /// Generation runs on `Session`, as in the browser: the same end tokens (EOS,
    /// `<end_of_turn>`, `<start_of_turn>`), stop strings, defaults and whole-character streaming.
    async fn cmd_generate(args: &Args) -> Res<()> {
        args.check_known(&[
            "--prompt",
            "--tokens",
            "--chat",
            "--max-tokens",
            "--temperature",
            "--top-k",
            "--top-p",
            "--seed",
            "--stop",
            "--max-context",
            "--kv-f32",
            "--special-tokens",
        ])?;
        let dir = PathBuf::from(args.pos(0, "<model_dir>")?);
        let manifest = read_manifest(&dir).map_err(|e| e.to_string())?;
        let tokenizer = match &manifest.tokenizer {
            Some(file) => {
                let bytes = std::fs::read(dir.join(file)).map_err(|e| format!("{}: {e}", dir.join(file).display()))?;
                let tok = Tokenizer::from_json(&bytes, manifest.config.bos_token_id).map_err(|e| e.to_string())?;
                tok.check_fits(manifest.config.vocab_size).map_err(|e| e.to_string())?;
                Some(Rc::new(tok))
            }
            None => None,
        };
        let d = GenerateParams::default();
        let params = GenerateParams {
            max_tokens: args.num("--max-tokens", d.max_tokens)?,
            sampling: Sampling {
                temperature: args.num("--temperature", d.sampling.temperature)?,
                top_k: args.num("--top-k", d.sampling.top_k)?,
                top_p: args.num("--top-p", d.sampling.top_p)?,
                seed: args.num("--seed", d.sampling.seed)?,
            },
            stop: args.all("--stop"),
            special_tokens: args.has("--special-tokens"),
        };
        let engine = load(&dir, &manifest, args).await?;
        let mut session = Session::new(engine, tokenizer);
        let mut out = std::io::stdout();
        let mut on_text = |piece: &str| {
            let _ = write!(out, "{piece}");
            let _ = out.flush();
        };
        let never = || false;
        let s = &mut session;
        match (args.get("--prompt"), args.get("--tokens")) {
            (Some(text), _) if args.has("--chat") => s.chat(&[Message { role: "user".into(), content: text.into() }], &params, &mut on_text, &never).await,
            (Some(text), _) => s.generate(text, &params, &mut on_text, &never).await,
            (None, Some(ids)) => s.generate_ids(&parse_tokens(ids)?, &params, &mut on_text, &never).await,
            (None, None) => return Err(format!("generate needs --prompt or --tokens\n{USAGE}")),
        }
        .map_err(|e| e.to_string())?;
        println!();
        let st = session.stats;
        eprintln!("[{} tokens at {:.2} tok/s; ended by {}]", st.decode_tokens, st.decode_tokens_per_second(), st.finish.name());
        if st.finish == Finish::Context {
            eprintln!("[the {}-token context is full; use --max-context to allow more]", session.engine.max_context());
        }
        Ok(())
    }

    /// NumPy `.npy` (format 1.0), float32, C order.
    fn write_npy(path: &Path, rows: usize, cols: usize, data: &[f32]) -> Res<()> {
        let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
        bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(bytemuck::cast_slice(data));
        std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    async fn cmd_logits(args: &Args) -> Res<()> {
        args.check_known(&["--tokens", "--decode", "--out", "--max-context", "--kv-f32"])?;
        let dir = PathBuf::from(args.pos(0, "<model_dir>")?);
        let tokens = parse_tokens(args.get("--tokens").ok_or_else(|| format!("logits needs --tokens\n{USAGE}"))?)?;
        let out = PathBuf::from(args.get("--out").ok_or_else(|| format!("logits needs --out FILE.npy\n{USAGE}"))?);
        let mut gpu = load_dir(&dir, args).await?;
        let logits = gpu.logits(&tokens, args.has("--decode")).await.map_err(|e| e.to_string())?;
        write_npy(&out, tokens.len(), gpu.config.vocab_size as usize, &logits)?;
        eprintln!("wrote {} [{} x {}]", out.display(), tokens.len(), gpu.config.vocab_size);
        Ok(())
    }

    async fn cmd_bench(args: &Args) -> Res<()> {
        args.check_known(&[
            "--prompt-tokens",
            "--gen-tokens",
            "--max-context",
            "--json",
            "--kv-f32",
            "--profile",
            "--depth",
            "--attention",
            "--sample",
            "--unfused",
            "--sequential",
            "--no-subgroups",
        ])?;
        let dir = PathBuf::from(args.pos(0, "<model_dir>")?);
        let (n_prompt, n_gen): (usize, usize) = (args.num("--prompt-tokens", 128)?, args.num("--gen-tokens", 32)?);
        let depth: u32 = args.num("--depth", 0)?;
        let t0 = Instant::now();
        let mut gpu = load_dir(&dir, args).await?;
        match args.get("--attention") {
            None | Some("split") => {}
            Some("blocked") => gpu.set_split_decode_attention(false),
            Some(other) => return Err(format!("--attention must be split or blocked, got '{other}'")),
        }
        if args.has("--unfused") {
            gpu.set_fused_decode(false);
        }
        let load_s = t0.elapsed().as_secs_f64();
        let v = gpu.config.vocab_size;
        let prompt: Vec<u32> = std::iter::once(gpu.config.bos_token_id).chain((1..n_prompt as u32).map(|i| (i * 7919 + 11) % (v - 3) + 3)).collect();
        let sampling = if args.has("--sample") { GenerateParams::default().sampling } else { Sampling::GREEDY };
        // Warm-up: compiles nothing new, but first submits on some drivers are slow.
        gpu.step(&prompt[..1], &sampling).await.map_err(|e| e.to_string())?;
        gpu.reset();
        gpu.assume_cached_for_benchmark(depth).map_err(|e| e.to_string())?;
        let t1 = Instant::now();
        let mut next = gpu.step(&prompt, &sampling).await.map_err(|e| e.to_string())?;
        let prefill_s = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        if args.has("--sequential") {
            for _ in 0..n_gen {
                next = gpu.step(&[next], &sampling).await.map_err(|e| e.to_string())?;
            }
        } else {
            // Pipelined as generate is: the next step is submitted before a token is read.
            for i in 0..n_gen {
                if i == 0 {
                    gpu.submit_step(None, &sampling).await.map_err(|e| e.to_string())?;
                }
                if i + 1 < n_gen {
                    gpu.submit_step(None, &sampling).await.map_err(|e| e.to_string())?;
                }
                next = gpu.read_token().await.map_err(|e| e.to_string())?;
            }
        }
        let _ = next;
        let decode_s = t2.elapsed().as_secs_f64();
        let s = gpu.last_step;
        let r = &gpu.ctx.report;
        let fields = [
            ("adapter", format!("\"{}\"", format!("{} ({}, {})", r.name, r.backend, r.device_type).replace('"', "'"))),
            ("subgroups", format!("{}", r.uses_subgroups)),
            ("model_dir", format!("\"{}\"", dir.display())),
            ("load_s", format!("{load_s:.2}")),
            ("depth", format!("{depth}")),
            ("prompt_tokens", format!("{n_prompt}")),
            ("prefill_tok_s", format!("{:.3}", n_prompt as f64 / prefill_s)),
            ("gen_tokens", format!("{n_gen}")),
            ("decode_tok_s", format!("{:.3}", n_gen as f64 / decode_s)),
            ("gpu_memory_mib", format!("{:.1}", gpu.gpu_bytes() as f64 / (1 << 20) as f64)),
            ("weights_mib", format!("{:.1}", gpu.weight_bytes() as f64 / (1 << 20) as f64)),
            ("kv_cache_mib", format!("{:.1}", gpu.kv_cache_bytes() as f64 / (1 << 20) as f64)),
            ("weights_bytes", format!("{}", gpu.weight_bytes())),
            ("kv_cache_bytes", format!("{}", gpu.kv_cache_bytes())),
            ("max_context", format!("{}", gpu.max_context())),
            ("submits_per_token", format!("{}", s.submits)),
            (
                "sampling",
                format!(
                    "\"{}\"",
                    if sampling.is_greedy() {
                        "greedy".to_string()
                    } else {
                        format!("temperature {} top-k {} top-p {}", sampling.temperature, sampling.top_k, sampling.top_p)
                    }
                ),
            ),
            ("dispatches_per_token", format!("{}", s.dispatches)),
            ("uniform_writes_per_token", format!("{}", s.uniform_writes)),
            ("bytes_read_per_token", format!("{}", s.traffic.read)),
            ("bytes_written_per_token", format!("{}", s.traffic.written)),
            ("logit_passes_per_token", format!("{}", s.logit_passes)),
            ("readback_bytes_per_token", format!("{}", s.readback_bytes)),
        ];
        if args.has("--json") {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("  \"{k}\": {v}")).collect();
            println!("{{\n{}\n}}", body.join(",\n"));
        } else {
            for (k, v) in fields {
                println!("{k:<26} {}", v.trim_matches('"'));
            }
        }
        if args.has("--profile") {
            profile(&mut gpu, &prompt, n_gen, depth, &sampling).await?;
        }
        Ok(())
    }

    /// Prefill `prompt` and decode `n_gen` tokens again with every kernel timed by GPU
    /// timestamps, and print where the time went: per kernel (recorder label / shader), its
    /// dispatches and milliseconds per token and its share.
    async fn profile(gpu: &mut Engine, prompt: &[u32], n_gen: usize, depth: u32, sampling: &Sampling) -> Res<()> {
        if !gpu.set_profiling(true) {
            return Err(format!("--profile: {} has no timestamp queries", gpu.ctx.report.name));
        }
        gpu.reset();
        gpu.assume_cached_for_benchmark(depth).map_err(|e| e.to_string())?;
        let mut next = gpu.step(prompt, sampling).await.map_err(|e| e.to_string())?;
        print_profile(gpu, &format!("prefill of {} tokens", prompt.len()), 1);
        gpu.reset_profile();
        for _ in 0..n_gen {
            next = gpu.step(&[next], sampling).await.map_err(|e| e.to_string())?;
        }
        print_profile(gpu, "decode", n_gen.max(1));
        Ok(())
    }

    /// Per kernel: dispatches, GPU milliseconds and share, the megabytes its dispatches must
    /// move at least (`Traffic`: read + written) and those bytes over its time; then the totals,
    /// and the step's dispatches, uniform writes and passes over the logits.
    fn print_profile(gpu: &Engine, what: &str, per: usize) {
        let Some((kernels, untimed)) = gpu.profile() else { return };
        let total: f64 = kernels.iter().map(|k| k.seconds).sum();
        let bytes = |k: &gemma_webgpu::gpu::KernelTime| k.traffic.read as f64 + k.traffic.written as f64;
        let all_bytes: f64 = kernels.iter().map(bytes).sum();
        let per_f = per as f64;
        println!("\nGPU time, {what} (timestamps; per {}):", if per > 1 { "token" } else { "call" });
        println!("  {:<28} {:>10} {:>10} {:>7} {:>10} {:>8}", "kernel", "dispatches", "ms", "share", "MB", "GB/s");
        for k in &kernels {
            let share = if total > 0.0 { 100.0 * k.seconds / total } else { 0.0 };
            println!(
                "  {:<28} {:>10.1} {:>10.3} {share:>6.1}% {:>10.3} {:>8.2}",
                k.name,
                k.dispatches as f64 / per_f,
                1e3 * k.seconds / per_f,
                bytes(k) / per_f / 1e6,
                k.bytes_per_second() / 1e9
            );
        }
        let gbs = if total > 0.0 { all_bytes / total / 1e9 } else { 0.0 };
        println!("  {:<28} {:>10} {:>10.3} {:>7} {:>10.3} {gbs:>8.2}", "total", "", 1e3 * total / per_f, "", all_bytes / per_f / 1e6);
        let s = gpu.last_step;
        println!("  last step: {} dispatches, {} uniform writes, {} passes over the logits", s.dispatches, s.uniform_writes, s.logit_passes);
        if untimed > 0 {
            println!("  ({untimed} dispatches were not timed: more than one submit's query set holds)");
        }
    }
}
