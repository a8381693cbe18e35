//! `mm export`: deployment targets. `mm export gguf` = llama.cpp's converter + llama-quantize
//! in one step.

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
    if output == a.input {
        bail!("output {} would overwrite the input; pass -o", output.display());
    }
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
