//! `mm inspect`: what a checkpoint (or an MNN model directory) is and holds.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use mm::converters::read_checkpoint;

use super::ShapeHints;

#[derive(Args)]
pub struct InspectArgs {
    /// A .pth file, an HF model directory, a .gguf, or an MNN directory (config.json + llm.mnn).
    path: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    hints: ShapeHints,
}

pub fn run(a: InspectArgs) -> Result<()> {
    if mm::export::mnn::inspect::is_mnn_dir(&a.path) {
        let report = mm::export::mnn::inspect::inspect_dir(&a.path)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&report.to_json())?);
        } else {
            print!("{}", report.to_text());
        }
        let n = report.problems.len();
        anyhow::ensure!(n == 0, "{}: {n} problem{} found (listed above)", a.path.display(), if n == 1 { "" } else { "s" });
        return Ok(());
    }
    let ckpt = read_checkpoint(&a.path, &a.hints.to_hints()?)?;
    let cfg = &ckpt.config;
    let tensors: Vec<_> = ckpt
        .tensors()
        .iter()
        .map(|(n, t)| json!({"name": n, "dtype": format!("{:?}", t.dtype()).to_lowercase(), "shape": t.dims()}))
        .collect();
    let bytes: usize = ckpt.tensors().iter().map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes()).sum();
    let tok = &ckpt.tokenizer;
    if a.json {
        let out = json!({
            "format": ckpt.provenance.format,
            "source": ckpt.provenance.source,
            "notes": ckpt.provenance.notes,
            "config": cfg.to_minimind_json("float32"),
            "parameters": ckpt.parameter_count(),
            "tensor_bytes": bytes,
            "tensors": tensors,
            "tokenizer": tok.tokenizer_json.is_some(),
            "chat_template": tok.chat_template.is_some(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("format      {}", ckpt.provenance.format);
    println!("source      {}", ckpt.provenance.source.display());
    for note in &ckpt.provenance.notes {
        println!("note        {note}");
    }
    println!(
        "model       {} hidden, {} layers, {} heads / {} kv (head_dim {}), ffn {}, vocab {}{}",
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim(),
        cfg.intermediate_size,
        cfg.vocab_size,
        if cfg.use_moe {
            format!(", MoE {} routed (top-{}) + {} shared", cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_shared_experts)
        } else {
            String::new()
        }
    );
    println!(
        "rope        theta {}, {} positions{}",
        cfg.rope_theta,
        cfg.max_position_embeddings,
        if cfg.inference_rope_scaling { ", YaRN scaling" } else { "" }
    );
    println!("embeddings  {}", if cfg.tie_word_embeddings { "tied (lm_head = embed_tokens)" } else { "untied" });
    println!("parameters  {} ({:.2}M), {:.1} MB of tensors", ckpt.parameter_count(), ckpt.parameter_count() as f64 / 1e6, bytes as f64 / 1e6);
    println!(
        "tokenizer   {}; chat template {}",
        if tok.tokenizer_json.is_some() { "present" } else { "absent" },
        if tok.chat_template.is_some() { "present" } else { "absent" }
    );
    println!("tensors     {}", ckpt.tensors().len());
    for (name, t) in ckpt.tensors() {
        println!("  {name:<56} {:<5} {:?}", format!("{:?}", t.dtype()).to_lowercase(), t.dims());
    }
    Ok(())
}
