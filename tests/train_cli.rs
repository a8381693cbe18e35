//! `mm train` end to end on the sample data: exact resume (also after SIGKILL), and a
//! pretrain → SFT run that learns.

mod common;

use common::{mm_ok as mm, samples};

use std::path::{Path, PathBuf};
use std::process::Command;

const MM: &str = env!("CARGO_BIN_EXE_mm");


/// A 2-layer, 64-wide model with the MiniMind2 tokenizer (fast enough for a debug build).
fn tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny");
    mm(&["init", "--hidden-size", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--seed", "7", "-o", path.to_str().unwrap()]);
    path
}

fn pretrain_args<'a>(model: &'a str, out: &'a str, max_steps: &'a str) -> Vec<&'a str> {
    vec![
        "train", "pretrain", "--data", "", "--from", model, "--batch-size", "4", "--max-seq-len", "48",
        "--accumulation-steps", "2", "--save-every", "2", "--log-every", "1", "--out", out, "--max-steps", max_steps, "--quiet",
    ]
}

fn final_weights(out: &Path) -> Vec<(String, Vec<f32>)> {
    let st = out.join("pretrain_64_resume/model/model.safetensors");
    mm::converters::safetensors_file::read_file(&st)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

fn losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("pretrain_64.metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

fn run_pretrain(model: &Path, out: &Path, max_steps: &str, resume: bool) {
    let data = samples("pretrain_sample.jsonl");
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    let mut args = pretrain_args(m, o, max_steps);
    args[3] = data.to_str().unwrap();
    if resume {
        args.push("--resume");
    }
    mm(&args);
}

#[test]
fn resume_continues_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let whole = dir.path().join("whole");
    let split = dir.path().join("split");
    run_pretrain(&model, &whole, "7", false);
    // Stop after step 3: mid-way through an accumulation window (accumulation 2), just after a save.
    run_pretrain(&model, &split, "3", false);
    run_pretrain(&model, &split, "7", true);
    let (a, b) = (final_weights(&whole), final_weights(&split));
    assert_eq!(a.len(), b.len());
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{n} differs after resume");
    }
    let (la, lb) = (losses(&whole), losses(&split));
    assert_eq!(la, lb, "per-step losses differ");
    println!("7 steps, stopped at 3 and resumed: {} tensors bit-identical, losses {:?}", a.len(), la);
}

/// The CUDA-graph training path's buffers (gradients summed in place per parameter, the
/// update's clip + AdamW + zeroing, the half-accumulated gradient saved from and restored into
/// the buffers), taken on the CPU without recording (`MM_CUDA_GRAPH=buffers`), against the
/// eager loop: one epoch (27 full batches and a short last one, accumulation 2), straight and
/// stopped mid-accumulation at step 3 then resumed. Losses and weights must be bit-identical.
#[test]
fn graph_step_buffers_train_as_the_eager_loop() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = samples("pretrain_sample.jsonl");
    let run = |out: &Path, max_steps: &str, resume: bool, buffers: bool| {
        let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
        let mut args = pretrain_args(m, o, max_steps);
        args[3] = data.to_str().unwrap();
        if resume {
            args.push("--resume");
        }
        let mut cmd = Command::new(MM);
        cmd.args(&args).env_remove("MM_CUDA_GRAPH");
        if buffers {
            cmd.env("MM_CUDA_GRAPH", "buffers");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "mm {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    };
    let (eager, buffers, split) = (dir.path().join("eager"), dir.path().join("buffers"), dir.path().join("split"));
    run(&eager, "100", false, false);
    run(&buffers, "100", false, true);
    run(&split, "3", false, true);
    run(&split, "100", true, true);
    let le = losses(&eager);
    assert_eq!(le.len(), 28, "one epoch of 110 rows in batches of 4");
    assert_eq!(losses(&buffers), le, "per-step losses differ from the eager loop's");
    assert_eq!(losses(&split), le, "the resumed run's losses differ");
    let we = final_weights(&eager);
    for (what, w) in [("buffers", final_weights(&buffers)), ("resumed", final_weights(&split))] {
        assert_eq!(w.len(), we.len());
        for ((n, x), (_, y)) in w.iter().zip(&we) {
            assert!(x == y, "{what}: {n} differs from the eager loop's");
        }
    }
    println!("{} steps, graph-path buffers = eager loop, straight and resumed at 3: losses and {} tensors bit-identical", le.len(), we.len());
}

#[test]
fn resume_after_sigkill_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let whole = dir.path().join("whole");
    let killed = dir.path().join("killed");
    run_pretrain(&model, &whole, "12", false);

    let data = samples("pretrain_sample.jsonl");
    let mut args = pretrain_args(model.to_str().unwrap(), killed.to_str().unwrap(), "12");
    args[3] = data.to_str().unwrap();
    let mut child = Command::new(MM).args(&args).spawn().unwrap();
    let state = killed.join("pretrain_64_resume/state.json");
    let started = std::time::Instant::now();
    while !state.exists() && started.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    println!("killed with a save at step {}", saved["micro_steps"]);
    run_pretrain(&model, &killed, "12", true);
    let (a, b) = (final_weights(&whole), final_weights(&killed));
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{n} differs after SIGKILL + resume");
    }
    let (la, lb) = (losses(&whole), losses(&killed));
    // The killed run may have logged steps after its last save; the resumed run logs them again.
    let mut dedup: Vec<(u64, f64)> = Vec::new();
    for l in lb {
        dedup.retain(|d| d.0 < l.0);
        dedup.push(l);
    }
    assert_eq!(la, dedup);
}

#[test]
fn pretrain_then_sft_learns_and_answers_in_chat_format() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let pre = mm(&[
        "train", "pretrain", "--data", samples("pretrain_sample.jsonl").to_str().unwrap(), "--from", model.to_str().unwrap(),
        "--batch-size", "8", "--max-seq-len", "64", "--accumulation-steps", "1", "--lr", "3e-3", "--epochs", "4",
        "--out", o, "--quiet",
    ]);
    println!("{pre}");
    let sft = mm(&[
        "train", "sft", "--data", samples("sft_sample.jsonl").to_str().unwrap(), "--from", out.join("pretrain_64.pth").to_str().unwrap(),
        "--batch-size", "4", "--max-seq-len", "128", "--lr", "3e-3", "--epochs", "20", "--out", o, "--quiet",
    ]);
    println!("{sft}");
    let parse = |s: &str| -> (f64, f64) {
        let l = s.lines().find(|l| l.starts_with("trained")).unwrap();
        let nums: Vec<f64> = l.split("loss ").nth(1).unwrap().split(" -> ").map(|x| x.trim().parse().unwrap()).collect();
        (nums[0], nums[1])
    };
    let (p0, p1) = parse(&pre);
    let (s0, s1) = parse(&sft);
    assert!(p1 < p0 - 1.0, "pretraining did not lower the loss clearly: {p0} -> {p1}");
    assert!(s1 < s0 - 0.5, "SFT did not lower the loss clearly: {s0} -> {s1}");
    // The SFT model closes its turn with <|im_end|> as the chat format asks.
    let out = Command::new(MM)
        .args(["generate", out.join("full_sft_64.pth").to_str().unwrap(), "-p", "你好", "--greedy", "--max-new-tokens", "64", "--show-ids"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    println!("SFT reply: {text}");
    let ids: Vec<u32> = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(ids.last(), Some(&2), "the reply did not end its turn with <|im_end|>: {ids:?}");
    assert!(ids.len() > 1, "the reply is empty");
}
