//! `mm generate`: one prompt in, a streamed reply out.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use mm::chat::{RenderRequest, StreamDecoder};
use mm::generate::{generate, Sampler};
use mm::loaded::LoadedModel;

use super::{ModelArgs, SamplingArgs};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The user message (or, with --raw, the exact text to continue).
    #[arg(short, long)]
    prompt: String,
    /// System prompt (default: the chat template's own).
    #[arg(long)]
    system: Option<String>,
    /// Continue the text as is, without the chat template (for pretrained models).
    #[arg(long)]
    raw: bool,
    /// Print the generated token ids after the text.
    #[arg(long)]
    show_ids: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// Renders `messages` through the model's chat template with a generation prompt.
pub fn render_prompt(loaded: &LoadedModel, messages: &serde_json::Value) -> Result<String> {
    let template = loaded.template.as_ref().context("this model has no chat template; use --raw")?;
    let mut req = RenderRequest::new(messages.clone());
    req.add_generation_prompt = true;
    template.render(&req)
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let loaded = a.model.load()?;
    let text = if a.raw {
        a.prompt.clone()
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &a.system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": a.prompt}));
        render_prompt(&loaded, &json!(messages))?
    };
    let prompt = loaded.tokenizer.encode(&text, false)?;
    let eos = loaded.tokenizer.eos_id().unwrap_or(loaded.model.config.eos_token_id);
    let mut sampler = Sampler::new(a.sampling.params(vec![eos]))?;
    let mut decoder = StreamDecoder::new(&loaded.tokenizer);
    let mut stdout = std::io::stdout();
    let tokens = generate(&loaded.model, &prompt, &mut sampler, |id| {
        stdout.write_all(decoder.push(id)?.as_bytes())?;
        stdout.flush()?;
        Ok(true)
    })?;
    stdout.write_all(decoder.finish()?.as_bytes())?;
    println!();
    if a.show_ids {
        println!("{tokens:?}");
    }
    Ok(())
}
