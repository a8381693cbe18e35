//! `mm export`: deployment targets. `mm export gguf` = llama.cpp's converter + llama-quantize
//! in one step; `mm export ollama` = that GGUF plus a Modelfile whose TEMPLATE is the model's
//! chat template in Go; `mm export mnn` (export_mnn.rs) = MNN's llmexport.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use mm::converters::gguf::checkpoint::{GgufOptions, SourcePrecision};
use mm::converters::gguf::mixture::QuantScheme;
use mm::converters::read_checkpoint;
use mm::export::llamacpp;

use super::{default_output, ShapeHints};

#[derive(Args)]
pub struct ExportArgs {
    #[command(subcommand)]
    target: Target,
}

#[derive(Subcommand)]
enum Target {
    /// GGUF for llama.cpp (and everything built on it), quantized like llama-quantize.
    Gguf(GgufArgs),
    /// HF directory vLLM and transformers load natively: dense → LlamaForCausalLM, MoE →
    /// Qwen2MoeForCausalLM (exact), checked by `mm validate hf` afterwards.
    Hf(HfArgs),
    /// A directory for `ollama create`: the GGUF and a Modelfile (Go TEMPLATE, stops,
    /// parameters), checked by `mm validate ollama` afterwards.
    Ollama(OllamaArgs),
    /// A directory for MNN's LLM runtime: llm.mnn graph, 4/8-bit llm.mnn.weight,
    /// tokenizer.mtok and configs (what MNN's llmexport.py writes).
    Mnn(super::export_mnn::MnnArgs),
}

#[derive(Args)]
pub struct GgufArgs {
    /// Any checkpoint mm reads: .pth, HF directory (MiniMind or Llama layout), .gguf.
    input: PathBuf,
    /// Output file (default: `<input>-<quant>.gguf` beside the input).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k.
    #[arg(long, default_value = "q4_k_m")]
    quant: String,
    /// Precision the weights pass through first: f16 reproduces llama.cpp's route (HF fp16 →
    /// F16 GGUF → llama-quantize) bit for bit; f32 quantizes the checkpoint's own values.
    /// Default: f16, except for --quant f32 / bf16.
    #[arg(long)]
    source_precision: Option<String>,
    /// general.name (default: the input's file name).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    hints: ShapeHints,
}

pub fn run(a: ExportArgs) -> Result<()> {
    match a.target {
        Target::Gguf(g) => gguf(g),
        Target::Hf(h) => hf(h),
        Target::Ollama(o) => ollama(o),
        Target::Mnn(m) => super::export_mnn::run(m),
    }
}

fn gguf(a: GgufArgs) -> Result<()> {
    let Some(scheme) = QuantScheme::parse(&a.quant) else {
        let known: Vec<_> = QuantScheme::ALL.iter().map(|s| s.name()).collect();
        bail!("unknown --quant {:?} (known: {})", a.quant, known.join(", "));
    };
    let source_precision = match a.source_precision.as_deref() {
        Some("f16") => SourcePrecision::F16,
        Some("f32") => SourcePrecision::Exact,
        Some(other) => bail!("--source-precision {other:?}: use f16 or f32"),
        None if matches!(scheme, QuantScheme::F32 | QuantScheme::BF16) => SourcePrecision::Exact,
        None => SourcePrecision::F16,
    };
    let started = Instant::now();
    let ckpt = read_checkpoint(&a.input, &a.hints.to_hints()?)?;
    let output = a.output.unwrap_or_else(|| default_output(&a.input, &format!("-{}.gguf", scheme.name())));
    mm::converters::output_guard::check_not_an_input(&output, &[&a.input])?;
    let name = a.name.unwrap_or_else(|| {
        let base = a.input.file_stem().or_else(|| a.input.file_name());
        base.map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "MiniMind".into())
    });
    let options = GgufOptions { scheme, source_precision, name };

    let bar = if std::io::stderr().is_terminal() { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg:32} [{bar:30}] {pos}/{len} tensors ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let summary = llamacpp::export_gguf(&ckpt, &output, &options, &|done, total, tensor| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(tensor.to_string());
    })?;
    bar.finish_and_clear();
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "wrote {} ({}, {} tensors) from {} in {:.2} s",
        output.display(),
        scheme.name(),
        summary.tensors.len(),
        ckpt,
        started.elapsed().as_secs_f64()
    );
    println!("{}", llamacpp::describe(&summary));
    Ok(())
}

#[derive(Args)]
pub struct HfArgs {
    /// Any checkpoint mm reads: .pth, HF directory, .gguf.
    input: PathBuf,
    /// Output directory (default: `<input>-<arch>` beside the input).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// llama (dense, LlamaForCausalLM), qwen2-moe (MoE, Qwen2MoeForCausalLM) or minimind
    /// (MiniMindForCausalLM, remote code; not servable by vLLM). Default: llama for dense
    /// models, qwen2-moe for MoE.
    #[arg(long)]
    arch: Option<String>,
    /// Cast every tensor: f32, f16 or bf16 (default: keep).
    #[arg(long)]
    dtype: Option<String>,
    /// Shard the safetensors past this size, with model.safetensors.index.json (5GB, 200MB, 2GiB, bytes).
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
    #[command(flatten)]
    hints: ShapeHints,
}

fn hf(a: HfArgs) -> Result<()> {
    use mm::export::hf::{export_hf, parse_size, HfArch, HfExportOptions};
    use mm::export::validate_hf::describe;

    let started = Instant::now();
    let max_shard_bytes = parse_size(&a.max_shard_size)?;
    let arch = a.arch.as_deref().map(HfArch::parse).transpose()?;
    let dtype = a.dtype.as_deref().map(super::dtype_arg).transpose()?;
    let ckpt = read_checkpoint(&a.input, &a.hints.to_hints()?)?;
    for note in &ckpt.provenance.notes {
        eprintln!("note: {note}");
    }
    let arch = arch.unwrap_or_else(|| HfArch::native_for(&ckpt));
    let output = a.output.unwrap_or_else(|| default_output(&a.input, &format!("-{}", arch.name())));
    mm::converters::output_guard::check_not_an_input(&output, &[&a.input])?;
    let probe = super::validate::template_probe;
    let opts = HfExportOptions { arch, dtype, max_shard_bytes, template_probe: Some(&probe) };
    let summary = export_hf(&ckpt, &output, &opts)?;
    for note in &summary.notes {
        eprintln!("note: {note}");
    }
    println!(
        "wrote {} ({}) from {} in {:.2} s",
        output.display(),
        arch.class(),
        ckpt,
        started.elapsed().as_secs_f64()
    );
    println!("{}", describe(&summary.report));
    if arch != HfArch::MiniMind && !summary.report.ok() {
        bail!("{}: the export does not validate ({} errors)", output.display(), summary.report.errors.len());
    }
    Ok(())
}

#[derive(Args)]
pub struct OllamaArgs {
    /// Any checkpoint mm reads: .pth, HF directory (MiniMind or Llama layout), .gguf.
    input: PathBuf,
    /// Output directory (gets model-<quant>.gguf and Modelfile).
    #[arg(short, long)]
    output: PathBuf,
    /// f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k.
    #[arg(long, default_value = "q4_k_m")]
    quant: String,
    /// A SYSTEM prompt (by default none: the chat template's own default applies).
    #[arg(long)]
    system: Option<String>,
    /// PARAMETER NAME=VALUE, checked as ollama checks it (repeatable; `stop=…` adds a stop).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// A file whose text becomes the Modelfile's LICENSE.
    #[arg(long)]
    license: Option<PathBuf>,
    /// general.name (default: the input's file name).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    hints: ShapeHints,
}

fn ollama(a: OllamaArgs) -> Result<()> {
    use anyhow::Context;
    use mm::export::ollama::{self, validate::CaseStatus};

    let Some(scheme) = QuantScheme::parse(&a.quant) else {
        let known: Vec<_> = QuantScheme::ALL.iter().map(|s| s.name()).collect();
        bail!("unknown --quant {:?} (known: {})", a.quant, known.join(", "));
    };
    let source_precision =
        if matches!(scheme, QuantScheme::F32 | QuantScheme::BF16) { SourcePrecision::Exact } else { SourcePrecision::F16 };
    let params = a.params.iter().map(|p| ollama::parse_param(p)).collect::<Result<Vec<_>>>()?;
    let license = a
        .license
        .as_ref()
        .map(|p| {
            mm::converters::limits::read_to_string(p, mm::converters::limits::MAX_CONFIG_BYTES, "license")
                .with_context(|| format!("cannot read --license {}", p.display()))
        })
        .transpose()?;
    let started = Instant::now();
    let ckpt = read_checkpoint(&a.input, &a.hints.to_hints()?)?;
    let name = a.name.unwrap_or_else(|| {
        let base = a.input.file_stem().or_else(|| a.input.file_name());
        base.map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "MiniMind".into())
    });
    let options = ollama::OllamaOptions {
        gguf: GgufOptions { scheme, source_precision, name },
        system: a.system,
        params,
        license,
    };
    let bar = if std::io::stderr().is_terminal() { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg:32} [{bar:30}] {pos}/{len} tensors ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    mm::converters::output_guard::check_not_an_input(&a.output, &[&a.input])?;
    let done = ollama::export(&ckpt, &a.output, &options, &|done, total, tensor| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(tensor.to_string());
    })?;
    bar.finish_and_clear();
    for w in &done.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "wrote {} ({}, {} tensors) and {} ({} chat template) from {} in {:.2} s",
        done.gguf.display(),
        scheme.name(),
        done.summary.tensors.len(),
        done.modelfile.display(),
        done.family.name(),
        ckpt,
        started.elapsed().as_secs_f64()
    );
    println!("{}", llamacpp::describe(&done.summary));
    // The checks of `mm validate ollama`, on what was just written.
    let report = super::validate::ollama_report(&a.output)?;
    println!(
        "validated: chat cases {} equal, {} equal with notes, {} not expressible in ollama, {} different; {} errors, {} warnings",
        report.count(CaseStatus::Equal),
        report.count(CaseStatus::EqualWithNotes),
        report.count(CaseStatus::NotExpressible),
        report.count(CaseStatus::Differs),
        report.errors.len(),
        report.warnings.len()
    );
    if !report.ok() {
        eprint!("{}", report.to_text());
        bail!("{}: the exported Modelfile does not validate", done.modelfile.display());
    }
    println!("next: cd {} && ollama create NAME -f Modelfile", a.output.display());
    Ok(())
}
