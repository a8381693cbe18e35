//! Reward models: the HF LlamaForSequenceClassification directory (read back, and checked by
//! transformers when MM_TORCH_PYTHON names a Python with torch + transformers), learning a
//! visible preference, `mm train reward` / `mm reward` on the DPO sample, and the `/pooling`
//! client against mm's own server and against servers that hang, fail or answer garbage.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor, Var};
use serde_json::{json, Value};

use common::skip;
use mm::converters::{Checkpoint, MiniMindConfig, TokenizerFiles};
use mm::model::init::random_checkpoint;
use mm::train::encoder::chat_encoder;
use mm::train::reward_model::hf::{self, RewardCheckpoint};
use mm::train::reward_model::remote::PoolingClient;
use mm::train::reward_model::scorer::{ModelScorer, RemoteScorer};
use mm::train::reward_model::train::{binomial_tail, init_score, PairFile, RewardTrainOptions};
use mm::train::reward_model::RewardModel;
use mm::train::rewards::{RewardInput, Scorer};
use mm::train::TrainableModel;

fn tiny(seed: u64) -> Checkpoint {
    let mut cfg = MiniMindConfig::with_hidden(64, 2);
    cfg.num_attention_heads = 4;
    cfg.num_key_value_heads = 2;
    cfg.max_position_embeddings = 512;
    random_checkpoint(&cfg, seed, TokenizerFiles::builtin_minimind2()).unwrap()
}

/// A score head with O(1) weights, so scores are O(1) and a 1e-4 tolerance means something.
fn head(hidden: usize) -> Tensor {
    let w: Vec<f32> = (0..hidden).map(|i| ((i as f32) * 0.7).sin()).collect();
    Tensor::from_vec(w, (1, hidden), &Device::Cpu).unwrap()
}

fn conversations() -> Vec<Value> {
    vec![
        json!([{"role": "user", "content": "中国的首都是哪里？"}, {"role": "assistant", "content": "中国的首都是北京。"}]),
        json!([{"role": "user", "content": "What is 7 + 8?"}, {"role": "assistant", "content": "7 + 8 = 16."}]),
        json!([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help you today with anything at all?"}]),
        json!([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]),
    ]
}

fn pad_id() -> u32 {
    chat_encoder(&TokenizerFiles::builtin_minimind2()).unwrap().tokenizer.pad_id().unwrap()
}

#[test]
fn hf_directory_round_trip_and_transformers_parity() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rm");
    let trunk = tiny(1);
    let score = head(64);
    let pad = pad_id();
    let rc = RewardCheckpoint { trunk: trunk.clone(), score: score.clone(), pad_id: pad };
    hf::write(&rc, &out, candle_core::DType::F32).unwrap();
    assert!(hf::is_reward_model_dir(&out));

    let config: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"], json!(["LlamaForSequenceClassification"]));
    assert_eq!(config["num_labels"], json!(1));
    assert_eq!(config["pad_token_id"], json!(pad));
    let tensors = mm::converters::safetensors_file::read_dir(&out).unwrap();
    assert!(tensors.iter().any(|(n, t)| n == "score.weight" && t.dims() == [1, 64]));
    assert!(tensors.iter().all(|(n, _)| n == "score.weight" || n.starts_with("model.")), "only model.* and score.weight");

    let original = RewardModel::new(&trunk, &score, pad, &Device::Cpu).unwrap();
    let back = hf::read(&out).unwrap();
    assert_eq!(back.pad_id, pad);
    let reread = RewardModel::new(&back.trunk, &back.score, back.pad_id, &Device::Cpu).unwrap();
    let convs = conversations();
    let want = original.score_conversations(&convs).unwrap();
    assert_eq!(reread.score_conversations(&convs).unwrap(), want, "read back scores the same, bit for bit");
    // One at a time (no padding) against the padded batch: the pooling position is right.
    for (c, w) in convs.iter().zip(&want) {
        let alone = original.score_conversations(std::slice::from_ref(c)).unwrap()[0];
        assert!((alone - w).abs() < 1e-4, "alone {alone} vs batched {w}");
    }
    assert!(want.iter().any(|s| s.abs() > 0.1), "scores of O(1): {want:?}");

    // An existing foreign directory is refused, an earlier output replaced.
    hf::write(&rc, &out, candle_core::DType::F32).unwrap();
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    assert!(hf::write(&rc, &foreign, candle_core::DType::F32).is_err());
    assert!(foreign.join("notes.txt").exists());

    let Some(python) = std::env::var_os("MM_TORCH_PYTHON") else {
        if std::env::var_os("MM_REQUIRE_TORCH").is_some() {
            panic!("MM_REQUIRE_TORCH is set but MM_TORCH_PYTHON is not");
        }
        skip::skipped("hf_directory_round_trip_and_transformers_parity (transformers half)", "MM_TORCH_PYTHON not set (a Python with torch + transformers)");
        return;
    };
    let ids: Vec<Vec<u32>> = convs.iter().map(|c| original.encode(c, None).unwrap()).collect();
    let cases = dir.path().join("cases.json");
    std::fs::write(&cases, serde_json::to_string(&json!({"conversations": convs, "ids": ids, "scores": want})).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/check_reward_model.py");
    let run = Command::new(python).arg(script).arg(&out).arg(&cases).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "transformers check failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let _ = std::io::stderr().write_all(stdout.as_bytes());
}

/// 300 pairs where the chosen reply follows a visible rule: it opens with "Sure!" and gives
/// the right sum, the rejected one does neither.
fn write_rule_pairs(path: &Path) {
    let mut text = String::new();
    for i in 0..300u32 {
        let (a, b) = (i * 7 % 97, i * 13 % 89);
        let q = format!("What is {a} plus {b}?");
        let good = format!("Sure! {a} plus {b} is {}.", a + b);
        let bad = format!("{a} plus {b} is {}.", a + b + 1 + i % 5);
        let side = |reply: &str| json!([{"role": "user", "content": q}, {"role": "assistant", "content": reply}]);
        text.push_str(&serde_json::to_string(&json!({"chosen": side(&good), "rejected": side(&bad)})).unwrap());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn learns_a_visible_preference() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs.jsonl");
    write_rule_pairs(&data);
    let ckpt = tiny(2);
    let encoder = chat_encoder(&ckpt.tokenizer).unwrap();
    let pairs = PairFile::open(&data, chat_encoder(&ckpt.tokenizer).unwrap(), 64, false).unwrap();
    let model = TrainableModel::from_checkpoint(&ckpt, &Device::Cpu).unwrap();
    let score = Var::from_tensor(&init_score(64, 5, &Device::Cpu).unwrap()).unwrap();
    let opts = RewardTrainOptions {
        epochs: 2,
        batch_size: 8,
        learning_rate: 2e-3,
        max_seq_len: 64,
        held_out: 0.2,
        seed: 5,
        grad_clip: 1.0,
        log_interval: 1000,
        progress: false,
        max_steps: None,
        skip_bad_lines: false,
        checkpoint: None,
        metrics: None,
    };
    let report =
        mm::train::reward_model::train::train(&model, &score, encoder.tokenizer.pad_id().unwrap(), &pairs, &encoder.tokenizer, encoder.template().unwrap(), &opts)
            .unwrap();
    let n = report.held_out.len();
    let correct = report.held_out.iter().filter(|s| s.correct()).count();
    let p = binomial_tail(correct, n);
    let _ = std::io::stderr().write_all(
        format!("reward model on the rule pairs: held-out {correct}/{n} ({:.3}), chance p = {p:.2e}, loss {:.4} -> {:.4}\n",
            correct as f64 / n as f64, report.losses[0].1, report.losses.last().unwrap().1).as_bytes(),
    );
    assert_eq!(n, 60);
    // 54/60 right has probability P[X >= 54 | Bin(60, 1/2)] ~ 2.7e-11 for a scorer guessing at
    // random: it cannot pass by chance.
    assert!(correct >= 54, "held-out accuracy {correct}/{n}");
    assert!(p < 1e-9);
}

fn mm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_mm")
}

fn run_mm(args: &[&str]) -> (String, String) {
    let out = Command::new(mm_bin()).args(args).output().unwrap();
    let (o, e) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "mm {args:?} failed:\n{o}\n{e}");
    (o, e)
}

#[test]
fn cli_trains_and_scores_the_dpo_sample() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let rm = dir.path().join("rm");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataset/samples/dpo_sample.jsonl");
    run_mm(&["init", "--hidden-size", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--seed", "3", "-o", base.to_str().unwrap()]);
    let (out, _) = run_mm(&[
        "train", "reward", "--data", data.to_str().unwrap(), "--from", base.to_str().unwrap(), "-o", rm.to_str().unwrap(),
        "--epochs", "3", "--lr", "2e-3", "--batch-size", "4", "--max-seq-len", "128", "--held-out", "0.25", "--quiet",
    ]);
    assert!(out.contains("held-out accuracy"), "{out}");
    // A metrics line per step (21 train pairs / 4 = 6 steps × 3 epochs) and per epoch, and
    // both curves.
    let lines: Vec<Value> = std::fs::read_to_string(dir.path().join("rm.metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps = lines.iter().filter(|l| l["loss"].is_number() && l["batch_acc"].is_number()).count();
    let epochs: Vec<f64> = lines.iter().filter_map(|l| l["held_out_acc"].as_f64()).collect();
    assert_eq!((steps, epochs.len()), (18, 3), "{lines:?}");
    assert!(epochs.iter().all(|a| (0.0..=1.0).contains(a)));
    for png in ["rm.loss.png", "rm.accuracy.png"] {
        assert!(std::fs::read(dir.path().join(png)).unwrap().starts_with(b"\x89PNG"), "{png}");
    }
    let _ = std::io::stderr().write_all(format!("mm train reward on dpo_sample.jsonl:\n{out}").as_bytes());
    let (json_out, _) = run_mm(&["reward", rm.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json"]);
    let v: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(v["total"], json!(28));
    assert_eq!(v["pairs"].as_array().unwrap().len(), 28);
    assert!(v["accuracy"].as_f64().unwrap() >= 0.0);
    let (text, _) = run_mm(&["reward", rm.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert!(text.contains("accuracy") && text.contains("line     1"), "{text}");
    // Training continues from a reward model (its head kept), into another directory.
    run_mm(&["train", "reward", "--data", data.to_str().unwrap(), "--from", rm.to_str().unwrap(), "-o", dir.path().join("rm2").to_str().unwrap(), "--max-steps", "1", "--quiet"]);
    // The output may not be the input.
    let clash = Command::new(mm_bin()).args(["train", "reward", "--data", data.to_str().unwrap(), "--from", rm.to_str().unwrap(), "-o", rm.to_str().unwrap()]).output().unwrap();
    assert!(!clash.status.success());
}

/// mm's reward server on an ephemeral port (its runtime lives on a thread for the test's life).
fn start_mm_reward_server(model: RewardModel, name: &str) -> SocketAddr {
    let opts = mm::serve::ServeOptions {
        host: "127.0.0.1".into(),
        port: 0,
        model_name: name.into(),
        api_key: None,
        ctx: 512,
        max_batch: 4,
        queue: 16,
        request_timeout: Duration::from_secs(60),
    };
    let (router, _state) = mm::serve::pooling::reward_app(model, &opts);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || rt.block_on(async move { axum::serve(listener, router).await }));
    addr
}

#[test]
fn pooling_api_of_mm_serve_and_the_scorers() {
    let trunk = tiny(4);
    let pad = pad_id();
    let local = RewardModel::new(&trunk, &head(64), pad, &Device::Cpu).unwrap();
    let served = RewardModel::new(&trunk, &head(64), pad, &Device::Cpu).unwrap();
    let addr = start_mm_reward_server(served, "rm");
    let client = PoolingClient::new(&format!("http://{addr}")).unwrap();
    let convs = conversations();
    let want = local.score_conversations(&convs).unwrap();
    for (c, w) in convs.iter().zip(&want) {
        let got = client.score_messages(c).unwrap();
        assert!((got - f64::from(*w)).abs() < 1e-4, "served {got} vs local {w}");
    }

    // The request's validation, in the server's error shape.
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let post = |body: Value| {
        let mut r = agent.post(&format!("http://{addr}/pooling")).send_json(body).unwrap();
        (r.status().as_u16(), r.body_mut().read_json::<Value>().unwrap())
    };
    let (status, body) = post(json!({"model": "rm"}));
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("Pass `messages`"), "{body}");
    assert_eq!(post(json!({"messages": "hi"})).0, 400);
    assert_eq!(post(json!({"messages": []})).0, 400);
    assert_eq!(post(json!({"messages": convs[0], "encoding_format": "base64"})).0, 400);
    let (status, body) = post(json!({"model": "other", "messages": convs[0]}));
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("model_not_found")));
    let (status, body) = post(json!({"input": ["a b c", "d"]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["object"], json!("list"));
    assert_eq!(body["data"][1]["object"], json!("pooling"));
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let long = "word ".repeat(2000);
    let (status, body) = post(json!({"input": long}));
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("at most 512"), "{body}");
    // A wrong model name is a 404 the client does not retry.
    let err = PoolingClient::new(&format!("http://{addr}/pooling")).unwrap().with_model(Some("nope".into())).score_messages(&convs[0]).unwrap_err();
    assert!(format!("{err:#}").contains("HTTP 404"), "{err:#}");

    // Both scorers give upstream's clipped reward-model term, the same through either path.
    let prompt = "<|im_start|>user\nWhat is 7 + 8?<|im_end|>\n<|im_start|>assistant\n";
    let replies = ["7 + 8 = 15.", "<think>\nadd\n</think>\n<answer>\n15\n</answer>"];
    let batch: Vec<RewardInput> = replies.iter().map(|r| RewardInput { prompt, reply: r, completion: &[], eos: 2, max_new_tokens: 8 }).collect();
    let mut by_model = ModelScorer::new(RewardModel::new(&trunk, &head(64), pad, &Device::Cpu).unwrap(), true, "rm");
    let mut by_url = RemoteScorer::new(client.clone(), true);
    let a = by_model.score(&batch).unwrap();
    let b = by_url.score(&batch).unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4), "{a:?} vs {b:?}");
    assert!(a.iter().all(|s| s.abs() <= 3.0));
    assert_eq!(by_url.name(), format!("url:http://{addr}/pooling"));
}

/// A server that answers the n-th connection with `answers[n]` (the last one repeated); `None`
/// holds the connection without answering. Returns its address and the connection count.
fn fake_server(answers: Vec<Option<String>>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let answer = answers[n.min(answers.len() - 1)].clone();
            std::thread::spawn(move || {
                read_request(&mut stream);
                match answer {
                    None => std::thread::sleep(Duration::from_secs(10)),
                    Some(a) => {
                        let _ = stream.write_all(a.as_bytes());
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), count)
}

fn read_request(stream: &mut std::net::TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = stream.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head.lines().find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok())).unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return;
            }
        }
    }
}

fn http(status: &str, body: &str) -> Option<String> {
    Some(format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()))
}

#[test]
fn remote_scorer_failures_are_clear() {
    let conv = &conversations()[0];
    let quick = |url: &str| PoolingClient::new(url).unwrap().with_timeout(Duration::from_millis(400)).with_retries(1, Duration::from_millis(50));

    // A scorer that never answers: timed out, retried once, then a clear error.
    let (url, count) = fake_server(vec![None]);
    let started = Instant::now();
    let err = format!("{:#}", quick(&url).score_messages(conv).unwrap_err());
    assert!(err.contains("timed out") && err.contains(&url) && err.contains("gave up after 2 tries"), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert!(started.elapsed() < Duration::from_secs(5));

    // Garbage with a 200: not retried (it would be garbage again).
    let (url, count) = fake_server(vec![http("200 OK", "<html>upstream proxy error</html>")]);
    let err = format!("{:#}", quick(&url).score_messages(conv).unwrap_err());
    assert!(err.contains("not JSON") && err.contains("<html>upstream proxy error") && err.contains(&url), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), 1);

    // JSON of the wrong shape.
    let (url, _) = fake_server(vec![http("200 OK", r#"{"data":[{"index":0,"data":[0.1,0.9]}]}"#)]);
    assert!(format!("{:#}", quick(&url).score_messages(conv).unwrap_err()).contains("2 values"));

    // A 503 then an answer: the retry succeeds.
    let (url, count) = fake_server(vec![http("503 Service Unavailable", "{}"), http("200 OK", r#"{"data":[{"index":0,"object":"pooling","data":[[0.5],[2.5]]}]}"#)]);
    assert_eq!(quick(&url).score_messages(conv).unwrap(), 2.5);
    assert_eq!(count.load(Ordering::SeqCst), 2);

    // Persistent 500s: the status and the body in the error.
    let (url, _) = fake_server(vec![http("500 Internal Server Error", r#"{"error":"boom"}"#)]);
    let err = format!("{:#}", quick(&url).score_messages(conv).unwrap_err());
    assert!(err.contains("HTTP 500") && err.contains("boom"), "{err}");

    // A 400 is final.
    let (url, count) = fake_server(vec![http("400 Bad Request", r#"{"error":{"message":"bad messages"}}"#)]);
    let err = format!("{:#}", quick(&url).score_messages(conv).unwrap_err());
    assert!(err.contains("HTTP 400") && err.contains("bad messages"), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), 1);

    // Nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let err = format!("{:#}", quick(&format!("http://{closed}")).score_messages(conv).unwrap_err());
    assert!(err.contains("request failed"), "{err}");

    // Through the Scorer, the error names the source's URL.
    let (url, _) = fake_server(vec![http("200 OK", "garbage")]);
    let mut scorer = RemoteScorer::new(quick(&url), false);
    let prompt = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n";
    let batch = [RewardInput { prompt, reply: "a", completion: &[], eos: 2, max_new_tokens: 8 }];
    assert!(format!("{:#}", scorer.score(&batch).unwrap_err()).contains("not JSON"));
}

/// `mm train reward` stopped mid-epoch (`--max-steps 4`, saving every 2 steps) and continued
/// with `--resume` gives the uninterrupted run's reward model bit for bit, and the same report.
#[test]
fn reward_training_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataset/samples/dpo_sample.jsonl");
    run_mm(&["init", "--hidden-size", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--seed", "3", "-o", base.to_str().unwrap()]);
    let train = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "train", "reward", "--data", data.to_str().unwrap(), "--from", base.to_str().unwrap(), "-o", out.to_str().unwrap(),
            "--epochs", "2", "--lr", "2e-3", "--batch-size", "4", "--max-seq-len", "96", "--held-out", "0.25", "--save-every", "2", "--quiet",
        ];
        args.extend_from_slice(extra);
        run_mm(&args).0
    };
    let whole = dir.path().join("whole");
    let split = dir.path().join("split");
    let report = train(&whole, &[]);
    let partial = train(&split, &["--max-steps", "4"]);
    assert!(partial.contains("trained 4 steps"), "{partial}");
    assert!(split.with_file_name("split_resume").join("state.json").exists());
    let resumed = train(&split, &["--resume"]);
    assert_eq!(resumed.replace(split.to_str().unwrap(), "OUT"), report.replace(whole.to_str().unwrap(), "OUT"));
    let weights = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(weights(&whole) == weights(&split), "the resumed run's reward model differs");
    // Another run's state is refused.
    let clash = Command::new(mm_bin())
        .args(["train", "reward", "--data", data.to_str().unwrap(), "--from", base.to_str().unwrap(), "-o", split.to_str().unwrap(), "--batch-size", "2", "--resume", "--quiet"])
        .output()
        .unwrap();
    assert!(!clash.status.success() && String::from_utf8_lossy(&clash.stderr).contains("other options"), "{}", String::from_utf8_lossy(&clash.stderr));
}
