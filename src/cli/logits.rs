//! `mm logits`: the logits of every position of a text or id list, as JSON on stdout, for
//! comparing mm's forward with another engine's (llama.cpp, transformers) on the same file.

use anyhow::{bail, Result};
use clap::Args;

use mm::chat::cli::{check_ids, parse_ids};
use mm::model::KvCache;

use super::ModelArgs;

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text to run (encoded without added special tokens; ChatML markers count as tokens).
    #[arg(long, conflicts_with = "ids")]
    text: Option<String>,
    /// Token ids to run, as `[1, 2]` or `1 2 3`.
    #[arg(long)]
    ids: Option<String>,
    /// Only the last N positions (default: all).
    #[arg(long)]
    last: Option<usize>,
}

pub fn run(a: LogitsArgs) -> Result<()> {
    let loaded = a.model.load()?;
    let ids = match (&a.text, &a.ids) {
        (Some(text), None) => loaded.tokenizer.encode(text, false)?,
        (None, Some(ids)) => parse_ids(ids)?,
        _ => bail!("give --text or --ids"),
    };
    check_ids(&loaded.tokenizer, &ids)?;
    if ids.is_empty() {
        bail!("no tokens to run");
    }
    let mut cache = KvCache::new(&loaded.model.config);
    let logits = loaded.model.forward_all_logits(&ids, &mut cache)?.to_vec2::<f32>()?;
    let keep = a.last.unwrap_or(ids.len()).min(ids.len());
    let rows = &logits[ids.len() - keep..];
    println!("{}", serde_json::json!({ "ids": ids, "logits": rows }));
    Ok(())
}
