//! `mm export mnn`: the model directory MNN's LLM runtime loads (`MNN.llm.create(DIR/config.json)`,
//! `llm_demo DIR/config.json`), written natively — what MNN's `llmexport.py --export mnn`
//! produces, without torch, ONNX or MNNConvert.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use mm::converters::read_checkpoint;
use mm::export::mnn::tokenizer_mtok::MtokOptions;
use mm::export::mnn::{export_dir, DecoderQuant, MnnExportOptions, QuantOptions};

use super::{default_output, ShapeHints};

#[derive(Args)]
pub struct MnnArgs {
    /// Any dense checkpoint mm reads: .pth, HF directory, .gguf (MoE is refused).
    input: PathBuf,
    /// Output directory (default: `<input>-mnn` beside the input). Replaced whole if it
    /// holds an earlier MNN export; any other non-empty directory is refused.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Weight bits of every Linear (lm_head included): 4 or 8.
    #[arg(long, default_value_t = 4)]
    quant_bit: u8,
    /// Inputs per quantization block (halved until it divides the row; 0 = one block per row).
    #[arg(long, default_value_t = 64)]
    quant_block: usize,
    /// HQQ zero points (llmexport's --hqq) instead of plain min/max.
    #[arg(long)]
    hqq: bool,
    /// Storage of each block's zero and scale: 16 (fp16, llmexport's default) or 32.
    #[arg(long, default_value_t = 16)]
    scale_bit: u8,
    /// Also write llm.mnn.json, the graph in MNN's JSON form (for reading or MNNConvert -f JSON).
    #[arg(long)]
    emit_json: bool,
    #[command(flatten)]
    hints: ShapeHints,
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.2} MiB", bytes as f64 / (1 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

pub fn run(a: MnnArgs) -> Result<()> {
    let alpha_fp16 = match a.scale_bit {
        16 => true,
        32 => false,
        other => bail!("--scale-bit {other}: use 16 or 32"),
    };
    let quant = QuantOptions { bits: a.quant_bit, block: a.quant_block, hqq: a.hqq, alpha_fp16 };
    quant.validate()?;
    let started = Instant::now();
    let ckpt = read_checkpoint(&a.input, &a.hints.to_hints()?)?;
    for note in &ckpt.provenance.notes {
        eprintln!("note: {note}");
    }
    let output = a.output.unwrap_or_else(|| default_output(&a.input, "-mnn"));
    mm::converters::output_guard::check_not_an_input(&output, &[&a.input])?;
    let options = MnnExportOptions {
        quant: DecoderQuant::uniform(quant),
        // llmexport adds generation_config's eos to the stop ids; MiniMind's is the config's.
        mtok: MtokOptions { generation_eos_ids: vec![ckpt.config.eos_token_id] },
        emit_json: a.emit_json,
    };

    let bar = if std::io::stderr().is_terminal() { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len} records ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let summary = export_dir(&ckpt, &output, &options, &|done, total, tensor| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(tensor.to_string());
    })?;
    bar.finish_and_clear();

    println!("wrote {} from {} in {:.2} s", output.display(), ckpt, started.elapsed().as_secs_f64());
    for (name, bytes) in &summary.files {
        println!("  {name:<22} {:>12}", size(*bytes));
    }
    let counts: Vec<String> = summary.op_counts.iter().map(|(t, n)| format!("{t} {n}")).collect();
    println!("graph: {} ops ({})", summary.ops, counts.join(", "));
    println!(
        "weights: {} records, {}-bit block {}{}{} scales, {:.2} bits per Linear weight",
        summary.weights.records().len(),
        quant.bits,
        quant.block,
        if quant.hqq { " HQQ, " } else { ", " },
        if alpha_fp16 { "fp16" } else { "fp32" },
        summary.bits_per_weight
    );
    for note in &summary.notes {
        println!("note: {note}");
    }
    println!(
        "run: python -c \"import MNN.llm as l; m = l.create('{}/config.json'); m.load(); print(m.response('你好'))\"",
        output.display()
    );
    Ok(())
}
