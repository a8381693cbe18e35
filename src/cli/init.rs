//! `mm init`: a fresh model directory (random upstream-style init + built-in tokenizer).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use mm::converters::{write_checkpoint, Format, MiniMindConfig, TokenizerFiles};
use mm::model::init::random_checkpoint;

#[derive(Args)]
pub struct InitArgs {
    /// small (26M), base (104M), moe (4+1 experts) or tiny (a few million parameters); the
    /// flags below override it.
    #[arg(long, default_value = "small")]
    preset: String,
    /// Output path (default: `minimind-<preset>`, or `.pth` with --format pth).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// hf (MiniMind layout), hf-llama or pth.
    #[arg(long, default_value = "hf")]
    format: String,
    /// Model width (the FFN width follows upstream's rule unless --intermediate-size is given).
    #[arg(long)]
    hidden_size: Option<usize>,
    /// Decoder layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Attention heads (must divide the hidden size).
    #[arg(long)]
    heads: Option<usize>,
    /// Key/value heads (must divide the attention heads).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// FFN width.
    #[arg(long)]
    intermediate_size: Option<usize>,
    /// Context length the config declares.
    #[arg(long)]
    max_position_embeddings: Option<usize>,
    /// Routed experts (turns MoE on).
    #[arg(long)]
    experts: Option<usize>,
    /// Shared experts every token goes through (MoE).
    #[arg(long)]
    shared_experts: Option<usize>,
    /// Routed experts each token is sent to (MoE top-k).
    #[arg(long)]
    experts_per_token: Option<usize>,
    /// Stored dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: InitArgs) -> Result<()> {
    let mut cfg = MiniMindConfig::preset(&a.preset)?;
    if let Some(h) = a.hidden_size {
        cfg.hidden_size = h;
        cfg.intermediate_size = mm::converters::config::default_intermediate_size(h);
    }
    let set = |slot: &mut usize, v: Option<usize>| {
        if let Some(v) = v {
            *slot = v;
        }
    };
    set(&mut cfg.num_hidden_layers, a.layers);
    set(&mut cfg.num_attention_heads, a.heads);
    set(&mut cfg.num_key_value_heads, a.kv_heads);
    set(&mut cfg.intermediate_size, a.intermediate_size);
    set(&mut cfg.max_position_embeddings, a.max_position_embeddings);
    if a.experts.is_some() {
        cfg.use_moe = true;
    }
    set(&mut cfg.n_routed_experts, a.experts);
    set(&mut cfg.n_shared_experts, a.shared_experts);
    set(&mut cfg.num_experts_per_tok, a.experts_per_token);
    cfg.validate()?;

    let format = Format::parse(&a.format)?;
    let output = a.output.unwrap_or_else(|| {
        let base = format!("minimind-{}", a.preset);
        PathBuf::from(match format {
            Format::Pth => format!("{base}.pth"),
            Format::Gguf => format!("{base}.gguf"),
            _ => base,
        })
    });
    let ckpt = random_checkpoint(&cfg, a.seed, TokenizerFiles::builtin_minimind2())?
        .to_dtype(super::dtype_arg(&a.dtype)?)?;
    write_checkpoint(&ckpt, &output, format)?;
    println!(
        "wrote {} ({}, {:.2}M parameters, hidden {}, {} layers, {} heads / {} kv{})",
        output.display(),
        format.name(),
        ckpt.parameter_count() as f64 / 1e6,
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        if cfg.use_moe { format!(", MoE {}+{} experts", cfg.n_routed_experts, cfg.n_shared_experts) } else { String::new() }
    );
    Ok(())
}
