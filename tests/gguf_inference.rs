//! Running GGUF files with their quantized weights as they are (`QMatMul`), against
//! llama.cpp's own logits on its own files (`shared/fixtures/llamacpp`) and against the
//! PyTorch reference (`shared/fixtures/minimind2`).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor, D};
use common::*;
use mm::converters::gguf::checkpoint::{self as gguf_ckpt, GgufOptions, SourcePrecision};
use mm::converters::gguf::mixture::QuantScheme;
use mm::converters::lora::Lora;
use mm::converters::pth::checkpoint::PthHints;
use mm::converters::{read_checkpoint, Checkpoint, MiniMindConfig, TokenizerFiles};
use mm::model::{GgufModelFile, GgufWeight, KvCache, MiniMind, Mode};

fn sequences(shared: &Path) -> Vec<(String, Vec<u32>)> {
    let inputs = read_json(&shared.join("fixtures/minimind2/inputs.json"));
    let mut out: Vec<(String, Vec<u32>)> = inputs["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), ids(&p["input_ids"])))
        .collect();
    out.push(("random300".into(), ids(&inputs["random300"]["input_ids"])));
    out
}

fn load_gguf(path: &Path) -> MiniMind {
    let file = GgufModelFile::read(path).unwrap();
    MiniMind::from_gguf(&file, DType::F32, &Device::Cpu).unwrap()
}

fn logits_of(model: &MiniMind, ids: &[u32]) -> Tensor {
    let input = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    model.forward(&input, None, None, Mode::Inference).unwrap().logits.squeeze(0).unwrap()
}

/// log Σ exp of each row, computed in f64 like the fixtures, returned as f32.
fn lse(logits: &Tensor) -> Tensor {
    let x = logits.to_dtype(DType::F64).unwrap();
    let max = x.max_keepdim(D::Minus1).unwrap();
    let s = x.broadcast_sub(&max).unwrap().exp().unwrap().sum_keepdim(D::Minus1).unwrap().log().unwrap();
    (s + max).unwrap().squeeze(1).unwrap().to_dtype(DType::F32).unwrap()
}

fn argmax(logits: &Tensor) -> Vec<i64> {
    logits.argmax(D::Minus1).unwrap().to_dtype(DType::I64).unwrap().to_vec1().unwrap()
}

/// Deltas of mm's logits against one reference set, over every sequence.
#[derive(Default, Debug)]
struct Deltas {
    /// max |Δ| over every stored full-logit matrix (`<seq>.logits`), if any.
    full: Option<f32>,
    /// max |Δ| over the stored last-k rows of every sequence, if any.
    last: Option<f32>,
    /// max |Δ| over the probe columns at every position.
    probe: f32,
    lse: f32,
    argmax_agree: usize,
    positions: usize,
    /// (sequence, position) of argmax disagreements, with the reference top-2 gap there.
    misses: Vec<(String, usize, f32)>,
}

/// The logits from the CPU inference engine (what generation and serving run), the prompt
/// fed in two pieces so the second reads the cache the first filled.
fn engine_logits_of(model: &MiniMind, ids: &[u32]) -> Tensor {
    let mut cache = KvCache::new(&model.config);
    let split = ids.len() / 2;
    let a = model.forward_all_logits(&ids[..split], &mut cache).unwrap();
    let b = model.forward_all_logits(&ids[split..], &mut cache).unwrap();
    Tensor::cat(&[a, b], 0).unwrap()
}

/// `prefix` is e.g. "q4_k_m." for llama.cpp's file, "" for the PyTorch one; `last_key` the
/// name of the last-rows tensor ("logits_last4" / "logits_last8"). Both of mm's runtimes
/// are measured (candle's ops and the CPU engine) and the worse figure of the two is kept,
/// so every bound a test sets holds for both.
fn compare(model: &MiniMind, shared: &Path, refs: &HashMap<String, Tensor>, prefix: &str, last_key: &str) -> Deltas {
    let candle = compare_one(model, shared, refs, prefix, last_key, logits_of);
    let engine = compare_one(model, shared, refs, prefix, last_key, engine_logits_of);
    report("    candle's ops", &candle);
    report("    CPU engine", &engine);
    let worst = |a: Option<f32>, b: Option<f32>| match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let (misses, argmax_agree) =
        if engine.argmax_agree < candle.argmax_agree { (engine.misses, engine.argmax_agree) } else { (candle.misses, candle.argmax_agree) };
    Deltas {
        full: worst(candle.full, engine.full),
        last: worst(candle.last, engine.last),
        probe: candle.probe.max(engine.probe),
        lse: candle.lse.max(engine.lse),
        argmax_agree,
        positions: candle.positions,
        misses,
    }
}

fn compare_one(
    model: &MiniMind,
    shared: &Path,
    refs: &HashMap<String, Tensor>,
    prefix: &str,
    last_key: &str,
    logits_of: fn(&MiniMind, &[u32]) -> Tensor,
) -> Deltas {
    let probe_ids = refs["probe_ids"].to_dtype(DType::U32).unwrap();
    let mut d = Deltas::default();
    for (name, ids) in sequences(shared) {
        let key = |k: &str| format!("{prefix}{name}.{k}");
        let logits = logits_of(model, &ids);
        let t = logits.dim(0).unwrap();
        if let Some(full) = refs.get(&key("logits")) {
            d.full = Some(d.full.unwrap_or(0.0).max(max_abs_diff(&logits, full)));
        }
        if let Some(last) = refs.get(&key(last_key)) {
            let k = last.dim(0).unwrap();
            d.last = Some(d.last.unwrap_or(0.0).max(max_abs_diff(&logits.narrow(0, t - k, k).unwrap(), last)));
        }
        if let Some(probe) = refs.get(&key("probe")) {
            d.probe = d.probe.max(max_abs_diff(&logits.index_select(&probe_ids, 1).unwrap(), probe));
        }
        d.lse = d.lse.max(max_abs_diff(&lse(&logits), &refs[&key("lse")]));
        let ours = argmax(&logits);
        let theirs: Vec<i64> = refs[&key("argmax")].to_vec1().unwrap();
        assert_eq!(ours.len(), theirs.len());
        for (pos, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            if a == b {
                d.argmax_agree += 1;
            } else {
                // How close the call was in *our* logits: the gap between the two picks.
                let row: Vec<f32> = logits.get(pos).unwrap().to_vec1().unwrap();
                d.misses.push((name.clone(), pos, (row[*a as usize] - row[*b as usize]).abs()));
            }
        }
        d.positions += ids.len();
    }
    d
}

fn report(what: &str, d: &Deltas) {
    let opt = |v: Option<f32>| v.map_or("n/a".to_string(), |v| format!("{v:.3e}"));
    eprintln!(
        "{what}: max|Δ| full {}, last rows {}, probe {:.3e}; lse {:.3e}; argmax {}/{}",
        opt(d.full),
        opt(d.last),
        d.probe,
        d.lse,
        d.argmax_agree,
        d.positions
    );
    for (seq, pos, gap) in &d.misses {
        eprintln!("    argmax differs at {seq}[{pos}]: our logit gap between the two picks {gap:.2e}");
    }
}

fn llamacpp(shared: &Path) -> (std::path::PathBuf, HashMap<String, Tensor>) {
    let dir = shared.join("fixtures/llamacpp");
    let refs = reference(&dir.join("logits.safetensors"));
    (dir, refs)
}

#[test]
fn q4_k_m_runs_quantized_and_matches_llama_cpp() {
    let Some(shared) = shared_or_skip("q4_k_m_runs_quantized_and_matches_llama_cpp") else { return };
    let (dir, refs) = llamacpp(&shared);
    let path = dir.join("dense-q4_k_m.gguf");
    let file = GgufModelFile::read(&path).unwrap();
    eprintln!("{file}");
    assert!(file.is_quantized() && file.dequantized.is_empty());
    let model = MiniMind::from_gguf(&file, DType::F32, &Device::Cpu).unwrap();
    assert!(model.is_quantized());

    let d = compare(&model, &shared, &refs, "q4_k_m.", "logits_last4");
    report("q4_k_m vs llama.cpp q4_k_m", &d);
    // Bounds from the fixture README (an f32 forward on these weights vs llama.cpp).
    let (full, last) = (d.full.unwrap(), d.last.unwrap());
    assert!(full > 0.0 && full <= 0.1, "prompt0 full logits differ by {full}");
    assert!(last <= 0.1, "last-4 rows differ by {last}");
    assert!(d.probe <= 0.1, "probe columns differ by {}", d.probe);
    assert!(d.lse <= 2e-3, "lse differs by {}", d.lse);
    // Random weights give near-ties; every miss must be one (README: "do not require argmax").
    assert!(d.argmax_agree * 100 >= d.positions * 95, "argmax agrees at only {}/{}", d.argmax_agree, d.positions);
    for (seq, pos, gap) in &d.misses {
        assert!(*gap < 0.05, "{seq}[{pos}]: argmax differs with a logit gap of {gap}");
    }

    // The same file dequantized to f32 (the `read_checkpoint` route): the difference is the
    // Q8 rounding of the activations that QMatMul does like llama.cpp.
    let dense = MiniMind::from_checkpoint(&read_checkpoint(&path, &PthHints::default()).unwrap(), DType::F32, &Device::Cpu).unwrap();
    assert!(!dense.is_quantized());
    let dd = compare(&dense, &shared, &refs, "q4_k_m.", "logits_last4");
    report("q4_k_m dequantized to f32 vs llama.cpp q4_k_m", &dd);
    // Our blocks, expanded, are exactly the reader's weights (Q/K rows un-permuted alike).
    let (_, ids) = &sequences(&shared)[3];
    let same = max_abs_diff(&logits_of(&dequantized_copy(&path), ids), &logits_of(&dense, ids));
    assert!(same <= 1e-5, "expanded blocks differ from the dequantizing reader by {same}");

    // Decoding one token at a time through the KV cache gives the one-batch logits, in each
    // runtime (between the two, the Q8 rounding of activations differs at the last bit now
    // and then, which moves logits by up to a few 1e-2, as between llama.cpp and either).
    let (_, ids) = &sequences(&shared)[0];
    let mut candle = model.clone();
    candle.set_cpu_engine(false);
    let mut worst = 0f32;
    for (runtime, model) in [("CPU engine", &model), ("candle", &candle)] {
        let full = model.forward_all_logits(ids, &mut KvCache::new(&model.config)).unwrap();
        let mut cache = KvCache::new(&model.config);
        let split = ids.len() - 6;
        let prefix = Tensor::new(&ids[..split], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let mut d = max_abs_diff(&model.forward_last(&prefix, &mut cache).unwrap().squeeze(0).unwrap(), &full.get(split - 1).unwrap());
        for (i, &id) in ids.iter().enumerate().skip(split) {
            let step = Tensor::new(&[id], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let row = model.forward_last(&step, &mut cache).unwrap().squeeze(0).unwrap();
            d = d.max(max_abs_diff(&row, &full.get(i).unwrap()));
        }
        eprintln!("q4_k_m cached decode vs one batch ({runtime}): max|Δ| {d:.2e}");
        worst = worst.max(d);
    }
    assert!(worst <= 1e-4, "cached decode differs from the batch forward by {worst}");
}

#[test]
fn f16_gguf_matches_llama_cpp_and_pytorch() {
    let Some(shared) = shared_or_skip("f16_gguf_matches_llama_cpp_and_pytorch") else { return };
    let (dir, refs) = llamacpp(&shared);
    let model = load_gguf(&dir.join("dense-f16.gguf"));
    assert!(!model.is_quantized());

    let d = compare(&model, &shared, &refs, "f16.", "logits_last4");
    report("f16 vs llama.cpp f16", &d);
    assert!(d.full.unwrap() <= 3e-3 && d.last.unwrap() <= 3e-3 && d.probe <= 3e-3, "{d:?}");
    assert!(d.lse <= 1e-4, "lse differs by {}", d.lse);

    let torch = reference(&shared.join("fixtures/minimind2/dense/logits.safetensors"));
    let d = compare(&model, &shared, &torch, "", "logits_last8");
    report("f16 gguf vs PyTorch", &d);
    assert!(d.full.unwrap() <= 1e-4 && d.last.unwrap() <= 1e-4 && d.probe <= 1e-4, "{d:?}");
    assert!(d.lse <= 1e-4, "lse differs by {}", d.lse);
    assert_eq!(d.argmax_agree, d.positions, "argmax differs from PyTorch: {:?}", d.misses);
}

#[test]
fn q8_q6_q5_gguf_agree_with_llama_cpp() {
    let Some(shared) = shared_or_skip("q8_q6_q5_gguf_agree_with_llama_cpp") else { return };
    let (dir, refs) = llamacpp(&shared);
    for m in ["q8_0", "q6_k", "q5_k_m"] {
        let model = load_gguf(&dir.join(format!("dense-{m}.gguf")));
        assert!(model.is_quantized());
        let d = compare(&model, &shared, &refs, &format!("{m}."), "logits_last4");
        report(&format!("{m} vs llama.cpp {m}"), &d);
        assert!(d.probe <= 0.1, "{m}: probe columns differ by {}", d.probe);
        assert!(d.lse <= 2e-3, "{m}: lse differs by {}", d.lse);
        for (seq, pos, gap) in &d.misses {
            assert!(*gap < 0.05, "{m} {seq}[{pos}]: argmax differs with a logit gap of {gap}");
        }
    }
}

fn export(ckpt: &Checkpoint, path: &Path, scheme: QuantScheme) {
    let options = GgufOptions { scheme, source_precision: SourcePrecision::Exact, name: "t".into() };
    gguf_ckpt::write(ckpt, path, &options, &|_, _, _| {}).unwrap();
}

/// Quantized and dequantized runs of one file: only the activation rounding differs.
fn quantized_vs_dequantized(path: &Path, ids: &[u32]) -> (f32, f32) {
    let q = load_gguf(path);
    assert!(q.is_quantized());
    let dense = MiniMind::from_checkpoint(&read_checkpoint(path, &PthHints::default()).unwrap(), DType::F32, &Device::Cpu).unwrap();
    let (a, b) = (logits_of(&q, ids), logits_of(&dense, ids));
    (max_abs_diff(&a, &b), max_abs_diff(&lse(&a), &lse(&b)))
}

/// The file's weights with every quantized matrix expanded to f32, through the same
/// GGUF → canonical mapping (row un-permutation, expert split) as the quantized model.
fn dequantized_copy(path: &Path) -> MiniMind {
    let mut file = GgufModelFile::read(path).unwrap();
    for w in file.weights.values_mut() {
        *w = GgufWeight::Dense(w.dequantize(DType::F32).unwrap());
    }
    MiniMind::from_gguf(&file, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn moe_gguf_runs_quantized() {
    let Some(shared) = shared_or_skip("moe_gguf_runs_quantized") else { return };
    let hf = weights_dir(&shared, "moe").join("hf-minimind");
    let ckpt = read_checkpoint(&hf, &PthHints::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("moe-q4_k_m.gguf");
    export(&ckpt, &path, QuantScheme::Q4_K_M);
    let q = load_gguf(&path);
    assert!(q.is_quantized());
    let expanded = dequantized_copy(&path);
    let dense = MiniMind::from_checkpoint(&read_checkpoint(&path, &PthHints::default()).unwrap(), DType::F32, &Device::Cpu).unwrap();
    let mut flips = 0;
    let mut positions = 0;
    for (name, ids) in sequences(&shared) {
        let (a, b, c) = (logits_of(&q, &ids), logits_of(&expanded, &ids), logits_of(&dense, &ids));
        // The expert split and Q/K un-permutation put every block where the reader puts it.
        let same = max_abs_diff(&b, &c);
        assert!(same <= 1e-5, "{name}: expanded blocks differ from the dequantizing reader by {same}");
        // Q8 activation rounding can flip a top-2 routing choice, which moves that position's
        // logits by a few tenths: count those positions.
        let per_pos: Vec<f32> = (&a - &c).unwrap().abs().unwrap().max(D::Minus1).unwrap().to_vec1().unwrap();
        let big: Vec<usize> = per_pos.iter().enumerate().filter(|(_, d)| **d > 0.1).map(|(i, _)| i).collect();
        eprintln!(
            "moe q4_k_m {name}: quantized vs dequantized max|Δ| {:.3e}, lse {:.3e}; positions over 0.1: {big:?}",
            max_abs_diff(&a, &c),
            max_abs_diff(&lse(&a), &lse(&c))
        );
        flips += big.len();
        positions += ids.len();
    }
    assert!(flips * 20 <= positions, "{flips}/{positions} positions moved by more than 0.1");

    // With every expert routed there is no discontinuity: only the activation rounding is left.
    let mut file = GgufModelFile::read(&path).unwrap();
    file.config.num_experts_per_tok = file.config.n_routed_experts;
    let q = MiniMind::from_gguf(&file, DType::F32, &Device::Cpu).unwrap();
    for w in file.weights.values_mut() {
        *w = GgufWeight::Dense(w.dequantize(DType::F32).unwrap());
    }
    let expanded = MiniMind::from_gguf(&file, DType::F32, &Device::Cpu).unwrap();
    for (name, ids) in sequences(&shared) {
        let (a, b) = (logits_of(&q, &ids), logits_of(&expanded, &ids));
        let (d, l) = (max_abs_diff(&a, &b), max_abs_diff(&lse(&a), &lse(&b)));
        eprintln!("moe q4_k_m, all experts routed, {name}: quantized vs dequantized max|Δ| {d:.3e}, lse {l:.3e}");
        assert!(d <= 0.1 && l <= 2e-3);
    }
}

#[test]
fn shared_experts_split_on_and_off_block_boundaries() {
    // Two shared experts: ffn_down_shexp is split by columns. With intermediate 704 the
    // split falls on block boundaries; with 336 it falls inside a 32-value block and that
    // matrix is dequantized instead.
    for ff in [704, 336] {
        let mut cfg = MiniMindConfig::with_hidden(256, 1);
        cfg.num_attention_heads = 4;
        cfg.num_key_value_heads = 2;
        cfg.use_moe = true;
        cfg.n_routed_experts = 4;
        cfg.n_shared_experts = 2;
        cfg.num_experts_per_tok = 2;
        cfg.intermediate_size = ff;
        let ckpt = mm::model::init::random_checkpoint(&cfg, 3, TokenizerFiles::builtin_minimind2()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("m.gguf");
        export(&ckpt, &path, QuantScheme::Q4_K_M);
        let file = GgufModelFile::read(&path).unwrap();
        eprintln!("ff {ff}: {file}; dequantized {:?}", file.dequantized);
        assert_eq!(file.dequantized.is_empty(), ff == 704);
        let ids: Vec<u32> = (0..40).map(|i| 3 + (i * 151) % 6000).collect();
        let (d, l) = quantized_vs_dequantized(&path, &ids);
        eprintln!("ff {ff}: quantized vs dequantized max|Δ| {d:.3e}, lse {l:.3e}");
        assert!(d <= 0.1 && l <= 2e-3);
    }
}

fn mm_bin(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mm")).args(args).output().unwrap()
}

#[test]
fn cli_generates_and_benches_from_q4_k_m() {
    let Some(shared) = shared_or_skip("cli_generates_and_benches_from_q4_k_m") else { return };
    let path = shared.join("fixtures/llamacpp/dense-q4_k_m.gguf");
    let path = path.to_str().unwrap();
    let gen = |extra: &[&str]| {
        let mut args = vec!["generate", path, "--greedy", "--max-new-tokens", "8", "--show-ids", "--raw", "-p", "The sky is"];
        args.extend_from_slice(extra);
        let out = mm_bin(&args);
        assert!(out.status.success(), "mm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let quantized = gen(&[]);
    let ids: Vec<u32> = serde_json::from_str(quantized.lines().last().unwrap()).unwrap();
    // The random fixture model does not stop on its own within 8 tokens of this prompt.
    assert_eq!(ids.len(), 8, "{quantized}");
    eprintln!("generate (quantized): {quantized}");
    eprintln!("generate (--dequantize): {}", gen(&["--dequantize"]));

    let out = mm_bin(&["bench", path, "--prefill", "32", "--decode", "8", "--repeat", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    eprintln!("{text}");
    assert!(text.contains("run quantized") && text.contains("decode"), "{text}");
}


#[test]
fn lora_on_gguf_models() {
    let Some(shared) = shared_or_skip("lora_on_gguf_models") else { return };
    let expected = &reference(&shared.join("fixtures/minimind2/dense/lora_logits.safetensors"))["prompt0_zh.logits"];
    let lora = Lora::read(&shared.join("fixtures/minimind2/dense/lora.pth")).unwrap();
    let (_, ids) = &sequences(&shared)[0];
    let dir = shared.join("fixtures/llamacpp");
    // F16 weights: the upstream LoRA result.
    let mut model = load_gguf(&dir.join("dense-f16.gguf"));
    model.attach_lora(&lora).unwrap();
    let d = max_abs_diff(&logits_of(&model, ids), expected);
    eprintln!("lora on dense-f16.gguf vs PyTorch: max|Δ| {d:.2e}");
    assert!(d <= 1e-4);
    // Quantized base + dense LoRA branch: the LoRA moves the quantized logits as it moves the
    // f32 ones (the difference between the two runs is the base's quantization alone).
    let path = dir.join("dense-q4_k_m.gguf");
    let base = logits_of(&load_gguf(&path), ids);
    let mut model = load_gguf(&path);
    model.attach_lora(&lora).unwrap();
    let with = logits_of(&model, ids);
    let torch_base = &reference(&shared.join("fixtures/minimind2/dense/logits.safetensors"))["prompt0_zh.logits"];
    let shift_q = (&with - &base).unwrap();
    let shift_f = (expected - torch_base).unwrap();
    let d = max_abs_diff(&shift_q, &shift_f);
    let size = |t: &Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    eprintln!(
        "lora on dense-q4_k_m.gguf: shift up to {:.2e} (PyTorch's {:.2e}), differing from PyTorch's by {d:.2e}",
        size(&shift_q),
        size(&shift_f)
    );
    assert!(size(&shift_q) > 0.05 && d <= 0.1);
}
