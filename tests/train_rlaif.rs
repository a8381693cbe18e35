//! `mm train grpo|spo|ppo` end to end on the toy reasoning-format task
//! (`dataset/samples/rlaif_toy*.jsonl`, see its README): a tiny model is SFT'd once on
//! `rlaif_toy_sft.jsonl` with mm's own sft stage, then each algorithm trains it with
//! `--reward rule:reasoning` on the unseen prompts of `rlaif_toy.jsonl`, and must raise the
//! mean reward; an interrupted and resumed run must give exactly the uninterrupted one's steps.
//!
//! Why the learning assertion cannot pass by chance: without learning, the per-step mean
//! rewards are draws around one value with some std σ (measured in the run itself); the
//! difference of the means of two windows of 20 steps then has std σ·√(2/20) ≈ 0.32σ. Each
//! test asserts the last 20 steps' mean exceeds the first 20's by at least [`MARGIN`] in
//! reward *and* by at least [`Z`] of those standard errors (computed from the two windows'
//! own spreads). At σ ≈ 0.15–0.3 (measured) the margin alone is 2–4 standard errors of the
//! difference; a z of 4 has a one-sided chance below 1e-4. The runs are deterministic (CPU, fixed seeds),
//! so what passes once passes always; the argument says why a pass means learning.
//!
//! The three learning tests take a lock so they do not share the two cores (each one's time is
//! printed); the SFT warm start is made once for the whole binary.

mod common;

use common::{mm_ok as mm, samples};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde_json::Value;

const MM: &str = env!("CARGO_BIN_EXE_mm");

/// The reward gain asserted (the rule reward is in [0, 1.5]).
const MARGIN: f64 = 0.2;
/// ...and in standard errors of the window means' difference.
const Z: f64 = 4.0;
/// Steps per learning run and the window compared at each end.
const STEPS: usize = 70;
const WINDOW: usize = 20;

static SERIAL: Mutex<()> = Mutex::new(());
static SFT: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();


/// A 2-layer, 64-wide model SFT'd on the toy task (120 steps): it answers in all three of the
/// SFT file's layouts (reward 0, 0.5 and 1.5), so rollouts of one prompt differ in reward.
fn sft_model() -> PathBuf {
    let (_, path) = SFT.get_or_init(|| {
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let tiny = dir.path().join("tiny");
        mm(&["init", "--hidden-size", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--seed", "7", "-o", tiny.to_str().unwrap()]);
        let data = samples("rlaif_toy_sft.jsonl");
        let out = dir.path().join("sft");
        mm(&[
            "train", "sft", "--data", data.to_str().unwrap(), "--from", tiny.to_str().unwrap(), "--batch-size", "8", "--max-seq-len", "64",
            "--lr", "5e-3", "--epochs", "20", "--log-every", "20", "--out", out.to_str().unwrap(), "--quiet",
        ]);
        println!("SFT warm start: {:.0} s", started.elapsed().as_secs_f64());
        let path = out.join("full_sft_64.pth");
        (dir, path)
    });
    path.clone()
}

fn metrics(out: &Path, stem: &str) -> Vec<Value> {
    std::fs::read_to_string(out.join(format!("{stem}.metrics.jsonl")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn var(v: &[f64]) -> f64 {
    let m = mean(v);
    v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
}

/// Trains `stage` for [`STEPS`] steps and checks that it learns (module docs) with a finite KL.
fn learns(stage: &str, stem: &str, extra: &[&str]) {
    let model = sft_model();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(stage);
    let data = samples("rlaif_toy.jsonl");
    let steps = STEPS.to_string();
    let mut args = vec![
        "train", stage, "--data", data.to_str().unwrap(), "--from", model.to_str().unwrap(), "--reward", "rule:reasoning",
        "--max-gen-len", "40", "--epochs", "100", "--max-steps", &steps, "--save-every", "1000", "--out", out.to_str().unwrap(), "--quiet",
    ];
    args.extend_from_slice(extra);
    let printed = mm(&args);
    let lines = metrics(&out, stem);
    assert_eq!(lines.len(), STEPS);
    let rewards: Vec<f64> = lines.iter().map(|l| l["reward"].as_f64().unwrap()).collect();
    for l in &lines {
        for key in ["kl", "kl_ref"] {
            if let Some(kl) = l.get(key) {
                assert!(kl.as_f64().is_some_and(f64::is_finite), "step {}: {key} {kl}", l["step"]);
            }
        }
    }
    let (first, last) = (&rewards[..WINDOW], &rewards[STEPS - WINDOW..]);
    let gain = mean(last) - mean(first);
    let se = ((var(first) + var(last)) / WINDOW as f64).sqrt();
    let kl_last = lines.last().unwrap()["kl"].as_f64().unwrap();
    println!(
        "{stage}: mean reward {:.3} (first {WINDOW} steps) -> {:.3} (last {WINDOW}), gain {gain:.3} = {:.1} standard errors \
         (per-step std {:.3} / {:.3}); last KL {kl_last:.4}; {:.0} s",
        mean(first),
        mean(last),
        gain / se,
        var(first).sqrt(),
        var(last).sqrt(),
        started.elapsed().as_secs_f64()
    );
    assert!(printed.contains("reward:  mean"), "the run reports its rewards:\n{printed}");
    assert!(out.join(format!("{stem}.reward.png")).exists() && out.join(format!("{stem}.loss.png")).exists());
    assert!(gain >= MARGIN, "{stage}: reward gain {gain:.3} below {MARGIN}");
    assert!(gain >= Z * se, "{stage}: reward gain {gain:.3} is only {:.1} standard errors ({se:.3})", gain / se);
}

#[test]
fn grpo_learns_the_reasoning_format() {
    learns("grpo", "grpo_64", &["--batch-size", "2", "--num-generations", "4", "--lr", "1e-3"]);
}

#[test]
fn spo_learns_the_reasoning_format() {
    learns("spo", "spo_64", &["--batch-size", "4", "--accumulation-steps", "1", "--lr", "3e-4"]);
}

/// The same run with bf16 compute over f32 master weights (`--dtype bf16`): the policy, the
/// reference and the rollouts in bf16 must still learn.
#[test]
fn spo_learns_in_bf16() {
    learns("spo", "spo_64", &["--batch-size", "4", "--accumulation-steps", "1", "--lr", "3e-4", "--dtype", "bf16"]);
}

#[test]
fn ppo_learns_the_reasoning_format() {
    learns("ppo", "ppo_actor_64", &["--batch-size", "8", "--lr", "3e-4", "--critic-lr", "1e-3"]);
}

/// A metrics line without its timings.
fn step_figures(mut v: Value) -> Value {
    let o = v.as_object_mut().unwrap();
    o.remove("elapsed_s");
    o.remove("tokens_per_s");
    v
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for name in ["model/model.safetensors", "optimizer.safetensors", "objective.safetensors", "objective.json"] {
        let p = dir.join(name);
        if p.exists() {
            out.push((name.to_string(), std::fs::read(p).unwrap()));
        }
    }
    out
}

/// 6 steps straight vs 3 steps then `--resume` to 6 (accumulation 2: the stop falls mid-way
/// through an accumulation window): the same metrics lines (reward, KL, loss, …) and the same
/// bytes in the resume directory (actor, its AdamW moments, the critic and its optimizer, the
/// old actor, SPO's tracker).
#[test]
fn resume_gives_the_uninterrupted_steps() {
    let model = sft_model();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let data = samples("rlaif_toy.jsonl");
    let dir = tempfile::tempdir().unwrap();
    for (stage, stem, extra) in [
        ("grpo", "grpo_64", &["--num-generations", "2"][..]),
        ("spo", "spo_64", &[][..]),
        ("ppo", "ppo_actor_64", &["--critic-lr", "1e-3", "--update-old-actor-freq", "2"][..]),
    ] {
        let run = |out: &Path, steps: &str, resume: bool| {
            let mut args = vec![
                "train", stage, "--data", data.to_str().unwrap(), "--from", model.to_str().unwrap(), "--reward", "rule:reasoning,length",
                "--batch-size", "2", "--accumulation-steps", "2", "--max-gen-len", "12", "--lr", "1e-3", "--save-every", "2",
                "--max-steps", steps, "--out", out.to_str().unwrap(), "--quiet",
            ];
            args.extend_from_slice(extra);
            if resume {
                args.push("--resume");
            }
            mm(&args);
        };
        let whole = dir.path().join(format!("{stage}_whole"));
        let split = dir.path().join(format!("{stage}_split"));
        run(&whole, "6", false);
        run(&split, "3", false);
        run(&split, "6", true);
        let a: Vec<Value> = metrics(&whole, stem).into_iter().map(step_figures).collect();
        let b: Vec<Value> = metrics(&split, stem).into_iter().map(step_figures).collect();
        assert_eq!(a.len(), 6);
        assert_eq!(a, b, "{stage}: the resumed run's steps differ");
        let (fa, fb) = (files(&whole.join(format!("{stem}_resume"))), files(&split.join(format!("{stem}_resume"))));
        assert!(fa.len() >= 4 || stage != "ppo", "{stage}: the critic's files are missing");
        assert_eq!(fa.len(), fb.len());
        for ((name, x), (_, y)) in fa.iter().zip(&fb) {
            assert!(x == y, "{stage}: {name} differs after resume");
        }
        assert_eq!(std::fs::read(whole.join(format!("{stem}.pth"))).unwrap(), std::fs::read(split.join(format!("{stem}.pth"))).unwrap());
        println!("{stage}: 6 steps = 3 + resume 3, metrics and {} resume files bit-identical", fa.len());
    }
    println!("resume checks: {:.0} s", started.elapsed().as_secs_f64());
}

/// PPO (the stage with the most state: critic, its AdamW, the old actor) killed with SIGKILL
/// after its first save, then resumed: the same weights and resume files as an uninterrupted
/// run, and the same steps (the killed run may have logged steps past its last save; the
/// resumed run logs them again, and the later line of a step wins).
#[test]
fn ppo_resumed_after_sigkill_matches_an_uninterrupted_run() {
    let model = sft_model();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let data = samples("rlaif_toy.jsonl");
    let dir = tempfile::tempdir().unwrap();
    let (whole, killed) = (dir.path().join("whole"), dir.path().join("killed"));
    let args = |out: &Path| -> Vec<String> {
        [
            "train", "ppo", "--data", data.to_str().unwrap(), "--from", model.to_str().unwrap(), "--reward", "rule:reasoning,length",
            "--batch-size", "2", "--accumulation-steps", "2", "--max-gen-len", "12", "--lr", "1e-3", "--critic-lr", "1e-3",
            "--update-old-actor-freq", "3", "--save-every", "2", "--max-steps", "10", "--out", out.to_str().unwrap(), "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let whole_args = args(&whole);
    mm(&whole_args.iter().map(String::as_str).collect::<Vec<_>>());

    let mut child = Command::new(MM).args(args(&killed)).spawn().unwrap();
    let state = killed.join("ppo_actor_64_resume/state.json");
    let started = Instant::now();
    while !state.exists() && started.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let mut resume = args(&killed);
    resume.push("--resume".into());
    mm(&resume.iter().map(String::as_str).collect::<Vec<_>>());

    let a: Vec<Value> = metrics(&whole, "ppo_actor_64").into_iter().map(step_figures).collect();
    let mut b: Vec<Value> = Vec::new();
    for line in metrics(&killed, "ppo_actor_64").into_iter().map(step_figures) {
        b.retain(|l: &Value| l["step"].as_u64() < line["step"].as_u64());
        b.push(line);
    }
    assert_eq!(a.len(), 10);
    assert_eq!(a, b, "the resumed run's steps differ");
    let (fa, fb) = (files(&whole.join("ppo_actor_64_resume")), files(&killed.join("ppo_actor_64_resume")));
    assert!(fa.len() >= 4, "the critic's files are missing");
    for ((name, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{name} differs after SIGKILL + resume");
    }
    assert_eq!(std::fs::read(whole.join("ppo_actor_64.pth")).unwrap(), std::fs::read(killed.join("ppo_actor_64.pth")).unwrap());
    println!("ppo killed with a save at micro-step {}, resumed: 10 steps and {} resume files bit-identical", saved["micro_steps"], fa.len());
}

#[test]
fn bad_invocations_say_what_is_wrong() {
    let data = samples("rlaif_toy.jsonl");
    let fail = |args: &[&str]| {
        let out = Command::new(MM).args(args).output().unwrap();
        assert!(!out.status.success(), "mm {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let d = data.to_str().unwrap();
    assert!(fail(&["train", "grpo", "--data", d, "--from", "nowhere"]).contains("no reward source"));
    assert!(fail(&["train", "grpo", "--data", d, "--from", "nowhere", "--reward", "rule:nope"]).contains("unknown rule `nope`"));
    let e = fail(&["train", "grpo", "--data", d, "--from", "nowhere", "--reward", "rule:reasoning", "--num-generations", "1"]);
    assert!(e.contains("at least 2 samples"), "{e}");
    // SPO and PPO run data parallel now (tests/data_parallel_cpu.rs); GPUs need an NCCL build.
    let e = fail(&["train", "spo", "--data", d, "--from", "m", "--reward", "rule:length", "--gpus", "2"]);
    assert!(e.contains("without NCCL") && e.contains("--device cpu"), "{e}");
    // A malformed data line is named by file and line.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"conversations\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"x\"}]}\n{oops\n").unwrap();
    let model = sft_model();
    let e = fail(&["train", "grpo", "--data", bad.to_str().unwrap(), "--from", model.to_str().unwrap(), "--reward", "rule:reasoning", "--out", dir.path().to_str().unwrap()]);
    assert!(e.contains("bad.jsonl:2"), "{e}");
}

/// A `/pooling` server scoring a reply by its length (deterministic), answering garbage from
/// its `fail_after`-th request on. Returns its URL.
fn scoring_server(fail_after: usize) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let Ok(k) = stream.read(&mut chunk) else { break None };
                if k == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..k]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len = head.lines().find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok())).unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break Some(buf[end + 4..end + 4 + len].to_vec());
                    }
                }
            };
            let Some(body) = body else { continue };
            let reply = if n >= fail_after {
                "<html>bad gateway</html>".to_string()
            } else {
                let v: Value = serde_json::from_slice(&body).unwrap();
                let last = v["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap_or("").chars().count();
                format!(r#"{{"data":[{{"index":0,"object":"pooling","data":[{}]}}]}}"#, (last % 7) as f64 / 7.0)
            };
            let _ = stream.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}", reply.len()).as_bytes(),
            );
        }
    });
    format!("http://{addr}")
}

/// A remote scorer that starts answering garbage at step 4 of 6 (no periodic save on the
/// way): the run stops with an error naming the scorer and what it sent, the 3 completed steps
/// are saved, and `--resume` against a working scorer gives the uninterrupted run's steps and
/// files.
#[test]
fn a_failing_scorer_keeps_the_completed_steps() {
    let model = sft_model();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let data = samples("rlaif_toy.jsonl");
    let dir = tempfile::tempdir().unwrap();
    // 2 prompts x 2 generations = 4 scorer requests a step.
    let run = |out: &Path, url: &str, resume: bool| {
        let mut args = vec![
            "train", "grpo", "--data", data.to_str().unwrap(), "--from", model.to_str().unwrap(), "--reward", "rule:reasoning",
            "--reward-url", url, "--batch-size", "2", "--num-generations", "2", "--max-gen-len", "12", "--lr", "1e-3",
            "--save-every", "100", "--max-steps", "6", "--out", out.to_str().unwrap(), "--quiet",
        ];
        if resume {
            args.push("--resume");
        }
        Command::new(MM).args(&args).output().unwrap()
    };
    let whole = dir.path().join("whole");
    let split = dir.path().join("split");
    assert!(run(&whole, &scoring_server(usize::MAX), false).status.success());
    let failing = scoring_server(12);
    let out = run(&split, &failing, false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("step 4 failed") && err.contains("the 3 steps before it are saved") && err.contains("--resume"), "{err}");
    assert!(err.contains(&failing) && err.contains("bad gateway"), "{err}");
    assert_eq!(metrics(&split, "grpo_64").len(), 3);
    let resumed = run(&split, &scoring_server(usize::MAX), true);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    // The scorer's column is named by its URL, which differs between the servers.
    let figures = |out: &Path| -> Vec<Value> {
        metrics(out, "grpo_64")
            .into_iter()
            .map(step_figures)
            .map(|v| {
                let m = v.as_object().unwrap().iter().map(|(k, x)| (if k.starts_with("reward/url:") { "reward/url".into() } else { k.clone() }, x.clone()));
                Value::Object(m.collect())
            })
            .collect()
    };
    let (a, b) = (figures(&whole), figures(&split));
    assert_eq!(a.len(), 6);
    assert_eq!(a, b, "the resumed run's steps differ");
    let (fa, fb) = (files(&whole.join("grpo_64_resume")), files(&split.join("grpo_64_resume")));
    assert_eq!(fa, fb, "resume files differ");
    assert_eq!(std::fs::read(whole.join("grpo_64.pth")).unwrap(), std::fs::read(split.join("grpo_64.pth")).unwrap());
}
