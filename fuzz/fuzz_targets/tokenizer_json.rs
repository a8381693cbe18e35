//! `tokenizer.json`: loaded as `mm tokenize`/`generate`/`chat` load it (with a fixed
//! tokenizer_config.json), used to encode and decode, then turned into a GGUF vocabulary
//! (`mm export gguf`) and an MNN `tokenizer.mtok` (`mm export mnn`), both of which read the
//! JSON themselves.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mm::chat::Tokenizer;
use mm::converters::gguf::vocab::GgufVocab;
use mm::converters::TokenizerFiles;
use mm::export::mnn::tokenizer_mtok::{write_mtok, MtokOptions};
use serde_json::Value;

static CONFIG: OnceLock<Value> = OnceLock::new();

fuzz_target!(init: {
    mm_fuzz::one_thread();
    CONFIG.set(serde_json::from_slice(mm_fuzz::TINY_TOKENIZER_CONFIG).expect("seed config is JSON")).unwrap();
}, |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let config = CONFIG.get().unwrap();
    if let Ok(tok) = Tokenizer::from_strings(text, Some(config)) {
        for sample in ["", "hello world", "<|im_start|>user\n你好<|im_end|>\n", "\u{0}\u{ffff} \t\n  a"] {
            if let Ok(ids) = tok.encode(sample, true) {
                let _ = tok.decode(&ids, false);
                let _ = tok.decode(&ids, true);
            }
        }
        let _ = tok.decode(&[0, 1, 2, 3, 255, 256, 4000, u32::MAX], false);
        let _ = tok.vocab_size();
    }
    let files = TokenizerFiles {
        tokenizer_json: Some(text.to_string()),
        tokenizer_config: Some(config.clone()),
        chat_template: None,
    };
    if let Ok(vocab) = GgufVocab::from_tokenizer(&files, 512) {
        let _ = vocab.to_tokenizer_files();
    }
    let _ = write_mtok(&files, &MtokOptions { generation_eos_ids: vec![2] });
});
