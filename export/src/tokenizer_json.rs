//! Loading a `tokenizer.json` with the `tokenizers` crate, without its panics.
//!
//! tokenizers 0.23 panics (`expect`) instead of returning an error on some malformed files:
//! a file cut off inside `"decoder"` (`{"decoder":`), or a `Precompiled` normalizer whose
//! `precompiled_charsmap` is missing or not a string (both found by fuzzing, see
//! fuzz/README.md). [`parse`] checks the JSON syntax first, then turns any panic left inside
//! the crate into an error, without printing it.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::Once;

use anyhow::{anyhow, Result};

thread_local! {
    /// Set while this thread runs tokenizers code whose panics are turned into errors.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// `tokenizers::Tokenizer::from_str`, with a malformed file always an error.
pub fn parse(text: &str) -> Result<tokenizers::Tokenizer> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| anyhow!("invalid JSON: {e}"))?;
    match quietly(|| tokenizers::Tokenizer::from_str(text)) {
        Ok(Ok(tokenizer)) => Ok(tokenizer),
        Ok(Err(e)) => Err(anyhow!("{e}")),
        Err(message) => Err(anyhow!("the tokenizers library cannot read it: {message}")),
    }
}

/// Runs `f`, returning a panic's message instead of unwinding or printing it (panics of other
/// threads, and of this thread outside `f`, still reach the previous panic hook).
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokenizer.json that loads, for the cases below to break one part of.
    fn valid() -> serde_json::Value {
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]}
        })
    }

    #[test]
    fn valid_file_loads() {
        assert!(parse(&valid().to_string()).is_ok());
    }

    /// Fuzzing regression (fuzz target `tokenizer_json`): tokenizers panicked with
    /// `Helper: EOF while parsing` on a file cut off inside the decoder.
    #[test]
    fn fuzz_file_cut_inside_decoder_is_an_error() {
        let e = parse(r#"{"decoder":"#).unwrap_err();
        assert!(format!("{e}").contains("invalid JSON"), "{e}");
        let text = valid().to_string();
        let cut = text.find(r#""decoder":"#).unwrap() + 12;
        assert!(parse(&text[..cut]).is_err());
    }

    /// Fuzzing regression (fuzz target `tokenizer_json`): tokenizers panicked with
    /// `Precompiled: Error(…)` on a Precompiled normalizer without a string charsmap.
    #[test]
    fn fuzz_precompiled_normalizer_without_charsmap_is_an_error() {
        for normalizer in [serde_json::json!({"type": "Precompiled"}), serde_json::json!({"type": "Precompiled", "precompiled_charsmap": 5})] {
            let mut t = valid();
            t["normalizer"] = normalizer;
            let e = parse(&t.to_string()).unwrap_err();
            assert!(format!("{e}").contains("Precompiled"), "{e}");
        }
    }
}
