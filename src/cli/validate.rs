//! `mm validate`: check a deployment the way its runtime will read it, before it does.
//! `mm validate ollama DIR|Modelfile` runs the Modelfile checks of `mm_export::ollama::validate`,
//! comparing the TEMPLATE with the jinja chat template stored in the GGUF.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use mm::chat::ChatTemplate;
use mm::export::ollama::{self, JinjaRenderer, Report};

#[derive(Args)]
pub struct ValidateArgs {
    #[command(subcommand)]
    target: Target,
}

#[derive(Subcommand)]
enum Target {
    /// An ollama Modelfile (or a directory holding one): syntax, FROM, PARAMETERs, stops, and
    /// the TEMPLATE against the GGUF's chat template on mm's chat cases.
    Ollama(OllamaArgs),
    /// An HF model directory for vLLM or transformers: config, tensors vs config, index,
    /// safetensors metadata, tokenizer, chat template, special ids, usable vLLM parsers.
    Hf(HfArgs),
}

#[derive(Args)]
pub struct OllamaArgs {
    /// A directory with a Modelfile, or the Modelfile.
    path: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: ValidateArgs) -> Result<()> {
    match a.target {
        Target::Ollama(o) => validate_ollama(o),
        Target::Hf(h) => validate_hf(h),
    }
}

fn jinja(source: &str) -> Result<Box<dyn JinjaRenderer>> {
    Ok(Box::new(ChatTemplate::new(source)?))
}

/// The full ollama report, with mm's jinja engine for the case comparison.
pub fn ollama_report(path: &Path) -> Result<Report> {
    ollama::validate(path, Some(&jinja))
}

fn validate_ollama(a: OllamaArgs) -> Result<()> {
    let report = ollama_report(&a.path)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.to_text());
    }
    if !report.ok() {
        bail!("{} error(s) in {}", report.errors.len(), report.modelfile.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct HfArgs {
    /// The model directory.
    dir: PathBuf,
    /// vllm (`vllm serve DIR`, native class) or transformers (4.x and 5.x).
    #[arg(long, default_value = "vllm")]
    target: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn validate_hf(a: HfArgs) -> Result<()> {
    use mm::export::validate_hf::{self, HfValidateOptions};

    let target = validate_hf::Target::parse(&a.target)?;
    let opts = HfValidateOptions { target, template_probe: Some(&template_probe) };
    let report = validate_hf::validate_hf_dir(&a.dir, &opts);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", validate_hf::describe(&report));
    }
    if !report.ok() {
        let n = report.errors.len();
        bail!("{}: {n} error{} for {}", a.dir.display(), if n == 1 { "" } else { "s" }, target.name());
    }
    Ok(())
}

/// Loads an HF directory's tokenizer.json and chat template with mm's engine (the same
/// rendering as transformers' `apply_chat_template`) and renders a one-message chat.
pub fn template_probe(dir: &Path) -> Result<String> {
    use anyhow::Context;

    let files = mm::converters::hf::read_tokenizer_files(dir)?;
    let (tokenizer, template) = mm::loaded::tokenizer_and_template(&files)?;
    let template = template.context("no chat template")?;
    let messages = serde_json::json!([{"role": "user", "content": "你好"}]);
    let text = template.render(&mm::chat::RenderRequest::new(messages).with_generation_prompt(true))?;
    tokenizer.encode(&text, false).context("tokenizer.json cannot encode the rendered chat")?;
    Ok(text)
}
