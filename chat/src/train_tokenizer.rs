//! Byte-level BPE tokenizer training, as upstream minimind `scripts/train_tokenizer.py`:
//! `models.BPE()` with a `ByteLevel(add_prefix_space=False)` pre-tokenizer, a `BpeTrainer`
//! seeded with the 256-byte alphabet and the three ChatML special tokens (ids 0, 1, 2), and a
//! `ByteLevel` decoder; written as `tokenizer.json` plus upstream's `tokenizer_config.json`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mm_dataset::MAX_LINE_BYTES;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, TokenizerBuilder, TokenizerImpl};

/// The special tokens, in id order, as upstream.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Upstream's tokenizer_config.json (ChatML chat template), written unchanged.
const TOKENIZER_CONFIG: &str = include_str!("../../assets/minimind2/tokenizer_config.json");

/// Training settings; defaults are upstream's.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Final vocabulary size, special tokens and the byte alphabet included.
    pub vocab_size: usize,
    /// Minimum pair frequency for a merge (upstream leaves the trainer's default, 0).
    pub min_frequency: u64,
    /// Count and skip lines that are not JSON objects with a string `text`, instead of failing.
    pub skip_bad_lines: bool,
    /// Show progress bars on stderr.
    pub show_progress: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self { vocab_size: 6400, min_frequency: 0, skip_bad_lines: false, show_progress: false }
    }
}

/// What a training run did.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub vocab_size: usize,
    pub lines_used: usize,
    pub lines_skipped: usize,
    pub seconds: f64,
}

type BpeTokenizer = TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, PostProcessorWrapper, ByteLevelDecoder>;

/// Trains a byte-level BPE tokenizer on the `text` field of each line of the jsonl `corpus`
/// files and writes `tokenizer.json` and `tokenizer_config.json` into `out_dir` atomically.
pub fn train_tokenizer(corpus: &[PathBuf], out_dir: &Path, opts: &TrainOptions) -> Result<TrainReport> {
    let start = Instant::now();
    if corpus.is_empty() {
        bail!("no corpus files given");
    }
    if opts.vocab_size < SPECIAL_TOKENS.len() + 256 {
        bail!("--vocab-size {} is too small: the byte alphabet and special tokens alone take {}", opts.vocab_size, SPECIAL_TOKENS.len() + 256);
    }
    let mut texts = Vec::new();
    let mut skipped = 0usize;
    for path in corpus {
        read_corpus(path, opts, &mut texts, &mut skipped)?;
    }
    if texts.is_empty() {
        let files = corpus.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        bail!("the corpus ({files}) has no usable lines: need jsonl lines like {{\"text\": \"...\"}} ({skipped} bad lines skipped)");
    }
    let lines_used = texts.len();

    let tokenizer = train(texts, opts)?;
    for (id, token) in SPECIAL_TOKENS.iter().enumerate() {
        let got = tokenizer.token_to_id(token);
        if got != Some(id as u32) {
            bail!("internal error: special token {token} got id {got:?}, expected {id}");
        }
    }
    let vocab_size = tokenizer.get_vocab_size(true);
    let json = tokenizer.to_string(true).map_err(|e| anyhow!("serializing tokenizer: {e}"))?;

    mm_converters::atomic::write_dir_atomically(out_dir, |tmp| {
        std::fs::write(tmp.join("tokenizer.json"), &json).context("writing tokenizer.json")?;
        std::fs::write(tmp.join("tokenizer_config.json"), TOKENIZER_CONFIG).context("writing tokenizer_config.json")?;
        Ok(())
    })?;
    Ok(TrainReport { vocab_size, lines_used, lines_skipped: skipped, seconds: start.elapsed().as_secs_f64() })
}

fn train(texts: Vec<String>, opts: &TrainOptions) -> Result<BpeTokenizer> {
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(opts.vocab_size)
        .min_frequency(opts.min_frequency)
        .show_progress(false)
        .special_tokens(SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer: BpeTokenizer = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(None)
        .with_decoder(Some(ByteLevelDecoder::default()))
        .build()
        .map_err(|e| anyhow!("building tokenizer: {e}"))?;
    let spinner = if opts.show_progress {
        let s = ProgressBar::new_spinner();
        s.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}]").expect("valid template"));
        s.set_message(format!("training BPE (vocab {})", opts.vocab_size));
        s.enable_steady_tick(std::time::Duration::from_millis(120));
        s
    } else {
        ProgressBar::hidden()
    };
    tokenizer.train(&mut trainer, texts.into_iter()).map_err(|e| anyhow!("training BPE: {e}"))?;
    spinner.finish_and_clear();
    Ok(tokenizer)
}

/// Counts bytes read through it, for the progress bar.
struct Counting<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

fn read_corpus(path: &Path, opts: &TrainOptions, texts: &mut Vec<String>, skipped: &mut usize) -> Result<()> {
    mm_converters::limits::check_regular_file(path, "corpus")?;
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = if opts.show_progress {
        let b = ProgressBar::new(size);
        b.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b.set_message(format!("reading {}", path.display()));
        b
    } else {
        ProgressBar::hidden()
    };
    let mut reader = BufReader::new(Counting { inner: file, bar: bar.clone() });
    let mut buf = Vec::new();
    for lineno in 1.. {
        // At most MAX_LINE_BYTES of a line are kept (plus the newline); a longer line is a bad line.
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("{}:{lineno}: cannot read line", path.display()))?;
        if n == 0 {
            break;
        }
        let too_long = buf.last() != Some(&b'\n') && buf.len() > MAX_LINE_BYTES;
        let line = if too_long {
            // Drop the rest of the line without keeping it.
            loop {
                let available = reader.fill_buf().with_context(|| format!("{}:{lineno}: cannot read line", path.display()))?;
                if available.is_empty() {
                    break;
                }
                let (used, done) = match available.iter().position(|&b| b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (available.len(), false),
                };
                reader.consume(used);
                if done {
                    break;
                }
            }
            Err(format!("line is longer than {MAX_LINE_BYTES} bytes, the most a line may have"))
        } else {
            String::from_utf8(std::mem::take(&mut buf)).map_err(|_| "line is not UTF-8".to_string())
        };
        let line = match line {
            Ok(line) => line,
            Err(_) if opts.skip_bad_lines => {
                *skipped += 1;
                continue;
            }
            Err(why) => {
                bar.abandon();
                bail!("{}:{lineno}: {why} (use --skip-bad-lines to skip such lines)", path.display());
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match line_text(line.trim_end_matches(['\n', '\r'])) {
            Ok(text) => texts.push(text),
            Err(_) if opts.skip_bad_lines => *skipped += 1,
            Err(why) => {
                bar.abandon();
                bail!("{}:{lineno}: {why} (use --skip-bad-lines to skip such lines)", path.display());
            }
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// The `text` of one jsonl line, or why there is none.
fn line_text(line: &str) -> std::result::Result<String, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    match value.get("text") {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err("\"text\" is not a string".into()),
        None if value.is_object() => Err("no \"text\" field".into()),
        None => Err("not a JSON object".into()),
    }
}
