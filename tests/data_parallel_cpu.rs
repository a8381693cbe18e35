//! Data parallelism on CPU processes (`--gpus N --device cpu`, and ranks started by hand with
//! torchrun's variables): N ranks of `--batch-size B` must train as one process of
//! `--batch-size N·B` does — the same loss, reward and KL at every step, for every stage kind
//! (language modelling, GRPO with its batch-wide advantage normalisation, SPO with its value
//! tracker, PPO with its critic) — and a run resumed on another number of ranks must go on
//! as the uninterrupted one. The GPU path (NCCL) runs the same loop; `scripts/gpu-dp-check.sh`
//! checks it on GPUs.
//!
//! Tolerance: the ranks sum their gradients in another order than one process does, so
//! weights differ by float rounding (~1e-7 relative) after each step; the step figures must
//! agree within 1e-4 relative (with 1e-6 absolute for figures near 0). The samples stay the
//! same because every row's random stream follows its place in the global batch.
//!
//! The SFT rows are long enough (512 tokens) that none loses all its assistant tokens: one
//! process replaces such a row with the next one, a rank only drops it (`Loader::shard`), so
//! the batches would differ by design.

mod common;

use common::{mm_ok as mm, samples};

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const MM: &str = env!("CARGO_BIN_EXE_mm");

fn tiny(dir: &Path) -> String {
    let p = dir.join("tiny");
    mm(&["init", "--hidden-size", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--seed", "7", "-o", p.to_str().unwrap()]);
    p.to_str().unwrap().to_string()
}

fn metrics(out: &Path, stem: &str) -> Vec<Value> {
    std::fs::read_to_string(out.join(format!("{stem}.metrics.jsonl")))
        .unwrap_or_else(|e| panic!("{}: {e}", out.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every numeric step figure but timings, by name.
fn figures(v: &Value) -> Vec<(String, f64)> {
    v.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "elapsed_s" | "tokens_per_s"))
        .flat_map(|(k, v)| match v {
            Value::Object(parts) => parts.iter().filter_map(|(p, x)| x.as_f64().map(|x| (format!("{k}.{p}"), x))).collect::<Vec<_>>(),
            x => x.as_f64().map(|x| vec![(k.clone(), x)]).unwrap_or_default(),
        })
        .collect()
}

fn assert_same_steps(what: &str, a: &[Value], b: &[Value]) {
    assert_eq!(a.len(), b.len(), "{what}: {} vs {} steps", a.len(), b.len());
    let mut worst = 0f64;
    for (x, y) in a.iter().zip(b) {
        let (fx, fy) = (figures(x), figures(y));
        assert_eq!(fx.iter().map(|f| &f.0).collect::<Vec<_>>(), fy.iter().map(|f| &f.0).collect::<Vec<_>>(), "{what}: other figures");
        for ((name, u), (_, v)) in fx.iter().zip(&fy) {
            let d = (u - v).abs();
            worst = worst.max(d / u.abs().max(1e-2));
            assert!(d <= 1e-4 * u.abs().max(v.abs()) + 1e-6, "{what}: step {}: {name} {u} vs {v}", x["step"]);
        }
    }
    println!("{what}: {} steps agree (largest relative difference {worst:.1e})", a.len());
}

/// `mm train STAGE` with `common` flags, on `ranks` CPU processes of `batch` rows each.
fn train(stage: &str, common: &[&str], out: &Path, ranks: usize, batch: usize, extra: &[&str]) {
    let (ranks, batch) = (ranks.to_string(), batch.to_string());
    let mut args = vec!["train", stage, "--batch-size", &batch, "--out", out.to_str().unwrap(), "--quiet"];
    if ranks != "1" {
        args.extend(["--gpus", &ranks, "--device", "cpu"]);
    }
    args.extend_from_slice(common);
    args.extend_from_slice(extra);
    mm(&args);
}

/// A reward model one step away from random (`mm train reward --max-steps 1`): its scores
/// vary with every reply, where the rule rewards give a random tiny model's replies all the
/// same score, and so zero advantages that would leave the batch-wide figures untested.
fn reward_model(dir: &Path, model: &str) -> String {
    let rm = dir.join("rm");
    let pairs = samples("dpo_sample.jsonl");
    mm(&[
        "train", "reward", "--data", pairs.to_str().unwrap(), "--from", model, "-o", rm.to_str().unwrap(), "--max-steps", "1",
        "--batch-size", "2", "--max-seq-len", "64", "--quiet",
    ]);
    rm.to_str().unwrap().to_string()
}

fn rl_flags<'a>(data: &'a str, model: &'a str, rm: &'a str) -> Vec<&'a str> {
    vec![
        "--data", data, "--from", model, "--reward", "rule:length", "--reward-model", rm, "--max-gen-len", "10", "--lr", "1e-3",
        "--accumulation-steps", "1", "--max-steps", "3", "--seed", "5",
    ]
}

#[test]
fn n_ranks_train_as_one_process_with_the_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let sft = samples("sft_sample.jsonl");
    let rl = samples("rlaif_toy.jsonl");
    let lm = ["--data", sft.to_str().unwrap(), "--from", &model, "--max-seq-len", "512", "--lr", "1e-3", "--max-steps", "4"];
    let rm = reward_model(dir.path(), &model);
    let rl_common = rl_flags(rl.to_str().unwrap(), &model, &rm);
    let pairs = samples("dpo_sample.jsonl");
    let dpo = ["--data", pairs.to_str().unwrap(), "--from", &model, "--max-seq-len", "512", "--lr", "1e-4", "--max-steps", "4"];
    let runs: [(&str, &str, &[&str], &[&str]); 5] = [
        ("sft", "full_sft_64", &lm, &[]),
        // DPO's loss is a mean over pairs: ranks must weigh their share by pairs, not tokens.
        ("dpo", "dpo_64", &dpo, &["--accumulation-steps", "1"]),
        ("grpo", "grpo_64", &rl_common, &["--num-generations", "3"]),
        ("spo", "spo_64", &rl_common, &[]),
        ("ppo", "ppo_actor_64", &rl_common, &["--critic-lr", "1e-3", "--update-old-actor-freq", "2"]),
    ];
    for (stage, stem, common, extra) in runs {
        let one = dir.path().join(format!("{stage}-1"));
        let two = dir.path().join(format!("{stage}-2"));
        train(stage, common, &one, 1, 4, extra);
        train(stage, common, &two, 2, 2, extra);
        assert_same_steps(&format!("{stage}: 2 ranks × 2 rows vs 1 process × 4"), &metrics(&one, stem), &metrics(&two, stem));
    }
}

/// Ranks started by hand as torchrun or srun would (each its own process, finding rank 0 only
/// through MASTER_ADDR/MASTER_PORT) train as `--gpus 2` does: the two-"node" launch on CPUs.
#[test]
fn ranks_started_by_torchrun_variables_match_the_launcher() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let rl = samples("rlaif_toy.jsonl");
    let rm = reward_model(dir.path(), &model);
    let common = rl_flags(rl.to_str().unwrap(), &model, &rm);
    let launched = dir.path().join("launched");
    train("grpo", &common, &launched, 2, 2, &["--num-generations", "2"]);

    let by_hand = dir.path().join("by-hand");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            let mut args = vec!["train", "grpo", "--batch-size", "2", "--device", "cpu", "--num-generations", "2", "--quiet", "--out"];
            args.push(by_hand.to_str().unwrap());
            args.extend_from_slice(&common);
            // Two "nodes" of one process each (SLURM_PROCID/SLURM_NTASKS, as srun sets them).
            Command::new(MM)
                .args(&args)
                .env("SLURM_PROCID", rank.to_string())
                .env("SLURM_NTASKS", "2")
                .env("SLURM_LOCALID", "0")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("RAYON_NUM_THREADS", "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "rank {rank}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (a, b) = (metrics(&launched, "grpo_64"), metrics(&by_hand, "grpo_64"));
    assert_eq!(a.len(), 3);
    let strip = |v: &[Value]| v.iter().map(figures).collect::<Vec<_>>();
    assert_eq!(strip(&a), strip(&b), "srun-style ranks must train exactly as --gpus 2");
    println!("2 ranks by SLURM_PROCID/MASTER_ADDR = --gpus 2 --device cpu, bit-identical step figures");
}

/// 2 steps on 2 ranks, then `--resume` on one process to 4 steps: the same steps as 4 on one
/// process (the global batch is what stays fixed).
#[test]
fn resume_on_another_number_of_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let rl = samples("rlaif_toy.jsonl");
    let rm = reward_model(dir.path(), &model);
    let mut common = rl_flags(rl.to_str().unwrap(), &model, &rm);
    let at = common.iter().position(|a| *a == "--max-steps").unwrap();
    common.drain(at..at + 2);
    let whole = dir.path().join("whole");
    let split = dir.path().join("split");
    let flags = |steps: &'static str| -> Vec<&'static str> { vec!["--num-generations", "2", "--save-every", "2", "--max-steps", steps] };
    train("grpo", &common, &whole, 1, 4, &flags("4"));
    train("grpo", &common, &split, 2, 2, &flags("2"));
    let mut resumed = flags("4");
    resumed.push("--resume");
    train("grpo", &common, &split, 1, 4, &resumed);
    assert_same_steps("grpo: 2 steps on 2 ranks + 2 resumed on 1 vs 4 on 1", &metrics(&whole, "grpo_64"), &metrics(&split, "grpo_64"));
}

/// 5 prompts, a global batch of 4, 2 epochs: every other step is one row, so one of two ranks
/// holds only a weight-0 stand-in. It must not count in the batch-wide figures (SPO's tracker,
/// GRPO's normalisation, logged spreads), or the next steps would differ from one process's.
#[test]
fn a_stand_in_row_counts_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let text = std::fs::read_to_string(samples("rlaif_toy.jsonl")).unwrap();
    let five = dir.path().join("five.jsonl");
    std::fs::write(&five, text.lines().take(5).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let rm = reward_model(dir.path(), &model);
    let mut common = rl_flags(five.to_str().unwrap(), &model, &rm);
    let at = common.iter().position(|a| *a == "--max-steps").unwrap();
    common.drain(at..at + 2);
    common.extend(["--epochs", "2"]);
    // The stand-in is the global batch's first row again (same prompt, same seeds): means stay
    // the same whether it counts or not, but GRPO's spread over 3 varied rewards per prompt
    // does not, so a stand-in that counted would change the steps after it.
    for (stage, stem, extra) in [("spo", "spo_64", &[][..]), ("grpo", "grpo_64", &["--num-generations", "3"][..])] {
        let one = dir.path().join(format!("{stage}-1"));
        let two = dir.path().join(format!("{stage}-2"));
        train(stage, &common, &one, 1, 4, extra);
        train(stage, &common, &two, 2, 2, extra);
        let a = metrics(&one, stem);
        assert_eq!(a.len(), 4, "{stage}: 2 epochs of a 4-row and a 1-row step");
        assert_same_steps(&format!("{stage}: 5 prompts, 2 ranks × 2 vs 1 × 4 (stand-in rows)"), &a, &metrics(&two, stem));
    }
}
