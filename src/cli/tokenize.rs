//! `mm tokenize`: text to ids (and pieces), or ids back to text.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use mm::chat::cli::{check_ids, format_pieces, parse_ids, tokenize};

use super::tokenizer_source;

#[derive(Args)]
pub struct TokenizeArgs {
    /// Text to encode (with --decode: ids, as `[1, 2]` or `1 2 3`).
    text: String,
    /// A model (any format) or tokenizer directory (default: the built-in MiniMind2 one).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Decode ids instead of encoding text.
    #[arg(long)]
    decode: bool,
    /// Show each token's id, piece and text.
    #[arg(long)]
    pieces: bool,
    /// Add the tokenizer's special tokens (post-processor), as `tokenizer(text)` would.
    #[arg(long)]
    add_special_tokens: bool,
    /// With --decode: drop special tokens from the text.
    #[arg(long)]
    skip_special_tokens: bool,
}

pub fn run(a: TokenizeArgs) -> Result<()> {
    let (tokenizer, _) = tokenizer_source(a.model.as_deref())?;
    if a.decode {
        let ids = parse_ids(&a.text)?;
        check_ids(&tokenizer, &ids)?;
        println!("{}", tokenizer.decode(&ids, a.skip_special_tokens)?);
        return Ok(());
    }
    let pieces = tokenize(&tokenizer, &a.text, a.add_special_tokens)?;
    if a.pieces {
        print!("{}", format_pieces(&pieces));
    } else {
        println!("{}", serde_json::to_string(&pieces.iter().map(|p| p.id).collect::<Vec<_>>())?);
    }
    Ok(())
}
