//! `mm lora …`: upstream LoRA adapter files (`save_lora` .pth). `mm lora merge` folds one
//! into a base model (`W + B·A` on every adapted weight) and writes a plain checkpoint.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Subcommand};

use mm::converters::lora::Lora;
use mm::converters::{read_checkpoint, write_checkpoint, Format};

use super::{default_output, dtype_arg, ShapeHints};

#[derive(Args)]
pub struct LoraArgs {
    #[command(subcommand)]
    command: LoraCommand,
}

#[derive(Subcommand)]
enum LoraCommand {
    /// Merge a LoRA .pth into a base model: `mm lora merge BASE LORA.pth -o OUT`.
    Merge(MergeArgs),
}

#[derive(Args)]
pub struct MergeArgs {
    /// The base model: a .pth or .gguf file, or an HF model directory.
    base: PathBuf,
    /// The upstream LoRA .pth (`save_lora`, `mm train lora`).
    lora: PathBuf,
    /// pth, hf (MiniMind layout), hf-llama or gguf (default: pth for a `.pth` output, gguf
    /// for `.gguf`, else hf).
    #[arg(long)]
    to: Option<String>,
    /// Output path (default: `<base>-<lora>` beside the base).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Cast the base to f32, f16 or bf16 before merging (default: keep its dtype; `W + B·A`
    /// is computed in f32 and stored in the weight's dtype, so an f16 base rounds it).
    #[arg(long)]
    dtype: Option<String>,
    #[command(flatten)]
    hints: ShapeHints,
}

pub fn run(a: LoraArgs) -> Result<()> {
    match a.command {
        LoraCommand::Merge(m) => merge(m),
    }
}

fn extension_format(path: &Path) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some("pth") => Format::Pth,
        Some("gguf") => Format::Gguf,
        _ => Format::HfMiniMind,
    }
}

fn merge(a: MergeArgs) -> Result<()> {
    let format = match (&a.to, &a.output) {
        (Some(to), _) => Format::parse(to)?,
        (None, Some(out)) => extension_format(out),
        (None, None) => Format::HfMiniMind,
    };
    let mut base = read_checkpoint(&a.base, &a.hints.to_hints()?)?;
    for note in &base.provenance.notes {
        eprintln!("note: {note}");
    }
    if let Some(dtype) = &a.dtype {
        base = base.to_dtype(dtype_arg(dtype)?)?;
    }
    let lora = Lora::read(&a.lora)?;
    let merged = lora.merge_into(&base)?;
    let output = a.output.unwrap_or_else(|| {
        let tag = a.lora.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "lora".into());
        let suffix = match format {
            Format::Pth => format!("-{tag}.pth"),
            Format::Gguf => format!("-{tag}.gguf"),
            Format::HfMiniMind | Format::HfLlama | Format::HfQwen2Moe => format!("-{tag}"),
        };
        default_output(&a.base, &suffix)
    });
    mm::converters::output_guard::check_not_an_input(&output, &[&a.base, &a.lora])?;
    write_checkpoint(&merged, &output, format)?;
    println!(
        "wrote {} ({}): {} merged with {} (rank {}, {} adapters)",
        output.display(),
        format.name(),
        a.base.display(),
        a.lora.display(),
        lora.rank,
        lora.adapters.len()
    );
    Ok(())
}
