//! `mm eval`: the letter scores of the fixture model against upstream PyTorch's logits
//! (shared fixtures), and the command on a small random model: bad question files, the same
//! scores whatever the batch or runtime, sliding-window perplexity bookkeeping, outputs.
//! Agreement with lm-evaluation-harness and transformers is checked in CI
//! (`tests/oracle/check_eval.py`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, IndexOp};
use common::*;
use mm::converters::pth::checkpoint::PthHints;
use mm::converters::{read_checkpoint, MiniMindConfig};
use mm::eval::loglikelihood::{score, Prefix, Request};
use mm::eval::prompt::encode_pair;
use mm::loaded::LoadedModel;
use serde_json::Value;

const LOGIT_TOL: f64 = 1e-4;

/// For each fixture sequence as the prompt, the four letters' logits and log-probabilities
/// after it equal PyTorch's last-position logits (and its logsumexp), on the CPU engine and on
/// candle's path, all sequences scored as one batch.
#[test]
fn letter_scores_equal_upstream_pytorch() {
    let Some(shared) = shared_or_skip("letter_scores_equal_upstream_pytorch") else { return };
    let inputs = read_json(&shared.join("fixtures/minimind2/inputs.json"));
    for cfg in ["dense", "moe"] {
        let expected = read_json(&shared.join(format!("fixtures/minimind2/{cfg}/expected.json")));
        let config = MiniMindConfig::from_json(&expected["config_full"]).unwrap();
        let hints = PthHints { config: Some(config), ..Default::default() };
        let ckpt = read_checkpoint(&weights_dir(&shared, cfg).join("model.pth"), &hints).unwrap();
        let refs = reference(&shared.join(format!("fixtures/minimind2/{cfg}/logits.safetensors")));
        for engine in [true, false] {
            let mut loaded = LoadedModel::from_checkpoint(&ckpt, None, DType::F32, &Device::Cpu).unwrap();
            loaded.model.set_cpu_engine(engine);
            let letters: Vec<Vec<u32>> = ["A", "B", "C", "D"]
                .iter()
                .map(|l| encode_pair(&loaded.tokenizer, "答案：", &format!(" {l}")).unwrap().1)
                .collect();
            assert!(letters.iter().all(|l| l.len() == 1), "{letters:?}");
            let mut names: Vec<String> =
                inputs["prompts"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
            let mut requests: Vec<Request> = inputs["prompts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| Request { context: ids(&p["input_ids"]), continuations: letters.clone() })
                .collect();
            names.push("random300".into());
            requests.push(Request { context: ids(&inputs["random300"]["input_ids"]), continuations: letters.clone() });
            let scores = score(&loaded.model, &requests, None).unwrap();
            // The chat prompts share their system turn: run once as a prefix, the same scores.
            let shared = Prefix::common(requests[..3].iter().map(|r| r.context.as_slice()));
            assert!(shared.len() > 10, "{shared:?}");
            let prefix = Prefix::new(&loaded.model, shared).unwrap();
            let with_prefix = score(&loaded.model, &requests, Some(&prefix)).unwrap();
            for (a, b) in scores.iter().flatten().zip(with_prefix.iter().flatten()) {
                assert!((a.loglikelihood - b.loglikelihood).abs() < 1e-5, "{cfg} engine={engine}: prefix changed {a:?} -> {b:?}");
            }
            for (name, s) in names.iter().zip(&scores) {
                let last = refs[&format!("{name}.logits_last8")].i(7).unwrap().to_vec1::<f32>().unwrap();
                let lse = refs[&format!("{name}.lse")].to_vec1::<f32>().unwrap();
                let lse = *lse.last().unwrap() as f64;
                for (l, x) in letters.iter().zip(s) {
                    let want = last[l[0] as usize] as f64;
                    let d_logit = (x.first_logit as f64 - want).abs();
                    let d_lp = (x.loglikelihood - (want - lse)).abs();
                    assert!(d_logit <= LOGIT_TOL && d_lp <= LOGIT_TOL, "{cfg} {name} engine={engine}: logit {} vs {want}, log p {} vs {}", x.first_logit, x.loglikelihood, want - lse);
                }
            }
        }
    }
}

fn mm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mm")).args(args).output().unwrap()
}

fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("tiny");
    mm_ok(&["init", "--hidden-size", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--seed", "5", "-o", model.to_str().unwrap()]);
    model
}

fn eval_json(model: &Path, args: &[&str], envs: &[(&str, &str)]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_mm"))
        .args(["eval", model.to_str().unwrap(), "--json", "--details", "--quiet"])
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "mm eval {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn lls(v: &Value) -> Vec<f64> {
    v["per_question"].as_array().unwrap().iter().flat_map(|q| q["loglikelihoods"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap())).collect()
}

#[test]
fn multiple_choice_scores_do_not_depend_on_batch_or_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = samples("ceval");
    let data = data.to_str().unwrap();
    for method in ["letter", "loglikelihood"] {
        let args = ["--task", "mc", "--data", data, "--limit", "4", "--shots", "2", "--method", method];
        let one = eval_json(&model, &[&args[..], &["--batch-size", "1"]].concat(), &[]);
        let many = eval_json(&model, &[&args[..], &["--batch-size", "8"]].concat(), &[]);
        let candle = eval_json(&model, &args, &[("MM_CPU_ENGINE", "0")]);
        assert_eq!(one["questions"], 12);
        assert_eq!(one["subjects"].as_array().unwrap().len(), 3);
        assert_eq!(lls(&one), lls(&many), "{method}: batch size changed the scores");
        let worst = lls(&one).iter().zip(lls(&candle)).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-4, "{method}: engine vs candle {worst}");
        for q in one["per_question"].as_array().unwrap() {
            let l: Vec<f64> = q["loglikelihoods"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            assert!(l.iter().all(|x| x.is_finite() && *x < 0.0));
            let best = (0..4).fold(0, |b, i| if l[i] > l[b] { i } else { b });
            assert_eq!(q["prediction"].as_str().unwrap(), ["A", "B", "C", "D"][best]);
            assert_eq!(q["correct"].as_bool().unwrap(), q["prediction"] == q["answer"]);
        }
        let correct: u64 = one["subjects"].as_array().unwrap().iter().map(|s| s["correct"].as_u64().unwrap()).sum();
        assert_eq!(correct, one["correct"].as_u64().unwrap());
    }
}

#[test]
fn perplexity_windows_and_totals() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = samples("pretrain_sample.jsonl");
    let data = data.to_str().unwrap();
    let disjoint = eval_json(&model, &["--task", "ppl", "--data", data, "--max-seq-len", "32"], &[]);
    let sliding = eval_json(&model, &["--task", "ppl", "--data", data, "--max-seq-len", "32", "--stride", "8", "--batch-size", "3"], &[]);
    let candle = eval_json(&model, &["--task", "ppl", "--data", data, "--max-seq-len", "32", "--stride", "8"], &[("MM_CPU_ENGINE", "0")]);
    for v in [&disjoint, &sliding] {
        let texts = v["per_text"].as_array().unwrap();
        let nll: f64 = texts.iter().map(|t| t["nll"].as_f64().unwrap()).sum();
        let scored: u64 = texts.iter().map(|t| t["scored"].as_u64().unwrap()).sum();
        assert!((nll - v["nll"].as_f64().unwrap()).abs() < 1e-6 * nll);
        assert_eq!(scored, v["tokens_scored"].as_u64().unwrap());
        // Pretrain text: every token after the first counts once, whatever the windows.
        let want: u64 = texts.iter().map(|t| t["tokens"].as_u64().unwrap() - 1).sum();
        assert_eq!(scored, want);
        let ppl = v["perplexity"].as_f64().unwrap();
        assert!((ppl - (nll / scored as f64).exp()).abs() < 1e-9 * ppl);
        // A random model is about as unsure as a uniform guess over the vocabulary.
        assert!(ppl > 1000.0 && ppl < 20000.0, "{ppl}");
    }
    assert_eq!(disjoint["tokens_scored"], sliding["tokens_scored"]);
    assert!(sliding["windows"].as_u64() > disjoint["windows"].as_u64());
    let (a, b) = (sliding["nll"].as_f64().unwrap(), candle["nll"].as_f64().unwrap());
    assert!((a - b).abs() < 1e-5 * a, "engine {a} vs candle {b}");
    // SFT lines: only the assistant turns count.
    let sft = samples("sft_sample.jsonl");
    let v = eval_json(&model, &["--task", "ppl", "--data", sft.to_str().unwrap(), "--max-seq-len", "64", "--stride", "32"], &[]);
    assert_eq!(v["format"], "sft");
    let texts = v["per_text"].as_array().unwrap();
    assert!(texts.iter().all(|t| t["scored"].as_u64().unwrap() < t["tokens"].as_u64().unwrap() / 2 + 40));
    assert!(texts.iter().all(|t| t["scored"].as_u64().unwrap() > 0));
}

#[test]
fn bad_question_files_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let case = |name: &str, text: &str, want: &[&str]| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = mm(&["eval", model.to_str().unwrap(), "--task", "mc", "--data", path.to_str().unwrap(), "--quiet"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was accepted");
        for w in want {
            assert!(err.contains(w), "{name}: {err:?} lacks {w:?}");
        }
        assert!(!err.contains("panicked"), "{err}");
    };
    case("missing_val.csv", "id,question,A,B,C,answer\n0,q,a,b,c,A\n", &["missing_val.csv: line 1: missing column `D`"]);
    case("letter_val.csv", "id,question,A,B,C,D,answer\n0,q,a,b,c,d,A\n1,q,a,b,c,d,E\n", &["letter_val.csv: line 3", "answer \"E\" is not one of A, B, C, D"]);
    case("empty_val.csv", "", &["empty_val.csv"]);
    case("header_only.csv", "id,question,A,B,C,D,answer\n", &["header_only.csv: no questions"]);
    case("short.csv", "id,question,A,B,C,D,answer\n0,q,a,b\n", &["short.csv: line 2: 4 fields where the header has 7"]);
    case("bad.jsonl", "{\"question\": \"q\", \"A\": \"a\"}\n", &["bad.jsonl: line 1: missing field `B`"]);
    // Few-shot examples asked for that the dev split does not have.
    let out = mm(&["eval", model.to_str().unwrap(), "--task", "mc", "--data", samples("ceval").to_str().unwrap(), "--shots", "6", "--quiet"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("6 few-shot examples asked, its dev split has 5"));
    // ppl: a bad line, and an empty file.
    let bad = dir.path().join("bad_text.jsonl");
    std::fs::write(&bad, "{\"text\": \"ok\"}\n{\"text\": 3}\n").unwrap();
    let out = mm(&["eval", model.to_str().unwrap(), "--task", "ppl", "--data", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad_text.jsonl:2: field \"text\" must be a string"), "{err}");
}

#[test]
fn result_file_is_written_whole_and_foreign_files_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out_path = dir.path().join("result.json");
    let data = samples("ceval");
    let args = |o: &Path| {
        vec!["eval".to_string(), model.display().to_string(), "--task".into(), "mc".into(), "--data".into(), data.display().to_string(), "--limit".into(), "2".into(), "--quiet".into(), "-o".into(), o.display().to_string()]
    };
    let out = Command::new(env!("CARGO_BIN_EXE_mm")).args(args(&out_path)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("overall") && table.contains("computer_network"), "{table}");
    let v = read_json(&out_path);
    assert_eq!(v["questions"], 6);
    // Run again over its own earlier result: allowed. Over a file mm did not write: refused.
    assert!(Command::new(env!("CARGO_BIN_EXE_mm")).args(args(&out_path)).output().unwrap().status.success());
    let foreign = dir.path().join("notes.txt");
    std::fs::write(&foreign, "keep me").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mm")).args(args(&foreign)).output().unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "keep me");
}

/// `--lora` on the fly: the perplexity of the fixture's first prompt (as a pretrain line) with
/// upstream's LoRA equals the one computed from PyTorch's logits of that prompt with the LoRA
/// applied (`dense/lora_logits.safetensors`).
#[test]
fn perplexity_with_lora_equals_upstream_pytorch() {
    let Some(shared) = shared_or_skip("perplexity_with_lora_equals_upstream_pytorch") else { return };
    let inputs = read_json(&shared.join("fixtures/minimind2/inputs.json"));
    let prompt = &inputs["prompts"][0];
    let ids = ids(&prompt["input_ids"]);
    let logits = reference(&shared.join("fixtures/minimind2/dense/lora_logits.safetensors"))["prompt0_zh.logits"].to_vec2::<f32>().unwrap();
    let want: f64 = (1..ids.len())
        .map(|p| {
            let row = &logits[p - 1];
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            lse - row[ids[p] as usize] as f64
        })
        .sum();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("prompt.jsonl");
    std::fs::write(&data, format!("{}\n", serde_json::json!({"text": prompt["rendered"]}))).unwrap();
    let model = weights_dir(&shared, "dense").join("model.pth");
    let lora = shared.join("fixtures/minimind2/dense/lora.pth");
    let v = eval_json(&model, &["--heads", "4", "--lora", lora.to_str().unwrap(), "--task", "ppl", "--data", data.to_str().unwrap()], &[]);
    assert_eq!(v["per_text"][0]["ids"].as_array().unwrap().len(), ids.len(), "the rendered prompt tokenizes to the fixture's ids");
    let got = v["nll"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-5 * want, "nll with LoRA {got} vs PyTorch's {want}");
    // Without the LoRA it differs (the adapter is really applied).
    let base = eval_json(&model, &["--heads", "4", "--task", "ppl", "--data", data.to_str().unwrap()], &[]);
    assert!((base["nll"].as_f64().unwrap() - want).abs() > 1e-3);
}
