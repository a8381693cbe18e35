//! `mm template render`: a conversation through a model's chat template, as transformers'
//! `apply_chat_template` renders it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use mm::chat::cli::{parse_conversation, parse_kwarg, parse_tools, render, RenderOptions};

use super::{read_text_arg, tokenizer_source};

#[derive(Args)]
pub struct TemplateArgs {
    #[command(subcommand)]
    command: TemplateCommand,
}

#[derive(Subcommand)]
enum TemplateCommand {
    /// Render messages (a JSON array, or an object with messages/tools) to text and ids.
    Render(RenderArgs),
}

#[derive(Args)]
struct RenderArgs {
    /// Messages JSON file, or `-` for stdin.
    messages: String,
    /// A model (any format) or tokenizer directory (default: the built-in MiniMind2 one).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Tools JSON file (an array of OpenAI tool definitions).
    #[arg(long)]
    tools: Option<String>,
    /// Leave out the assistant generation prompt.
    #[arg(long)]
    no_generation_prompt: bool,
    /// Turn thinking on or off (sets enable_thinking / open_thinking, whichever the template reads).
    #[arg(long)]
    thinking: Option<bool>,
    /// Extra template variables, `key=value` (value parsed as JSON when it parses).
    #[arg(long = "kwarg")]
    kwargs: Vec<String>,
    /// Print only the token ids.
    #[arg(long, conflicts_with = "text_only")]
    ids: bool,
    /// Print only the rendered text.
    #[arg(long)]
    text_only: bool,
}

pub fn run(a: TemplateArgs) -> Result<()> {
    let TemplateCommand::Render(r) = a.command;
    let (tokenizer, template) = tokenizer_source(r.model.as_deref())?;
    let template = template.context("this model has no chat template")?;
    let mut conv = parse_conversation(&read_text_arg(&r.messages)?).with_context(|| format!("messages from {}", r.messages))?;
    if let Some(tools) = &r.tools {
        conv.tools = Some(parse_tools(&read_text_arg(tools)?).with_context(|| format!("tools from {tools}"))?);
    }
    let mut opts = RenderOptions { add_generation_prompt: !r.no_generation_prompt, thinking: r.thinking, ..Default::default() };
    for kv in &r.kwargs {
        let (k, v) = parse_kwarg(kv)?;
        opts.kwargs.insert(k, v);
    }
    let rendered = render(&template, Some(&tokenizer), &conv, &opts)?;
    let ids = rendered.ids.unwrap_or_default();
    if r.ids {
        println!("{}", serde_json::to_string(&ids)?);
    } else if r.text_only {
        print!("{}", rendered.text);
    } else {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"text": rendered.text, "ids": ids}))?);
    }
    Ok(())
}
