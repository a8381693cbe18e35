//! Subcommands, one file each; shared argument groups live here.

mod bench;
mod bench_train;
mod chat;
mod convert;
mod eval;
mod export;
mod export_mnn;
mod generate;
mod init;
mod inspect;
mod logits;
mod lora;
mod reward;
mod selftest_fused;
mod selftest_train_step;
mod serve;
mod template;
mod tokenize;
mod train;
mod train_tokenizer;
mod validate;

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device};
use clap::{Args, Parser, Subcommand};

use mm::converters::checkpoint::parse_dtype;
use mm::converters::pth::checkpoint::PthHints;
use mm::chat::{ChatTemplate, Tokenizer};
use mm::converters::{MiniMindConfig, TokenizerFiles};
use mm::generate::SamplingParams;
use mm::loaded::{LoadOptions, LoadedModel};
use mm::model::is_gguf_path;

#[derive(Parser)]
#[command(name = "mm", version, about = "MiniMind toolchain: models, conversion, generation")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Replace an existing output even when it is not an earlier output of mm's (a foreign
    /// file, or a directory holding files the new output would not write again). Without it
    /// such a target is refused; devices, FIFOs and links are refused either way.
    #[arg(long, global = true)]
    force: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Create a randomly initialised model (HF dir or .pth) from a preset or a custom shape.
    Init(init::InitArgs),
    /// Convert a checkpoint: .pth, HF MiniMind, HF Llama, HF Qwen2-MoE, unquantized GGUF.
    Convert(convert::ConvertArgs),
    /// Export for a runtime: gguf (llama.cpp, quantized), hf (vLLM/transformers), ollama, mnn.
    Export(export::ExportArgs),
    /// Describe a checkpoint: format, config, tensors, tokenizer.
    Inspect(inspect::InspectArgs),
    /// Generate a reply to one prompt (streams to stdout).
    Generate(generate::GenerateArgs),
    /// Interactive chat with history and a system prompt.
    Chat(chat::ChatArgs),
    /// The logits of every position of a text or id list, as JSON (to compare engines).
    Logits(logits::LogitsArgs),
    /// Measure load time and prefill/decode speed.
    Bench(bench::BenchArgs),
    /// Evaluate: perplexity of text (--task ppl) or multiple-choice accuracy, C-Eval style (--task mc).
    Eval(eval::EvalArgs),
    /// Serve the model over an OpenAI-compatible HTTP API with continuous batching.
    Serve(serve::ServeArgs),
    /// Chat templates: render a conversation exactly as transformers does.
    Template(template::TemplateArgs),
    /// Encode text to token ids, or decode ids.
    Tokenize(tokenize::TokenizeArgs),
    /// Train: pretrain, sft, lora, dpo, distill, reason (upstream's stages and defaults).
    Train(train::TrainArgs),
    /// LoRA adapters: `mm lora merge BASE LORA.pth -o OUT` folds one into the weights.
    Lora(lora::LoraArgs),
    /// Train a byte-level BPE tokenizer (upstream train_tokenizer.py) on jsonl text.
    TrainTokenizer(train_tokenizer::TrainTokenizerArgs),
    /// Score DPO-format pairs with a reward model: per-pair scores and pairwise accuracy.
    Reward(reward::RewardArgs),
    /// Check a deployment artefact: `mm validate hf DIR` (vLLM/transformers), `mm validate ollama DIR`.
    Validate(validate::ValidateArgs),
    /// The fused training ops on a device against their CPU path, and their speed.
    #[command(hide = true)]
    SelftestFused(selftest_fused::SelftestFusedArgs),
    /// The upstream training-fixture step on a device (for GPU machines without cargo).
    #[command(hide = true)]
    SelftestTrainStep(selftest_train_step::SelftestTrainStepArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    mm::converters::output_guard::set_force(cli.force);
    match cli.command {
        Command::Init(a) => init::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Export(a) => export::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Logits(a) => logits::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Template(a) => template::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Train(a) => train::run(a),
        Command::TrainTokenizer(a) => train_tokenizer::run(a),
        Command::Lora(a) => lora::run(a),
        Command::Reward(a) => reward::run(a),
        Command::Validate(a) => validate::run(a),
        Command::SelftestFused(a) => selftest_fused::run(a),
        Command::SelftestTrainStep(a) => selftest_train_step::run(a),
    }
}

/// What a bare upstream `.pth` cannot say about itself.
#[derive(Args, Clone, Default)]
pub struct ShapeHints {
    /// config.json to use for a .pth (default: `<stem>.config.json` or `config.json` beside it,
    /// else inferred from tensor shapes).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Attention heads when the config is inferred from a .pth (upstream default 8).
    #[arg(long)]
    heads: Option<usize>,
}

impl ShapeHints {
    fn to_hints(&self) -> Result<PthHints> {
        Ok(PthHints {
            config: self.config.as_deref().map(MiniMindConfig::from_file).transpose()?,
            num_attention_heads: self.heads,
        })
    }
}

/// A model to run.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A .pth file, an HF model directory or a .gguf file (quantized GGUFs run as they are).
    model: PathBuf,
    #[command(flatten)]
    hints: ShapeHints,
    /// Upstream LoRA .pth applied on the fly.
    #[arg(long)]
    lora: Option<PathBuf>,
    /// Compute dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Turn on upstream's YaRN RoPE extrapolation (`inference_rope_scaling`).
    #[arg(long)]
    rope_scaling: bool,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Dequantize a quantized GGUF to dense weights instead of running its blocks directly.
    #[arg(long)]
    dequantize: bool,
    /// cpu, cuda or cuda:N (CUDA needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl ModelArgs {
    fn path(&self) -> &Path {
        &self.model
    }

    fn load(&self) -> Result<LoadedModel> {
        set_threads(self.threads);
        let opts = LoadOptions {
            hints: self.hints.to_hints()?,
            lora: self.lora.as_deref(),
            dtype: parse_dtype(&self.dtype)?,
            device: device_arg(&self.device)?,
            rope_scaling: self.rope_scaling,
            dequantize: self.dequantize,
        };
        LoadedModel::load(&self.model, &opts)
    }
}

/// candle's CPU kernels size their thread pool from RAYON_NUM_THREADS at first use; the
/// inference engine's pool (`mm_kernels::pool`) is sized here too.
fn set_threads(threads: Option<usize>) {
    if let Some(n) = threads {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        mm_kernels::pool::set_threads(n);
    }
}

/// Sampling flags, defaults as upstream `eval_llm.py`.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.85)]
    temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this.
    #[arg(long, default_value_t = 0.85)]
    top_p: f64,
    /// 0 disables top-k (HF's default is 50).
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    /// Divides the logits of tokens already in the context (1 = off, HF's rule).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f64,
    /// Stop after this many generated tokens.
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Greedy decoding (same as --temperature 0).
    #[arg(long)]
    greedy: bool,
}

impl SamplingArgs {
    fn params(&self, stop_ids: Vec<u32>) -> SamplingParams {
        SamplingParams {
            temperature: if self.greedy { 0.0 } else { self.temperature },
            top_p: self.top_p,
            top_k: self.top_k,
            repetition_penalty: self.repetition_penalty,
            max_new_tokens: self.max_new_tokens,
            seed: self.seed,
            stop_ids,
        }
    }
}

pub fn dtype_arg(name: &str) -> Result<DType> {
    parse_dtype(name)
}

/// `--device`: `cpu`, `cuda` (GPU 0) or `cuda:N`.
pub fn device_arg(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    let ordinal = match name.as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:") {
            Some(n) => n.parse::<usize>().map_err(|_| anyhow::anyhow!("--device {other:?}: expected cuda:N with N a GPU number"))?,
            None => anyhow::bail!("--device {other:?}: expected cpu, cuda or cuda:N"),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        anyhow::bail!("--device {name}: this mm was built without CUDA; see scripts/build-cuda.sh");
    }
    mm::device::open_cuda(ordinal).map_err(|e| anyhow::anyhow!("--device {name}: cannot open CUDA device {ordinal}: {e:#}"))
}

/// `in.pth` → `in-hf`, `dir` → `dir.pth`, …: a default output path beside the input.
pub fn default_output(input: &Path, suffix: &str) -> PathBuf {
    let stem = input
        .file_stem()
        .or_else(|| input.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    input.with_file_name(format!("{stem}{suffix}"))
}

/// The tokenizer and chat template of a tokenizer directory or any model (default: the
/// built-in MiniMind2 tokenizer).
pub fn tokenizer_source(path: Option<&Path>) -> Result<(Tokenizer, Option<ChatTemplate>)> {
    use anyhow::Context;
    let files = match path {
        None => TokenizerFiles::builtin_minimind2(),
        Some(p) if p.is_dir() && !p.join("config.json").exists() => mm::converters::hf::read_tokenizer_files(p)?,
        Some(p) if is_gguf_path(p) => {
            let file = mm::converters::gguf::file::GgufFile::open(p)?;
            mm::converters::gguf::vocab::GgufVocab::from_metadata(&file.metadata, &p.display().to_string())?.to_tokenizer_files()?
        }
        Some(p) => mm::converters::read_checkpoint(p, &PthHints::default())?.tokenizer,
    };
    let (tokenizer, template) = match path {
        Some(p) => {
            let (tokenizer, template) = mm::loaded::tokenizer_and_template(&files).with_context(|| format!("{}", p.display()))?;
            (tokenizer, template.map(|t| t.with_origin(p.display().to_string())))
        }
        None => mm::loaded::tokenizer_and_template(&files)?,
    };
    Ok((tokenizer, template))
}

/// The contents of a file argument, or stdin for `-`.
pub fn read_text_arg(arg: &str) -> Result<String> {
    use anyhow::Context;
    use mm::converters::limits::{read_to_string, MAX_CONFIG_BYTES};
    if arg == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(std::io::stdin(), MAX_CONFIG_BYTES + 1), &mut s)?;
        if s.len() as u64 > MAX_CONFIG_BYTES {
            anyhow::bail!("stdin: more than the {MAX_CONFIG_BYTES} bytes mm reads");
        }
        Ok(s)
    } else {
        read_to_string(Path::new(arg), MAX_CONFIG_BYTES, "file").with_context(|| format!("cannot read {arg}"))
    }
}
