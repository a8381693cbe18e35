//! `mm train-tokenizer`: byte-level BPE training as upstream `scripts/train_tokenizer.py`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use mm::chat::train_tokenizer::{train_tokenizer, TrainOptions};

#[derive(Args)]
pub struct TrainTokenizerArgs {
    /// Pretrain jsonl file(s), one `{"text": ...}` object per line.
    #[arg(required = true)]
    data: Vec<PathBuf>,
    /// Output directory (tokenizer.json + tokenizer_config.json), replaced atomically.
    #[arg(short, long, default_value = "tokenizer")]
    output: PathBuf,
    /// Vocabulary size, special tokens and the 256-byte alphabet included.
    #[arg(long, default_value_t = 6400)]
    vocab_size: usize,
    /// Minimum pair frequency for a merge (upstream: 0).
    #[arg(long, default_value_t = 0)]
    min_frequency: u64,
    /// Skip (and count) lines that are not JSON with a string "text" instead of failing.
    #[arg(long)]
    skip_bad_lines: bool,
}

pub fn run(a: TrainTokenizerArgs) -> Result<()> {
    let opts = TrainOptions {
        vocab_size: a.vocab_size,
        min_frequency: a.min_frequency,
        skip_bad_lines: a.skip_bad_lines,
        show_progress: std::io::stderr().is_terminal(),
    };
    let inputs: Vec<&std::path::Path> = a.data.iter().map(PathBuf::as_path).collect();
    mm::converters::output_guard::check_not_an_input(&a.output, &inputs)?;
    let report = train_tokenizer(&a.data, &a.output, &opts)?;
    println!(
        "trained vocab of {} tokens on {} lines in {:.1}s -> {}",
        report.vocab_size,
        report.lines_used,
        report.seconds,
        a.output.display()
    );
    if report.vocab_size < a.vocab_size {
        println!("note: the corpus ran out of pairs to merge before reaching --vocab-size {}", a.vocab_size);
    }
    if report.lines_skipped > 0 {
        println!("skipped {} bad line(s)", report.lines_skipped);
    }
    Ok(())
}
