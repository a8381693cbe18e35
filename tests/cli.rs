//! The `mm` binary end to end on a tiny model: init, convert, inspect, generate, errors.

use std::path::Path;
use std::process::{Command, Output};

fn mm(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mm")).args(args).current_dir(cwd).output().unwrap()
}

fn ok(args: &[&str], cwd: &Path) -> String {
    let out = mm(args, cwd);
    assert!(out.status.success(), "mm {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

const TINY: &[&str] = &["--hidden-size", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--max-position-embeddings", "512"];

#[test]
fn init_convert_inspect_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut init = vec!["init", "-o", "tiny"];
    init.extend_from_slice(TINY);
    ok(&init, dir);
    ok(&["convert", "tiny", "--to", "pth", "-o", "tiny.pth"], dir);
    ok(&["convert", "tiny.pth", "--to", "hf-llama", "-o", "llama", "--dtype", "bf16"], dir);
    let inspect = ok(&["inspect", "llama", "--json"], dir);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["format"], "hf-llama");
    assert_eq!(v["config"]["hidden_size"], 64);
    assert!(v["tensors"].as_array().unwrap().iter().all(|t| t["dtype"] == "bf16"));

    // Greedy generation is the same from every format of the same weights.
    let gen = |model: &str| ok(&["generate", model, "-p", "hello", "--greedy", "--max-new-tokens", "6", "--show-ids"], dir);
    let a = gen("tiny");
    assert_eq!(a, gen("tiny.pth"));
    assert!(a.lines().last().unwrap().starts_with('['), "{a}");
}

#[test]
fn moe_preset_shape_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut init = vec!["init", "-o", "moe", "--experts", "4", "--shared-experts", "1"];
    init.extend_from_slice(TINY);
    ok(&init, tmp.path());
    let out = ok(&["generate", "moe", "-p", "hi", "--max-new-tokens", "4", "--seed", "7"], tmp.path());
    assert!(!out.is_empty());
    assert!(mm(&["convert", "moe", "--to", "hf-llama", "-o", "x"], tmp.path()).status.code() == Some(1));
    assert!(!tmp.path().join("x").exists(), "a refused conversion left output behind");
}

#[test]
fn bad_input_gives_a_clear_error_and_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("broken.pth"), b"PK\x03\x04 truncated").unwrap();
    let out = mm(&["convert", "broken.pth", "--to", "hf", "-o", "out"], dir);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.pth"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!dir.join("out").exists());

    let out = mm(&["init", "--hidden-size", "100", "--heads", "7", "-o", "bad"], dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not divide hidden_size"));
    assert!(!dir.join("bad").exists());

    let out = mm(&["generate", "missing-dir", "-p", "x"], dir);
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing-dir: no such file or directory"));
}
