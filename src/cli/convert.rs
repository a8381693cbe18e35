//! `mm convert`: any readable checkpoint to .pth / HF MiniMind / HF Llama.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use mm::converters::lora::Lora;
use mm::converters::{read_checkpoint, write_checkpoint, Format};

use super::{default_output, dtype_arg, ShapeHints};

#[derive(Args)]
pub struct ConvertArgs {
    /// A .pth or .gguf file, or an HF model directory.
    input: PathBuf,
    /// pth, hf (MiniMind layout), hf-llama, hf-qwen2-moe or gguf (unquantized; see `mm export gguf`).
    #[arg(long)]
    to: String,
    /// Output path (default: beside the input).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Cast every tensor: f32, f16 or bf16 (default: keep).
    #[arg(long)]
    dtype: Option<String>,
    /// Merge this upstream LoRA .pth into the weights first.
    #[arg(long)]
    merge_lora: Option<PathBuf>,
    #[command(flatten)]
    hints: ShapeHints,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let format = Format::parse(&a.to)?;
    let mut ckpt = read_checkpoint(&a.input, &a.hints.to_hints()?)?;
    for note in &ckpt.provenance.notes {
        eprintln!("note: {note}");
    }
    if let Some(dtype) = &a.dtype {
        ckpt = ckpt.to_dtype(dtype_arg(dtype)?)?;
    }
    if let Some(lora) = &a.merge_lora {
        ckpt = Lora::read(lora)?.merge_into(&ckpt)?;
    }
    let output = a.output.unwrap_or_else(|| match format {
        Format::Pth => default_output(&a.input, ".pth"),
        Format::HfMiniMind => default_output(&a.input, "-hf"),
        Format::HfLlama => default_output(&a.input, "-hf-llama"),
        Format::HfQwen2Moe => default_output(&a.input, "-hf-qwen2-moe"),
        Format::Gguf => default_output(&a.input, ".gguf"),
    });
    let mut inputs = vec![a.input.as_path()];
    inputs.extend(a.merge_lora.as_deref());
    mm::converters::output_guard::check_not_an_input(&output, &inputs)?;
    write_checkpoint(&ckpt, &output, format)?;
    println!("wrote {} ({}) from {}", output.display(), format.name(), ckpt);
    Ok(())
}
