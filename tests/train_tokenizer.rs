//! `mm train-tokenizer`: byte-level BPE training on the sample pretrain corpus.

use std::path::{Path, PathBuf};

use mm::chat::train_tokenizer::{train_tokenizer, TrainOptions, SPECIAL_TOKENS};
use mm::chat::{ChatTemplate, RenderRequest, Tokenizer};
use serde_json::json;

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dataset/samples/pretrain_sample.jsonl")
}

fn opts(vocab_size: usize) -> TrainOptions {
    TrainOptions { vocab_size, ..TrainOptions::default() }
}

#[test]
fn trains_specials_vocab_round_trip_and_template() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tok");
    let report = train_tokenizer(&[sample()], &out, &opts(600)).unwrap();
    assert_eq!(report.vocab_size, 600);
    assert_eq!(report.lines_skipped, 0);
    assert!(report.lines_used >= 60);
    assert!(out.join("tokenizer.json").is_file() && out.join("tokenizer_config.json").is_file());

    let tok = Tokenizer::from_dir(&out).unwrap();
    assert_eq!(tok.vocab_size(), 600);
    for (id, t) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tok.token_id(t), Some(id as u32), "{t}");
        assert_eq!(tok.id_to_token(id as u32).as_deref(), Some(*t));
        assert!(tok.is_special(id as u32));
    }
    assert_eq!(tok.eos_id(), Some(2));

    for text in ["Hello, 世界! 语言模型 learns byte-level BPE.", "今天早上下了一场小雨 🌧️ tabs\tand\nnewlines", "  leading spaces"] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    // Frequent words are merged: fewer tokens than bytes.
    let common = "语言模型 The weather today";
    assert!(tok.encode(common, false).unwrap().len() < common.len());
    let ids = tok.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(*ids.last().unwrap(), 2);

    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer.json")).unwrap()).unwrap();
    assert_eq!(json["pre_tokenizer"], json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}));
    assert_eq!(json["decoder"]["type"], "ByteLevel");
    assert_eq!(json["model"]["type"], "BPE");
    let builtin = include_str!("../assets/minimind2/tokenizer_config.json");
    assert_eq!(std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap(), builtin);

    let template = ChatTemplate::from_dir(&out).unwrap().expect("chat template");
    let req = RenderRequest::new(json!([{"role": "user", "content": "你好"}])).with_generation_prompt(true);
    let text = template.render(&req).unwrap();
    assert!(text.contains("<|im_start|>user\n你好<|im_end|>"), "{text}");
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
    let ids = tok.encode(&text, false).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
}

#[test]
fn bad_line_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.jsonl");
    let mut lines: Vec<String> = (0..20).map(|i| json!({"text": format!("line number {i} 第{i}行")}).to_string()).collect();
    lines[16] = "{not json".into();
    lines[18] = json!({"content": "no text field"}).to_string();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let out = tmp.path().join("tok");

    let err = format!("{:#}", train_tokenizer(std::slice::from_ref(&corpus), &out, &opts(300)).unwrap_err());
    assert!(err.contains("corpus.jsonl:17:"), "{err}");
    assert!(!out.exists());

    let o = TrainOptions { skip_bad_lines: true, ..opts(300) };
    let report = train_tokenizer(&[corpus], &out, &o).unwrap();
    assert_eq!(report.lines_skipped, 2);
    assert_eq!(report.lines_used, 18);
    assert!(out.join("tokenizer.json").is_file());
}

#[test]
fn empty_corpus_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("empty.jsonl");
    std::fs::write(&corpus, "\n\n").unwrap();
    let out = tmp.path().join("tok");
    let err = format!("{:#}", train_tokenizer(&[corpus], &out, &opts(600)).unwrap_err());
    assert!(err.contains("no usable lines"), "{err}");
    assert!(!out.exists());
}

#[test]
fn cli_trains_and_tokenizes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tok");
    let mm = env!("CARGO_BIN_EXE_mm");
    let status = std::process::Command::new(mm)
        .args(["train-tokenizer", "--vocab-size", "500", "-o"])
        .arg(&out)
        .arg(sample())
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let res = std::process::Command::new(mm).args(["tokenize", "--model"]).arg(&out).arg("hello 世界").output().unwrap();
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let ids: Vec<u32> = serde_json::from_slice(&res.stdout).unwrap();
    let tok = Tokenizer::from_dir(&out).unwrap();
    assert_eq!(tok.vocab_size(), 500);
    assert_eq!(ids, tok.encode("hello 世界", false).unwrap());
}
