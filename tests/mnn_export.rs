//! `mm export mnn` checked in MNN itself: the exported directory loads in pymnn 3.6.1's LLM
//! runtime, whose logits (prefill and 8 KV-cached decode steps, `precision: high, memory:
//! high`) must match mm's own forward on the weights the exporter wrote (dequantized the way
//! MNN dequantizes them) to 1e-3; its tokenizer must give mm's ids; a greedy response must
//! run; and MNN's converter must turn our `llm.mnn.json` into the graph our `llm.mnn` holds
//! (`tests/oracle/check_mnn.py` does the MNN side).
//!
//! The MNN checks run only when `MM_MNN_PYTHON` names a python with `mnn==3.6.1` and numpy
//! (`.ci/run` makes one); otherwise they print a skip notice, unless `MM_REQUIRE_MNN=1`.
//! Refusals (MoE, a foreign target directory, bad options) need no MNN and always run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use mm::converters::pth::checkpoint::PthHints;
use mm::converters::{read_checkpoint, write_checkpoint, Checkpoint, Format, MiniMindConfig, TokenizerFiles};
use mm::export::mnn::decoder_graph::{decoder_graph, DecoderGraphSpec};
use mm::export::mnn::net_flatbuffer::read_net;
use mm::export::mnn::weights::{
    linear_header, plan_decoder, DecoderQuant, DecoderWeights, LinearRecord, QuantOptions, QuantizedMatrix,
};
use mm::model::{KvCache, MiniMind, Mode};

const DECODE_STEPS: usize = 8;
const TOLERANCE: f32 = 1e-3;

fn mm_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mm"))
}

fn run_mm(args: &[&str]) -> std::process::Output {
    mm_bin().args(args).output().expect("running mm")
}

fn run_ok(args: &[&str]) -> String {
    let out = run_mm(args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "mm {args:?} failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// `MM_MNN_PYTHON`, or None with a skip notice (a failure under `MM_REQUIRE_MNN=1`).
fn mnn_python_or_skip(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os("MM_MNN_PYTHON").map(PathBuf::from);
    let required = std::env::var("MM_REQUIRE_MNN").is_ok_and(|v| v == "1");
    match python {
        Some(p) => {
            let probe = Command::new(&p).args(["-c", "import MNN, numpy; assert MNN.version() == '3.6.1'"]).output();
            match probe {
                Ok(o) if o.status.success() => Some(p),
                _ => panic!("{test}: MM_MNN_PYTHON={} cannot import MNN 3.6.1 and numpy", p.display()),
            }
        }
        None if required => panic!("{test}: MM_REQUIRE_MNN=1 but MM_MNN_PYTHON is not set"),
        None => {
            common::skip::skipped(test, "set MM_MNN_PYTHON to a python with mnn==3.6.1 and numpy");
            None
        }
    }
}

/// A Linear record as stored, read back out of `llm.mnn.weight`.
fn read_linear(file: &[u8], r: &LinearRecord) -> QuantizedMatrix {
    let l = &r.layout;
    let at = r.offset as usize;
    let header = &file[at..at + l.header_len as usize];
    assert_eq!(header, linear_header(l.oc, l.ic, l.bits).as_slice(), "{}: header", r.tensor);
    let packed = &file[at + l.header_len as usize..][..l.packed_len as usize];
    let q: Vec<u8> = match l.bits {
        4 => packed.iter().flat_map(|b| [b >> 4, b & 15]).take(l.oc * l.ic).collect(),
        8 => packed.to_vec(),
        b => panic!("{b}-bit record"),
    };
    let alpha_at = at + l.weight_len() as usize;
    let alpha_bytes = &file[alpha_at..alpha_at + l.alpha_len as usize];
    let alpha: Vec<f32> = if l.alpha_fp16 {
        alpha_bytes.chunks(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
    } else {
        alpha_bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    };
    QuantizedMatrix { rows: l.oc, cols: l.ic, bits: l.bits, block: l.block, q, alpha }
}

/// The checkpoint MNN runs: every Linear replaced by what the weight file dequantizes to
/// (`(q − offset)·scale + zero` with the stored scales); the tied embedding = lm_head's
/// record (the runtime reads embedding rows from it), an untied one = its bf16 file; norms
/// as they are.
fn dequantized_checkpoint(ckpt: &Checkpoint, dir: &Path, weights: &DecoderWeights) -> Checkpoint {
    let file = std::fs::read(dir.join("llm.mnn.weight")).unwrap();
    assert_eq!(file.len() as u64, weights.file_bytes);
    let dense = |r: &LinearRecord| {
        let m = read_linear(&file, r);
        Tensor::from_vec(m.dequantize(r.layout.alpha_fp16), (m.rows, m.cols), &Device::Cpu).unwrap()
    };
    let mut replacements = Vec::new();
    for (i, l) in weights.layers.iter().enumerate() {
        for (name, r) in [
            ("self_attn.q_proj", &l.q),
            ("self_attn.k_proj", &l.k),
            ("self_attn.v_proj", &l.v),
            ("self_attn.o_proj", &l.o),
            ("mlp.gate_proj", &l.gate),
            ("mlp.up_proj", &l.up),
            ("mlp.down_proj", &l.down),
        ] {
            replacements.push((format!("model.layers.{i}.{name}.weight"), dense(r)));
        }
    }
    let head = dense(&weights.lm_head);
    if weights.tied {
        replacements.push(("model.embed_tokens.weight".into(), head));
    } else {
        replacements.push(("lm_head.weight".into(), head));
        let embed = ckpt.get("model.embed_tokens.weight").unwrap().to_dtype(DType::BF16).unwrap();
        replacements.push(("model.embed_tokens.weight".into(), embed.to_dtype(DType::F32).unwrap()));
    }
    ckpt.to_dtype(DType::F32).unwrap().with_tensors(replacements).unwrap()
}

/// mm's logits for the prompt (every row) and for 8 greedy steps through the KV cache;
/// returns (rows, the ids fed at each decode step).
fn reference_logits(ckpt: &Checkpoint, prompt: &[u32]) -> (Vec<Vec<f32>>, Vec<u32>) {
    let model = MiniMind::from_checkpoint(ckpt, DType::F32, &Device::Cpu).unwrap();
    let mut cache = KvCache::new(&ckpt.config);
    let input = Tensor::new(prompt, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&input, Some(&mut cache), None, Mode::Inference).unwrap().logits;
    let mut rows: Vec<Vec<f32>> = logits.squeeze(0).unwrap().to_vec2().unwrap();
    let mut fed = Vec::new();
    for _ in 0..DECODE_STEPS {
        let next = mm::generate::argmax(rows.last().unwrap());
        fed.push(next);
        let input = Tensor::new(&[next], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let out = model.forward(&input, Some(&mut cache), None, Mode::Inference).unwrap().logits;
        rows.push(out.squeeze(0).unwrap().squeeze(0).unwrap().to_vec1().unwrap());
    }
    (rows, fed)
}

/// Texts for the tokenizer check: the 20 minimind2 chat cases rendered by mm with the
/// model's template (asserted equal to transformers' text), the 20 minimind3 case texts, and
/// llama.cpp's tokenizer fixture strings; a few fixed strings when the fixtures are absent.
fn tokenizer_texts(ckpt: &Checkpoint, shared: Option<&Path>) -> Vec<String> {
    let mut texts: Vec<String> =
        ["你好，请介绍一下你自己。", "Hello world", "<|im_start|>user\n1+1=?<|im_end|>\n", "  spaces\tand\nlines 🙂"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let Some(shared) = shared else { return texts };
    let (_, template) = mm::loaded::tokenizer_and_template(&ckpt.tokenizer).unwrap();
    let template = template.expect("the model has a chat template");
    let cases = |file: &str| -> Vec<Value> {
        let text = std::fs::read_to_string(shared.join("reference").join(file)).unwrap();
        text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    for case in cases("chat_template_cases.jsonl") {
        let mut req = mm::chat::RenderRequest::new(case["messages"].clone());
        req.tools = Some(case["tools"].clone()).filter(|t| !t.is_null());
        req.add_generation_prompt = case["add_generation_prompt"].as_bool().unwrap();
        if let Some(v) = case.get("enable_thinking").filter(|v| !v.is_null()) {
            req.extra.insert("enable_thinking".into(), v.clone());
        }
        let rendered = template.render(&req).unwrap();
        assert_eq!(rendered, case["expected"].as_str().unwrap(), "{}", case["name"]);
        texts.push(rendered);
    }
    for case in cases("chat_template_cases_minimind3.jsonl") {
        texts.push(case["expected"].as_str().unwrap().to_string());
    }
    let llamacpp = common::read_json(&shared.join("fixtures/llamacpp/tokenize.json"));
    for case in llamacpp["cases"].as_array().unwrap() {
        texts.push(case["text"].as_str().unwrap().to_string());
    }
    texts
}

/// Exports `input` with `mm export mnn ARGS --emit-json`, runs it in MNN and compares.
fn check_in_mnn(python: &Path, label: &str, input: &Path, args: &[&str], quant: QuantOptions, shared: Option<&Path>) {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("mnn");
    let mut cli = vec!["export", "mnn", input.to_str().unwrap(), "-o", dir.to_str().unwrap(), "--emit-json"];
    cli.extend_from_slice(args);
    let printed = run_ok(&cli);
    assert!(printed.contains("llm.mnn.weight") && printed.contains("graph:"), "{printed}");

    let ckpt = read_checkpoint(input, &PthHints::default()).unwrap();
    let spec = DecoderGraphSpec::from_config(&ckpt.config).unwrap();
    let weights = plan_decoder(&spec.shape, &DecoderQuant::uniform(quant)).unwrap();
    // The file holds the graph built from these records.
    let ours = read_net(&std::fs::read(dir.join("llm.mnn")).unwrap()).unwrap();
    assert_eq!(ours, decoder_graph(&spec, &weights).unwrap(), "{label}: llm.mnn");

    let (tokenizer, template) = mm::loaded::tokenizer_and_template(&ckpt.tokenizer).unwrap();
    let template = template.unwrap();
    let prompt_text = template
        .render(
            &mm::chat::RenderRequest::new(json!([{"role": "user", "content": "你好，请介绍一下你自己。"}]))
                .with_generation_prompt(true),
        )
        .unwrap();
    let prompt = tokenizer.encode(&prompt_text, false).unwrap();
    let (rows, fed) = reference_logits(&dequantized_checkpoint(&ckpt, &dir, &weights), &prompt);
    let reference = work.path().join("reference.f32");
    std::fs::write(&reference, rows.iter().flatten().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let texts: Vec<Value> = tokenizer_texts(&ckpt, shared)
        .into_iter()
        .map(|t| json!({"ids": tokenizer.encode(&t, false).unwrap(), "text": t}))
        .collect();
    let case = json!({
        "prompt_ids": prompt, "decode_ids": fed, "vocab": ckpt.config.vocab_size,
        "reference": reference, "texts": texts,
    });
    let case_path = work.path().join("case.json");
    std::fs::write(&case_path, serde_json::to_vec(&case).unwrap()).unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/check_mnn.py");
    let json_dir = work.path().join("json-check");
    std::fs::create_dir_all(&json_dir).unwrap();
    let out = Command::new(python)
        .arg(&script)
        .args(["--dir", dir.to_str().unwrap(), "--case", case_path.to_str().unwrap()])
        .args(["--tolerance", &TOLERANCE.to_string(), "--json-dir", json_dir.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find_map(|l| l.strip_prefix("RESULT ")).unwrap_or_else(|| {
        panic!("{label}: check_mnn.py printed no RESULT\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    let r: Value = serde_json::from_str(line).unwrap();
    println!("{label}: {r}");
    let jvf = &r["json_vs_flatbuffer"];
    println!(
        "{label}: logits up to |{:.2}|; prefill {} rows max |Δ| {:.3e}, {} decode steps max |Δ| {:.3e} (argmax agree {}/{}), \
         last row only {:.3e}; tokenizer {}/{} texts equal; response ok {}; JSON-vs-FlatBuffer dumps equal {} ({} ops), our JSON = MNN's dump {}",
        r["reference_max_abs"].as_f64().unwrap(),
        r["prefill_rows"],
        r["prefill_max_abs"].as_f64().unwrap(),
        r["decode_steps"],
        r["decode_max_abs"].as_f64().unwrap(),
        r["argmax_agree"],
        r["argmax_total"],
        r["last_row_max_abs"].as_f64().unwrap(),
        r["texts_equal"],
        r["texts"],
        r["response_ok"],
        jvf["dumps_equal"],
        jvf["ops"],
        jvf["json_equals_dump"]
    );
    assert!(r["prefill_max_abs"].as_f64().unwrap() <= TOLERANCE as f64, "{label}: prefill logits differ");
    assert!(r["decode_max_abs"].as_f64().unwrap() <= TOLERANCE as f64, "{label}: decode logits differ");
    assert!(r["last_row_max_abs"].as_f64().unwrap() <= TOLERANCE as f64, "{label}: last-row logits differ");
    assert_eq!(r["texts_equal"], r["texts"], "{label}: tokenizer ids differ: {}", r["token_mismatches"]);
    assert_eq!(r["response_ok"], true, "{label}: response failed");
    assert_eq!(jvf["dumps_equal"], true, "{label}: MNN's dumps of llm.mnn and of json→mnn differ");
    assert_eq!(jvf["json_equals_dump"], true, "{label}: llm.mnn.json vs MNN's dump: {}", jvf["json_differences"]);
    // MNN's converter, given our JSON, writes exactly the graph our FlatBuffer holds.
    let from_json = read_net(&std::fs::read(jvf["from_json"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(from_json, ours, "{label}: MNNConvert -f JSON of llm.mnn.json is not our llm.mnn");
    assert_eq!(r["ok"], true);

    // And `mm inspect` reads the directory.
    let inspected: Value = serde_json::from_str(&run_ok(&["inspect", dir.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(inspected["graph"]["ops"], ours.ops.len());
    assert_eq!(inspected["weights"]["linear_records"], 7 * spec.shape.layers + 1);
    assert_eq!(inspected["problems"], json!([]));
}

#[test]
fn exports_run_in_mnn_like_mm() {
    let Some(python) = mnn_python_or_skip("exports_run_in_mnn_like_mm") else { return };
    let shared = common::shared_or_skip("exports_run_in_mnn_like_mm (dense fixture part)");
    let work = tempfile::tempdir().unwrap();

    // The dense fixture model (hidden 256, 2 layers), exported as MiniMind's README says (--hqq).
    if let Some(shared) = &shared {
        let hf = common::weights_dir(shared, "dense").join("hf-minimind");
        let hqq = QuantOptions { hqq: true, ..Default::default() };
        check_in_mnn(&python, "dense fixture (4-bit HQQ)", &hf, &["--hqq"], hqq, Some(shared));
    }

    // A MiniMind2-small-shaped random model (hidden 512, 8 layers), as `mm init` makes it.
    let small = work.path().join("small");
    run_ok(&["init", "--preset", "small", "-o", small.to_str().unwrap()]);
    check_in_mnn(&python, "MiniMind2-small random (4-bit)", &small, &[], QuantOptions::default(), shared.as_deref());

    // YaRN rope scaling is exported exactly (it only changes the rotary constants): a tiny
    // model with upstream's inference_rope_scaling, 8-bit weights and fp32 scales.
    let mut cfg = MiniMindConfig::preset("tiny").unwrap();
    cfg.num_hidden_layers = 2;
    cfg.set_inference_rope_scaling(true);
    let yarn = work.path().join("yarn");
    let ckpt = mm::model::init::random_checkpoint(&cfg, 7, TokenizerFiles::builtin_minimind2()).unwrap();
    write_checkpoint(&ckpt, &yarn, Format::HfMiniMind).unwrap();
    assert!(read_checkpoint(&yarn, &PthHints::default()).unwrap().config.rope_scaling.is_some());
    let q8 = QuantOptions { bits: 8, alpha_fp16: false, ..Default::default() };
    check_in_mnn(
        &python,
        "tiny YaRN (8-bit, fp32 scales)",
        &yarn,
        &["--quant-bit", "8", "--scale-bit", "32"],
        q8,
        None,
    );
}

#[test]
fn refusals_are_clear_and_write_nothing() {
    let work = tempfile::tempdir().unwrap();
    let w = |p: &str| work.path().join(p);

    // MoE: refused before anything is written.
    let moe = w("moe");
    run_ok(&["init", "--preset", "tiny", "--experts", "4", "-o", moe.to_str().unwrap()]);
    let out = run_mm(&["export", "mnn", moe.to_str().unwrap(), "-o", w("moe-mnn").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("MoE"), "{err}");
    assert!(!w("moe-mnn").exists());

    let tiny = w("tiny");
    run_ok(&["init", "--preset", "tiny", "--layers", "1", "-o", tiny.to_str().unwrap()]);
    // Bad options.
    let bad = w("bad");
    for (flags, needle) in [(["--quant-bit", "5"], "4 or 8 bits"), (["--scale-bit", "8"], "--scale-bit 8")] {
        let mut args = vec!["export", "mnn", tiny.to_str().unwrap(), "-o", bad.to_str().unwrap()];
        args.extend_from_slice(&flags);
        let out = run_mm(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{flags:?}: {err}");
        assert!(!w("bad").exists());
    }
    // A non-empty directory that is not an MNN export is left alone.
    let foreign = w("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let out = run_mm(&["export", "mnn", tiny.to_str().unwrap(), "-o", foreign.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("notes.txt") && err.contains("refusing"), "{err}");
    assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 1);

    // An earlier export is replaced whole; no temporary directory is left beside it.
    let dir = w("tiny-mnn");
    run_ok(&["export", "mnn", tiny.to_str().unwrap(), "-o", dir.to_str().unwrap(), "--emit-json"]);
    assert!(dir.join("llm.mnn.json").exists());
    run_ok(&["export", "mnn", tiny.to_str().unwrap(), "-o", dir.to_str().unwrap()]);
    assert!(!dir.join("llm.mnn.json").exists(), "the old directory was replaced, not merged");
    let mut names: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["foreign", "moe", "tiny", "tiny-mnn"]);
    let text = run_ok(&["inspect", dir.to_str().unwrap()]);
    assert!(text.contains("MNN model directory") && text.contains("Attention") && !text.contains("problem"), "{text}");

    // A corrupt llm.mnn is an error naming the file, not a panic.
    std::fs::write(dir.join("llm.mnn"), b"\x10\x00\x00\x00garbage").unwrap();
    let out = run_mm(&["inspect", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("llm.mnn"), "{err}");
}

#[test]
fn inspect_fails_on_a_damaged_directory() {
    let work = tempfile::tempdir().unwrap();
    let w = |p: &str| work.path().join(p);
    let tiny = w("tiny");
    run_ok(&["init", "--preset", "tiny", "--layers", "1", "-o", tiny.to_str().unwrap()]);
    let good = w("good");
    run_ok(&["export", "mnn", tiny.to_str().unwrap(), "-o", good.to_str().unwrap()]);
    let text = run_ok(&["inspect", good.to_str().unwrap()]);
    assert!(text.contains("the whole file was read and checked") && !text.contains("problem"), "{text}");

    let mtok = std::fs::read(good.join("tokenizer.mtok")).unwrap();
    let weights = std::fs::read(good.join("llm.mnn.weight")).unwrap();
    // Everything from the id line on (after `430 4` and the id counts).
    let newlines: Vec<usize> = mtok.iter().enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| i).take(2).collect();
    let ids_line_on = &mtok[newlines[1] + 1..];
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let cases: [(&str, &str, Vec<u8>, &str); 4] = [
        ("truncated weights", "llm.mnn.weight", weights[..weights.len() / 2].to_vec(), "lies outside llm.mnn.weight"),
        ("garbage tokenizer", "tokenizer.mtok", garbage, "tokenizer.mtok"),
        ("half-cut tokenizer", "tokenizer.mtok", mtok[..mtok.len() / 2].to_vec(), "cut short"),
        ("tokenizer with a wrong id count", "tokenizer.mtok", [b"430 4\n99 1 0\n".as_slice(), ids_line_on].concat(), "declares"),
    ];
    for (i, (name, file, bytes, needle)) in cases.into_iter().enumerate() {
        let dir = w(&format!("case{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&good).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        std::fs::write(dir.join(file), bytes).unwrap();
        for json in [false, true] {
            let mut args = vec!["inspect", dir.to_str().unwrap()];
            if json {
                args.push("--json");
            }
            let out = run_mm(&args);
            let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.status.code(), Some(1), "{name}: mm inspect should fail:\n{stdout}\n{stderr}");
            assert!(stdout.contains(needle) && stderr.contains("problem"), "{name}:\n{stdout}\n{stderr}");
        }
    }
}
