//! Training data (JSONL rows): the same file opened as each of the four upstream datasets
//! (pretrain, SFT, DPO, RLAIF) with mm's own encoder (built-in MiniMind2 tokenizer and chat
//! template), skipping bad lines, and as pretrain data without skipping; every indexed row
//! is made into an example and the examples into a batch, as the loader does.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mm::converters::TokenizerFiles;
use mm::train::encoder::{chat_encoder, ChatEncoder};
use mm_dataset::{Dataset, DatasetOptions, DpoDataset, PretrainDataset, RlaifDataset, SftDataset};
use mm_fuzz::{one_thread, put, scratch_dir};

static ENCODER: OnceLock<ChatEncoder> = OnceLock::new();

/// At most this many rows per dataset (the seeds have fewer).
const ROWS: usize = 16;

fn walk<D: Dataset>(ds: anyhow::Result<D>) {
    let Ok(ds) = ds else { return };
    let n = ds.len().min(ROWS);
    let mut examples = Vec::new();
    let mut lines = Vec::new();
    for i in 0..n {
        if let Ok(e) = ds.example(i) {
            examples.push(e);
            lines.push(ds.index().line_number(i));
        }
    }
    let _ = ds.index().report();
    let _ = ds.collate(examples, lines);
}

fuzz_target!(init: {
    one_thread();
    let encoder = chat_encoder(&TokenizerFiles::builtin_minimind2()).expect("built-in tokenizer");
    assert!(ENCODER.set(encoder).is_ok());
}, |data: &[u8]| {
    let path = put(&scratch_dir("jsonl"), "data.jsonl", data);
    let enc = ENCODER.get().unwrap();
    // Bad lines skipped (every line is looked at), then the default of stopping at the first.
    let opts = || DatasetOptions::new(24).skip_bad_lines(true);
    walk(PretrainDataset::open(&path, enc, opts()));
    walk(SftDataset::open(&path, enc, opts()));
    walk(DpoDataset::open(&path, enc, opts()));
    walk(RlaifDataset::open(&path, enc, opts()));
    walk(PretrainDataset::open(&path, enc, DatasetOptions::new(24)));
});
