//! `gemma`: the native command-line tool. Converts Hugging Face checkpoints and GGUF files
//! into our format, writes synthetic models, generates text, dumps logits and benchmarks.
//! Arguments are parsed by clap (`--help`, `--version`, suggestions for typos); every error is
//! one `error:` line on stderr and a non-zero exit code. Progress is drawn as a bar only when
//! stderr is a terminal (a log gets a few plain lines), and `--quiet` silences it and every
//! other informational line on stderr.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    use clap::Parser;
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and --version on stdout with status 0; usage errors on stderr with 2.
            let _ = e.print();
            return std::process::ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::io::{IsTerminal, Write};
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    use clap::{Args, Parser, Subcommand, ValueEnum};
    use gemma_webgpu::convert::{self, Progress};
    use gemma_webgpu::format::DEFAULT_SHARD_BYTES;
    use gemma_webgpu::gpu::{ContextOptions, GpuContext};
    use gemma_webgpu::model::config::ModelConfig;
    use std::rc::Rc;

    use gemma_webgpu::constraint::ConstraintSpec;
    use gemma_webgpu::format::Manifest;
    use gemma_webgpu::model::engine::{Engine, EngineOptions, KvType};
    use gemma_webgpu::model::load::{self, read_manifest};
    use gemma_webgpu::ops::sample::Sampling;
    use gemma_webgpu::quant::DType;
    use gemma_webgpu::session::{Finish, GenerateParams, Session};
    use gemma_webgpu::tokenizer::{Message, Tokenizer};

    type Res<T> = Result<T, String>;

    const TYPES: &str = "TYPE: int4, int8, fp16, f32, or llama.cpp's q4_0, q5_0, q5_1, q4_k, q5_k, q6_k";

    /// Gemma 2 and Gemma 3 (text) on WebGPU through wgpu: convert models to the browser's
    /// format, generate text, dump logits and benchmark, natively.
    #[derive(Parser)]
    #[command(name = "gemma", version, args_override_self = true, arg_required_else_help = true)]
    pub struct Cli {
        /// Print no progress and no informational lines on stderr (errors still go there)
        #[arg(short, long, global = true, display_order = 1000)]
        quiet: bool,
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        Convert(ConvertArgs),
        Synth(SynthArgs),
        Generate(GenerateArgs),
        Logits(LogitsArgs),
        Bench(BenchArgs),
    }

    /// Convert a Hugging Face checkpoint directory or a llama.cpp GGUF file into our format.
    ///
    /// A GGUF keeps each tensor's own type (its blocks, value for value) unless --quant/--embed
    /// say otherwise; a checkpoint becomes int4. A k-quant falls back, for rows that are not
    /// whole 256-value blocks, to int4 (q4_k), q5_1 (q5_k) or int8 (q6_k).
    #[derive(Args)]
    struct ConvertArgs {
        /// A Hugging Face checkpoint directory (config.json, safetensors) or a .gguf file
        #[arg(value_name = "HF_DIR|FILE.GGUF")]
        src: PathBuf,
        /// The model directory to write
        out_dir: PathBuf,
        /// Storage type of the layers' matrices (default: int4 for a checkpoint, a GGUF's own)
        #[arg(long, value_name = "TYPE", long_help = format!("Storage type of the layers' matrices (default: int4 for a checkpoint, a GGUF's own types)\n{TYPES}"))]
        quant: Option<String>,
        /// Storage type of the embedding, also the LM head (default: as --quant)
        #[arg(long, value_name = "TYPE", long_help = format!("Storage type of the embedding, also the LM head (default: as --quant)\n{TYPES}"))]
        embed: Option<String>,
        /// Largest shard, in MiB
        #[arg(long, value_name = "MIB", default_value_t = DEFAULT_SHARD_BYTES >> 20)]
        shard_mb: u64,
    }

    /// Write a model of a real shape with seeded random weights (benchmarks, memory tests).
    #[derive(Args)]
    struct SynthArgs {
        /// The model directory to write
        out_dir: PathBuf,
        /// The shape: 2b, 9b, 27b, demo, or a Hugging Face config.json
        #[arg(long, value_name = "2b|9b|27b|demo|CONFIG.JSON")]
        preset: String,
        /// Storage type of the weights
        #[arg(long, value_name = "TYPE", long_help = format!("Storage type of the weights (default: int4)\n{TYPES}"))]
        quant: Option<String>,
        /// Seed of the random weights
        #[arg(long, value_name = "N", default_value_t = 0)]
        seed: u64,
        /// Largest shard, in MiB
        #[arg(long, value_name = "MIB", default_value_t = DEFAULT_SHARD_BYTES >> 20)]
        shard_mb: u64,
        /// A tokenizer.json to put in the model
        #[arg(long, value_name = "TOKENIZER.JSON")]
        tokenizer: Option<PathBuf>,
    }

    /// Generate text from a prompt (or token ids), streamed to stdout.
    ///
    /// Generation runs as in the browser: the same end tokens (EOS, <end_of_turn>,
    /// <start_of_turn>), stop strings, defaults and whole-character streaming. With --json,
    /// nothing is streamed: one JSON object is printed at the end, with the text, why it
    /// ended, the token counts and the timings.
    #[derive(Args)]
    #[command(group = clap::ArgGroup::new("input").required(true).multiple(true).args(["prompt", "tokens"]))]
    struct GenerateArgs {
        /// A model directory written by convert or synth
        model_dir: PathBuf,
        /// The prompt, as text (the model needs a tokenizer.json)
        #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
        prompt: Option<String>,
        /// The prompt as token ids (used when there is no --prompt)
        #[arg(long, value_name = "2,651,...")]
        tokens: Option<String>,
        /// Wrap --prompt in the chat template as a user turn
        #[arg(long)]
        chat: bool,
        /// Most tokens to generate
        #[arg(long, value_name = "N", default_value_t = GenerateParams::default().max_tokens)]
        max_tokens: u32,
        /// Sampling temperature; 0 is greedy (arg-max)
        #[arg(long, value_name = "T", default_value_t = GenerateParams::default().sampling.temperature)]
        temperature: f32,
        /// Sample among the K likeliest tokens (0: all)
        #[arg(long, value_name = "K", default_value_t = GenerateParams::default().sampling.top_k)]
        top_k: u32,
        /// Sample among the likeliest tokens whose probabilities add up to P
        #[arg(long, value_name = "P", default_value_t = GenerateParams::default().sampling.top_p)]
        top_p: f32,
        /// Seed of the sampler
        #[arg(long, value_name = "N", default_value_t = GenerateParams::default().sampling.seed)]
        seed: u32,
        /// End the text before this string (repeatable)
        #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
        stop: Vec<String>,
        /// Read special-token strings in --prompt (<start_of_turn>, ...) as those tokens
        #[arg(long)]
        special_tokens: bool,
        /// Print one JSON object (text, finish_reason, usage, timings) instead of streaming
        #[arg(long)]
        json: bool,
        /// Generate only JSON valid against the JSON schema in FILE
        #[arg(long, value_name = "FILE", group = "constraint")]
        json_schema: Option<PathBuf>,
        /// Generate only text the grammar in FILE matches (llguidance's Lark syntax)
        #[arg(long, value_name = "FILE", group = "constraint")]
        grammar: Option<PathBuf>,
        /// Generate only text the regular expression matches
        #[arg(long, value_name = "PATTERN", group = "constraint", allow_hyphen_values = true)]
        regex: Option<String>,
        #[command(flatten)]
        engine: EngineArgs,
    }

    /// The engine's options shared by generate, logits and bench.
    #[derive(Args)]
    struct EngineArgs {
        /// KV-cache length in tokens (default: 4096, or the model's maximum if smaller)
        #[arg(long, value_name = "N")]
        max_context: Option<u32>,
        /// Keep the KV cache in f32 instead of fp16
        #[arg(long)]
        kv_f32: bool,
    }

    /// Write a prompt's logits (one row per token) to a NumPy .npy file.
    #[derive(Args)]
    struct LogitsArgs {
        /// A model directory written by convert or synth
        model_dir: PathBuf,
        /// The prompt's token ids
        #[arg(long, value_name = "2,651,...")]
        tokens: String,
        /// Run the tokens one at a time (decode) instead of as one prompt (prefill)
        #[arg(long)]
        decode: bool,
        /// The .npy file to write (float32, tokens x vocabulary)
        #[arg(long, value_name = "FILE.NPY")]
        out: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
    }

    #[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
    enum Attention {
        Split,
        Blocked,
    }

    /// Time a prefill and a decode on a synthetic prompt, and count what a token costs.
    #[derive(Args)]
    struct BenchArgs {
        /// A model directory written by convert or synth
        model_dir: PathBuf,
        /// Tokens in the prompt (prefill)
        #[arg(long, value_name = "N", default_value_t = 128)]
        prompt_tokens: usize,
        /// Tokens to decode after it
        #[arg(long, value_name = "N", default_value_t = 32)]
        gen_tokens: usize,
        /// Print the results as one JSON object
        #[arg(long)]
        json: bool,
        /// Run again with GPU timestamps and print the time per kernel
        #[arg(long)]
        profile: bool,
        /// Start the prompt at position N of a cache taken as full
        #[arg(
            long,
            value_name = "N",
            default_value_t = 0,
            long_help = "Start the prompt at position N of a cache taken as full (not computed: the timing of a long conversation without its prefill)"
        )]
        depth: u32,
        /// Decode attention split across the keys, or one workgroup per query head and query
        #[arg(
            long,
            value_enum,
            default_value_t = Attention::Split,
            long_help = "blocked: attention with one workgroup per (query head, query), instead of split across the keys (decode) and one workgroup per KV head and 8 query rows (prefill), for comparison"
        )]
        attention: Attention,
        /// Draw with generate's default sampling instead of greedy arg-max
        #[arg(long, long_help = "Draw with generate's default sampling (temperature 0.7, top-k 64, top-p 0.95) instead of greedy arg-max")]
        sample: bool,
        /// Decode through the separate kernels a prompt takes instead of the fused ones
        #[arg(
            long,
            long_help = "Decode q/k/v and gate/up through the separate kernels a prompt takes (products, RoPE, KV write, GeGLU) instead of the fused ones"
        )]
        unfused: bool,
        /// Read each token back before submitting the next step (default: pipelined)
        #[arg(long, long_help = "Read each token back before submitting the next step (decode is pipelined by default, as generate runs it)")]
        sequential: bool,
        /// Sum the matrix-vector kernels' lanes through workgroup memory, as in a browser
        #[arg(long, long_help = "The matrix-vector kernels sum their lanes through workgroup memory even where the adapter has subgroups (as in a browser)")]
        no_subgroups: bool,
        #[command(flatten)]
        engine: EngineArgs,
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

    /// `--quant`/`--embed`'s type, if given.
    fn named(flag: &str, value: Option<&str>) -> Res<Option<DType>> {
        value.map(|q| quant_named(q).map_err(|e| format!("{flag}: {e}"))).transpose()
    }

    fn shard_bytes(mib: u64) -> Res<u64> {
        mib.checked_mul(1 << 20).filter(|b| *b > 0).ok_or_else(|| format!("--shard-mb: {mib} is not a shard size"))
    }

    /// The structured output `generate` asks for: a JSON schema file, a Lark grammar file or a
    /// regular expression.
    fn constraint(args: &GenerateArgs) -> Res<Option<ConstraintSpec>> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
        Ok(match (&args.json_schema, &args.grammar, &args.regex) {
            (Some(file), _, _) => {
                let schema: serde_json::Value = serde_json::from_str(&read(file)?).map_err(|e| format!("{}: not JSON: {e}", file.display()))?;
                Some(ConstraintSpec::JsonSchema(schema))
            }
            (None, Some(file), _) => Some(ConstraintSpec::Lark(read(file)?)),
            (None, None, Some(pattern)) => Some(ConstraintSpec::Regex(pattern.clone())),
            (None, None, None) => None,
        })
    }

    fn parse_tokens(s: &str) -> Res<Vec<u32>> {
        s.split(',').map(|t| t.trim().parse::<u32>().map_err(|_| format!("--tokens: '{t}' is not a token id"))).collect()
    }

    /// The device, with subgroups unless `no_subgroups`.
    async fn context(no_subgroups: bool) -> Res<GpuContext> {
        GpuContext::new(&ContextOptions { no_subgroups, ..Default::default() }).await.map_err(|e| e.to_string())
    }

    /// The engine for `dir`, with `--max-context` and `--kv-f32` (defaults: `EngineOptions`).
    async fn load(dir: &Path, manifest: &Manifest, engine: &EngineArgs, no_subgroups: bool) -> Res<Engine> {
        let options = EngineOptions { max_context: engine.max_context, kv: KvType::f32_if(engine.kv_f32), ..Default::default() };
        load::load(context(no_subgroups).await?, manifest, &load::Dir { dir, manifest }, options).await.map_err(|e| e.to_string())
    }

    async fn load_dir(dir: &Path, engine: &EngineArgs, no_subgroups: bool) -> Res<Engine> {
        let manifest = read_manifest(dir).map_err(|e| e.to_string())?;
        load(dir, &manifest, engine, no_subgroups).await
    }

    pub fn run(cli: Cli) -> Res<()> {
        let quiet = cli.quiet;
        match &cli.command {
            Command::Convert(a) => cmd_convert(a, quiet),
            Command::Synth(a) => cmd_synth(a, quiet),
            Command::Generate(a) => pollster::block_on(cmd_generate(a, quiet)),
            Command::Logits(a) => pollster::block_on(cmd_logits(a, quiet)),
            Command::Bench(a) => pollster::block_on(cmd_bench(a)),
        }
    }

    /// Runs `write` with the progress a conversion shows: none when `quiet`, a bar redrawn in
    /// place when stderr is a terminal, and otherwise (a log, a pipe) the converter's few plain
    /// lines (one per quarter of the tensors).
    fn with_progress<T>(quiet: bool, write: impl FnOnce(Progress) -> T) -> T {
        if quiet {
            return write(Progress::Silent);
        }
        if !std::io::stderr().is_terminal() {
            return write(Progress::Stderr);
        }
        let bar = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} tensors, {msg}, eta {eta}")
            .map(|s| s.progress_chars("#>-"))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        let mut report = |done: usize, total: usize, bytes: u64| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(format!("{:.1} MiB", mib(bytes)));
        };
        let result = write(Progress::Report(&mut report));
        bar.finish();
        result
    }

    fn mib(bytes: u64) -> f64 {
        bytes as f64 / (1 << 20) as f64
    }

    fn cmd_convert(args: &ConvertArgs, quiet: bool) -> Res<()> {
        let (src, out) = (&args.src, &args.out_dir);
        let shard = shard_bytes(args.shard_mb)?;
        let is_gguf = src.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if src.is_file() && !is_gguf {
            return Err(format!("{} is a file; convert takes a Hugging Face checkpoint directory or a .gguf file", src.display()));
        }
        // A GGUF keeps its own types unless told otherwise; a checkpoint becomes int4.
        let matrices = named("--quant", args.quant.as_deref())?.or((!is_gguf).then_some(DType::Int4));
        let embedding = named("--embed", args.embed.as_deref())?.or(matrices);
        let quant = convert::Quant { matrices, embedding };
        let m = with_progress(quiet, |progress| {
            if is_gguf {
                convert::convert_gguf(src, out, quant, shard, progress)
            } else {
                convert::convert_hf(src, out, quant, shard, progress)
            }
        })
        .map_err(|e| e.to_string())?;
        if !quiet {
            eprintln!(
                "wrote {} ({} shards, {:.1} MiB){}",
                out.display(),
                m.shards.len(),
                mib(m.total_bytes()),
                if m.tokenizer.is_some() { ", with tokenizer" } else { ", no tokenizer.json found" }
            );
        }
        Ok(())
    }

    fn cmd_synth(args: &SynthArgs, quiet: bool) -> Res<()> {
        let out = &args.out_dir;
        let preset = args.preset.as_str();
        let config = if preset.ends_with(".json") {
            let text = std::fs::read_to_string(preset).map_err(|e| format!("{preset}: {e}"))?;
            ModelConfig::from_hf_json(&text).map_err(|e| e.to_string())?
        } else {
            convert::preset(preset).map_err(|e| e.to_string())?
        };
        let shard = shard_bytes(args.shard_mb)?;
        let quant = named("--quant", args.quant.as_deref())?.unwrap_or(DType::Int4);
        let mut m = with_progress(quiet, |progress| convert::synth(config, out, quant, args.seed, shard, progress)).map_err(|e| e.to_string())?;
        if let Some(tok) = &args.tokenizer {
            m = convert::attach_tokenizer(out, tok).map_err(|e| e.to_string())?;
        }
        if !quiet {
            eprintln!("wrote {} ({} shards, {:.1} MiB)", out.display(), m.shards.len(), mib(m.total_bytes()));
        }
        Ok(())
    }

    /// `generate --json`: the text, why it ended (`Finish::name`), the token counts and the
    /// timings (`GenerateStats`), in this order.
    #[derive(serde::Serialize)]
    struct GenerateJson<'a> {
        text: String,
        finish_reason: &'a str,
        usage: Usage,
        timings: Timings,
    }

    #[derive(serde::Serialize)]
    struct Usage {
        prompt_tokens: u32,
        /// Prompt tokens whose K/V were already cached (always 0 for one command's one call).
        reused_tokens: u32,
        completion_tokens: u32,
    }

    #[derive(serde::Serialize)]
    struct Timings {
        prefill_tokens: u32,
        prefill_seconds: f64,
        prefill_tokens_per_second: f64,
        decode_seconds: f64,
        decode_tokens_per_second: f64,
    }

    /// Generation runs on `Session`, as in the browser: the same end tokens (EOS,
    /// `<end_of_turn>`, `<start_of_turn>`), stop strings, defaults and whole-character streaming.
    async fn cmd_generate(args: &GenerateArgs, quiet: bool) -> Res<()> {
        let dir = &args.model_dir;
        let manifest = read_manifest(dir).map_err(|e| e.to_string())?;
        let tokenizer = match &manifest.tokenizer {
            Some(file) => {
                let bytes = std::fs::read(dir.join(file)).map_err(|e| format!("{}: {e}", dir.join(file).display()))?;
                let tok = Tokenizer::from_json(&bytes, manifest.config.bos_token_id).map_err(|e| e.to_string())?;
                tok.check_fits(manifest.config.vocab_size).map_err(|e| e.to_string())?;
                Some(Rc::new(tok))
            }
            None => None,
        };
        let params = GenerateParams {
            max_tokens: args.max_tokens,
            sampling: Sampling { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, seed: args.seed },
            stop: args.stop.clone(),
            special_tokens: args.special_tokens,
            constraint: constraint(args)?,
            ..Default::default()
        };
        let tokens = match (&args.prompt, &args.tokens) {
            (None, Some(ids)) => Some(parse_tokens(ids)?),
            _ => None,
        };
        let engine = load(dir, &manifest, &args.engine, false).await?;
        let mut session = Session::new(engine, tokenizer);
        // Streamed to stdout as it comes, or kept for the JSON object.
        let mut text = String::new();
        let mut out = std::io::stdout();
        let mut on_text = |piece: &str| {
            if args.json {
                text.push_str(piece);
            } else {
                let _ = write!(out, "{piece}");
                let _ = out.flush();
            }
        };
        let never = || false;
        let s = &mut session;
        match (&args.prompt, tokens) {
            (Some(prompt), _) if args.chat => s.chat(&[Message { role: "user".into(), content: prompt.clone() }], &params, &mut on_text, &never).await,
            (Some(prompt), _) => s.generate(prompt, &params, &mut on_text, &never).await,
            (None, Some(ids)) => s.generate_with(&ids, &params, &mut on_text, &never).await,
            (None, None) => return Err("generate needs --prompt or --tokens".into()),
        }
        .map_err(|e| e.to_string())?;
        let st = session.stats;
        if args.json {
            let v = GenerateJson {
                text,
                finish_reason: st.finish.name(),
                usage: Usage { prompt_tokens: st.prompt_tokens, reused_tokens: st.reused_tokens, completion_tokens: st.decode_tokens },
                timings: Timings {
                    prefill_tokens: st.prefill_tokens,
                    prefill_seconds: st.prefill_seconds,
                    prefill_tokens_per_second: st.prefill_tokens_per_second(),
                    decode_seconds: st.decode_seconds,
                    decode_tokens_per_second: st.decode_tokens_per_second(),
                },
            };
            let line = serde_json::to_string(&v).map_err(|e| e.to_string())?;
            // Not println!, which panics when the reader has gone (`| head`).
            let _ = writeln!(std::io::stdout(), "{line}");
        } else {
            let _ = writeln!(std::io::stdout());
            if !quiet {
                eprintln!("[{} tokens at {:.2} tok/s; ended by {}]", st.decode_tokens, st.decode_tokens_per_second(), st.finish.name());
            }
        }
        if st.finish == Finish::Context && !quiet {
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

    async fn cmd_logits(args: &LogitsArgs, quiet: bool) -> Res<()> {
        let tokens = parse_tokens(&args.tokens)?;
        let out = &args.out;
        let mut gpu = load_dir(&args.model_dir, &args.engine, false).await?;
        let logits = gpu.logits(&tokens, args.decode).await.map_err(|e| e.to_string())?;
        write_npy(out, tokens.len(), gpu.config.vocab_size as usize, &logits)?;
        if !quiet {
            eprintln!("wrote {} [{} x {}]", out.display(), tokens.len(), gpu.config.vocab_size);
        }
        Ok(())
    }

    async fn cmd_bench(args: &BenchArgs) -> Res<()> {
        let dir = &args.model_dir;
        let (n_prompt, n_gen, depth) = (args.prompt_tokens, args.gen_tokens, args.depth);
        let t0 = Instant::now();
        let mut gpu = load_dir(dir, &args.engine, args.no_subgroups).await?;
        if args.attention == Attention::Blocked {
            gpu.set_split_decode_attention(false);
        }
        if args.unfused {
            gpu.set_fused_decode(false);
        }
        let load_s = t0.elapsed().as_secs_f64();
        let v = gpu.config.vocab_size;
        // Token ids spread over the vocabulary past the first three (pad, EOS, BOS).
        let spread = u64::from(v).saturating_sub(3).max(1);
        let prompt: Vec<u32> = std::iter::once(gpu.config.bos_token_id).chain((1..n_prompt as u64).map(|i| ((i * 7919 + 11) % spread + 3) as u32)).collect();
        let sampling = if args.sample { GenerateParams::default().sampling } else { Sampling::GREEDY };
        // Warm-up: compiles nothing new, but first submits on some drivers are slow.
        gpu.step(&prompt[..1], &sampling).await.map_err(|e| e.to_string())?;
        gpu.reset();
        gpu.assume_cached_for_benchmark(depth).map_err(|e| e.to_string())?;
        let t1 = Instant::now();
        let mut next = gpu.step(&prompt, &sampling).await.map_err(|e| e.to_string())?;
        let prefill_s = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        if args.sequential {
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
        if args.json {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("  \"{k}\": {v}")).collect();
            println!("{{\n{}\n}}", body.join(",\n"));
        } else {
            for (k, v) in fields {
                println!("{k:<26} {}", v.trim_matches('"'));
            }
        }
        if args.profile {
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
