//! Issue 13, findings 2 and 5: a resumed run writes only under its `--out`; settings that
//! cannot train are refused; a diverged run never saves NaN weights; rows without loss
//! tokens are skipped and named instead of turning the loss into NaN; an interrupted swap
//! of the resume directory is recovered, and `--resume` never silently starts afresh.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MM: &str = env!("CARGO_BIN_EXE_mm");

fn samples(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dataset/samples").join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(MM).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(out.status.success(), "mm {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny");
    ok(&["init", "--hidden-size", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--seed", "7", "-o", path.to_str().unwrap()]);
    path
}

/// `mm train pretrain` on the sample data from `model`, saving every step.
fn pretrain(model: &Path, out: &Path, max_steps: &str, extra: &[&str]) -> Output {
    let data = samples("pretrain_sample.jsonl");
    let mut args = vec![
        "train", "pretrain", "--data", data.to_str().unwrap(), "--from", model.to_str().unwrap(), "--batch-size", "4",
        "--max-seq-len", "32", "--accumulation-steps", "1", "--save-every", "1", "--out", out.to_str().unwrap(),
        "--max-steps", max_steps, "--quiet",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn all_finite(pth: &Path) -> bool {
    let ckpt = mm::converters::read_checkpoint(pth, &Default::default()).unwrap();
    ckpt.tensors().iter().all(|(_, t)| {
        t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|x| x.is_finite())
    })
}

#[test]
fn a_resumed_run_writes_only_under_its_out() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let first = dir.path().join("first");
    assert!(pretrain(&model, &first, "2", &[]).status.success());
    // The run is moved, and its state.json edited to point elsewhere.
    let moved = dir.path().join("moved");
    std::fs::rename(&first, &moved).unwrap();
    let state_path = moved.join("pretrain_64_resume/state.json");
    let mut state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    state["options"]["out_dir"] = serde_json::json!(elsewhere);
    state["options"]["weights_file"] = serde_json::json!("../escaped.pth");
    std::fs::write(&state_path, serde_json::to_string(&state).unwrap()).unwrap();
    let before = std::fs::metadata(moved.join("pretrain_64.pth")).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));

    let out = pretrain(&model, &moved, "3", &["--resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("at step 2"), "{}", stderr(&out));
    assert!(!first.exists(), "the resumed run wrote into its old folder");
    assert!(!elsewhere.exists(), "the resumed run wrote where state.json said");
    assert!(!dir.path().join("escaped.pth").exists());
    let after = std::fs::metadata(moved.join("pretrain_64.pth")).unwrap().modified().unwrap();
    assert!(after > before, "the weights under --out were not updated");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    assert_eq!(saved["micro_steps"], 3);
}

#[test]
fn settings_that_cannot_train_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("out");
    for (flag, value, says) in [
        ("--accumulation-steps", "0", "accumulation"),
        ("--epochs", "0", "epochs"),
        ("--batch-size", "0", "batch"),
        ("--lr", "0", "lr"),
        ("--lr", "inf", "lr"),
        ("--lr=-1e-3", "", "lr"),
    ] {
        let r = if value.is_empty() { pretrain(&model, &out, "2", &[flag]) } else { pretrain(&model, &out, "2", &[flag, value]) };
        assert!(!r.status.success(), "{flag} {value} was accepted");
        assert!(stderr(&r).contains(says), "{flag} {value}: {}", stderr(&r));
        assert!(!out.join("pretrain_64.pth").exists(), "{flag} {value}: weights were written");
    }
}

#[test]
fn a_diverged_run_never_saves_non_finite_weights() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("out");
    let r = pretrain(&model, &out, "3", &["--lr", "1e30"]);
    assert!(!r.status.success(), "a run at --lr 1e30 exited 0");
    let msg = stderr(&r);
    assert!(msg.contains("NaN"), "{msg}");
    let weights = out.join("pretrain_64.pth");
    if weights.exists() {
        assert!(all_finite(&weights), "NaN or infinite weights were saved");
    }
    let resume_model = out.join("pretrain_64_resume/model/model.safetensors");
    if resume_model.exists() {
        assert!(all_finite(&out.join("pretrain_64_resume/model")), "NaN or infinite weights in the resume checkpoint");
    }
}

#[test]
fn rows_without_loss_tokens_are_skipped_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    // SFT: line 2's reply is cut off by --max-seq-len (a long question first).
    let sft = dir.path().join("sft.jsonl");
    let good = std::fs::read_to_string(samples("sft_sample.jsonl")).unwrap();
    let good: Vec<&str> = good.lines().take(3).collect();
    let long = serde_json::json!({"conversations": [
        {"role": "user", "content": "很长的问题 ".repeat(200)},
        {"role": "assistant", "content": "答案"}
    ]});
    let mut text = format!("{}\n{long}\n", good[0]);
    for line in &good[1..] {
        text.push_str(&format!("{line}\n"));
    }
    std::fs::write(&sft, text).unwrap();
    let out = dir.path().join("out");
    let r = run(&[
        "train", "sft", "--data", sft.to_str().unwrap(), "--from", model.to_str().unwrap(), "--batch-size", "1",
        "--max-seq-len", "160", "--epochs", "1", "--out", out.to_str().unwrap(), "--quiet",
    ]);
    let msg = stderr(&r);
    assert!(r.status.success(), "{msg}");
    assert!(msg.contains(&format!("{}:2: no loss tokens", sft.display())), "{msg}");
    assert!(!msg.contains("NaN"), "{msg}");
    assert!(all_finite(&out.join("full_sft_64.pth")));

    // Pretrain: an empty text.
    let pre = dir.path().join("pre.jsonl");
    let good = std::fs::read_to_string(samples("pretrain_sample.jsonl")).unwrap();
    let mut lines: Vec<String> = good.lines().take(3).map(String::from).collect();
    lines.insert(1, r#"{"text": ""}"#.into());
    std::fs::write(&pre, lines.join("\n") + "\n").unwrap();
    let r = run(&[
        "train", "pretrain", "--data", pre.to_str().unwrap(), "--from", model.to_str().unwrap(), "--batch-size", "1",
        "--max-seq-len", "32", "--accumulation-steps", "1", "--out", out.to_str().unwrap(), "--quiet",
    ]);
    let msg = stderr(&r);
    assert!(r.status.success(), "{msg}");
    assert!(msg.contains(&format!("{}:2: no loss tokens", pre.display())), "{msg}");

    // Only such rows: an error, not a run that trains nothing and saves.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "{\"text\": \"\"}\n{\"text\": \"\"}\n").unwrap();
    let out2 = dir.path().join("out2");
    let r = run(&[
        "train", "pretrain", "--data", empty.to_str().unwrap(), "--from", model.to_str().unwrap(), "--batch-size", "1",
        "--max-seq-len", "32", "--out", out2.to_str().unwrap(), "--quiet",
    ]);
    assert!(!r.status.success());
    assert!(!out2.join("pretrain_64.pth").exists());
}

#[test]
fn an_interrupted_resume_swap_is_recovered_and_resume_never_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("out");
    assert!(pretrain(&model, &out, "2", &[]).status.success());
    let weights_before = std::fs::read(out.join("pretrain_64.pth")).unwrap();

    // A kill between "move the old resume directory aside" and "move the new one in".
    let resume = out.join("pretrain_64_resume");
    let dead_pid = 999_999_999u32;
    std::fs::rename(&resume, out.join(format!(".pretrain_64_resume.old.{dead_pid}.tmp"))).unwrap();
    // …and a temporary file another killed run left behind.
    let stale = out.join(format!(".pretrain_64.pth.{dead_pid}.tmp"));
    std::fs::write(&stale, "half-written").unwrap();

    let r = pretrain(&model, &out, "3", &["--resume"]);
    let msg = stderr(&r);
    assert!(r.status.success(), "{msg}");
    assert!(msg.contains("restored"), "{msg}");
    assert!(msg.contains("at step 2"), "the run did not continue from its save: {msg}");
    assert!(!stale.exists(), "a stale temporary was left");
    for entry in std::fs::read_dir(&out).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "{name} left in --out");
    }

    // --resume with nothing to resume from is an error; nothing is overwritten.
    std::fs::remove_dir_all(&resume).unwrap();
    let weights_now = std::fs::read(out.join("pretrain_64.pth")).unwrap();
    assert_ne!(weights_now, weights_before);
    let r = pretrain(&model, &out, "3", &["--resume"]);
    assert!(!r.status.success(), "--resume without a checkpoint started fresh");
    assert!(stderr(&r).contains("no resume checkpoint"), "{}", stderr(&r));
    assert_eq!(std::fs::read(out.join("pretrain_64.pth")).unwrap(), weights_now);
}
