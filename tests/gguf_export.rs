//! GGUF export against llama.cpp's own converter and quantizer (`shared/fixtures/llamacpp`),
//! GGUF → HF → GGUF round trips, MoE exports, and bad GGUF input.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use mm::converters::gguf::checkpoint::{self as gguf_ckpt, GgufOptions, SourcePrecision};
use mm::converters::gguf::file::{GgufFile, MetaValue};
use mm::converters::gguf::mixture::QuantScheme;
use mm::converters::pth::checkpoint::PthHints;
use mm::converters::{read_checkpoint, write_checkpoint, Checkpoint, Format};

fn export(ckpt: &Checkpoint, path: &Path, scheme: QuantScheme, name: &str) {
    let options = GgufOptions { scheme, source_precision: SourcePrecision::F16, name: name.into() };
    gguf_ckpt::write(ckpt, path, &options, &|_, _, _| {}).unwrap();
}

fn describe(v: &MetaValue) -> String {
    match v {
        MetaValue::Array(ty, items) => format!("array of {} {:?}", items.len(), ty),
        other => format!("{other:?}"),
    }
}

#[test]
fn dense_exports_are_byte_identical_to_llama_cpp() {
    let Some(shared) = common::shared_or_skip("dense_exports_are_byte_identical_to_llama_cpp") else { return };
    let hf = common::weights_dir(&shared, "dense").join("hf-llama");
    let ckpt = read_checkpoint(&hf, &PthHints::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (file, scheme) in [
        ("dense-f16.gguf", QuantScheme::F16),
        ("dense-q8_0.gguf", QuantScheme::Q8_0),
        ("dense-q6_k.gguf", QuantScheme::Q6_K),
        ("dense-q5_k_m.gguf", QuantScheme::Q5_K_M),
        ("dense-q4_k_m.gguf", QuantScheme::Q4_K_M),
    ] {
        let ours_path = dir.path().join(file);
        // The converter derives general.name from the directory name `hf-llama`.
        export(&ckpt, &ours_path, scheme, "Hf Llama");
        let ours = GgufFile::open(&ours_path).unwrap();
        let theirs = GgufFile::open(&shared.join("fixtures/llamacpp").join(file)).unwrap();

        let mut names: Vec<_> = ours.tensors.iter().map(|t| t.name.clone()).collect();
        let mut their_names: Vec<_> = theirs.tensors.iter().map(|t| t.name.clone()).collect();
        names.sort();
        their_names.sort();
        assert_eq!(names, their_names, "{file}: tensor sets differ");
        let mut identical = 0;
        for t in &theirs.tensors {
            let o = ours.tensor(&t.name).unwrap();
            assert_eq!((o.ty, &o.ne), (t.ty, &t.ne), "{file}: {} type/shape", t.name);
            assert!(ours.data(o) == theirs.data(t), "{file}: {} ({}) bytes differ", t.name, t.ty);
            identical += 1;
        }
        for (key, value) in theirs.metadata.iter() {
            if key == "general.name" {
                continue;
            }
            let mine = ours.metadata.get(key).unwrap_or_else(|| panic!("{file}: missing key {key}"));
            assert_eq!(mine, value, "{file}: {key}: ours {} theirs {}", describe(mine), describe(value));
        }
        let extra: Vec<_> = ours.metadata.iter().filter(|(k, _)| theirs.metadata.get(k).is_none()).map(|(k, _)| k).collect();
        assert!(extra.is_empty(), "{file}: keys llama.cpp does not write: {extra:?}");
        let whole = std::fs::read(&ours_path).unwrap() == std::fs::read(shared.join("fixtures/llamacpp").join(file)).unwrap();
        println!(
            "{file}: {identical}/{} tensors byte-identical, {} keys equal, whole file identical: {whole}",
            theirs.tensors.len(),
            theirs.metadata.len()
        );
        assert!(whole, "{file}: tensors and keys match but the files differ (order?)");
    }
}

#[test]
fn gguf_to_hf_to_gguf_round_trips_bit_identically() {
    let Some(shared) = common::shared_or_skip("gguf_to_hf_to_gguf_round_trips_bit_identically") else { return };
    let hf = common::weights_dir(&shared, "dense").join("hf-llama");
    let ckpt = read_checkpoint(&hf, &PthHints::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (scheme, dtype) in [(QuantScheme::F16, DType::F16), (QuantScheme::F32, DType::F32)] {
        let first = dir.path().join(format!("first-{}.gguf", scheme.name()));
        let source = ckpt.to_dtype(dtype).unwrap();
        let options = GgufOptions { scheme, source_precision: SourcePrecision::Exact, name: "m".into() };
        gguf_ckpt::write(&source, &first, &options, &|_, _, _| {}).unwrap();
        let back = read_checkpoint(&first, &PthHints::default()).unwrap();
        let hf_dir = dir.path().join(format!("hf-{}", scheme.name()));
        write_checkpoint(&back, &hf_dir, Format::HfMiniMind).unwrap();
        let again = read_checkpoint(&hf_dir, &PthHints::default()).unwrap();
        let second = dir.path().join(format!("second-{}.gguf", scheme.name()));
        gguf_ckpt::write(&again, &second, &options, &|_, _, _| {}).unwrap();
        assert!(std::fs::read(&first).unwrap() == std::fs::read(&second).unwrap(), "{}: files differ", scheme.name());
        // And the weights came back as they went in (f32 exactly; f16 matrices exactly).
        for (name, t) in source.tensors() {
            let b = back.get(name).unwrap().to_dtype(t.dtype()).unwrap();
            assert!(mm::converters::checkpoint::tensors_equal(t, &b).unwrap(), "{name} changed");
        }
        println!("{}: GGUF → HF → GGUF byte-identical ({} bytes)", scheme.name(), std::fs::metadata(&first).unwrap().len());
    }
}

#[test]
fn llama_cpp_f16_file_reads_back_to_the_fixture_weights() {
    let Some(shared) = common::shared_or_skip("llama_cpp_f16_file_reads_back_to_the_fixture_weights") else { return };
    let hf = common::weights_dir(&shared, "dense").join("hf-llama");
    let ckpt = read_checkpoint(&hf, &PthHints::default()).unwrap();
    let theirs = read_checkpoint(&shared.join("fixtures/llamacpp/dense-f16.gguf"), &PthHints::default()).unwrap();
    assert_eq!(theirs.config.hidden_size, ckpt.config.hidden_size);
    assert_eq!(theirs.config.intermediate_size, ckpt.config.intermediate_size);
    assert_eq!(theirs.config.rms_norm_eps, ckpt.config.rms_norm_eps);
    assert_eq!(theirs.config.rope_theta, ckpt.config.rope_theta);
    for (name, t) in ckpt.tensors() {
        let b = theirs.get(name).unwrap().to_dtype(t.dtype()).unwrap();
        assert!(mm::converters::checkpoint::tensors_equal(t, &b).unwrap(), "{name} differs after un-permuting");
    }
    // The tokenizer rebuilt from GGUF metadata encodes like the original.
    let (tok_a, _) = mm::loaded::tokenizer_and_template(&ckpt.tokenizer).unwrap();
    let (tok_b, _) = mm::loaded::tokenizer_and_template(&theirs.tokenizer).unwrap();
    let cases = common::read_json(&shared.join("fixtures/llamacpp/tokenize.json"));
    let mut n = 0;
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let expected = common::ids(&case["llamacpp"]);
        assert_eq!(tok_b.encode(text, false).unwrap(), expected, "{text:?}");
        assert_eq!(tok_a.encode(text, false).unwrap(), expected, "{text:?}");
        n += 1;
    }
    println!("{n} tokenize.json strings: GGUF-rebuilt tokenizer = llama.cpp = HF");
}

#[test]
fn moe_exports_follow_ernie_layout_and_run() {
    let Some(shared) = common::shared_or_skip("moe_exports_follow_ernie_layout_and_run") else { return };
    let ckpt = read_checkpoint(&common::weights_dir(&shared, "moe").join("hf-minimind"), &PthHints::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moe-f32.gguf");
    let options = GgufOptions { scheme: QuantScheme::F32, source_precision: SourcePrecision::Exact, name: "moe".into() };
    gguf_ckpt::write(&ckpt, &path, &options, &|_, _, _| {}).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.metadata.get("general.architecture").unwrap().as_str(), Some("ernie4_5-moe"));
    let cfg = &ckpt.config;
    let (h, ff, e) = (cfg.hidden_size as u64, cfg.intermediate_size as u64, cfg.n_routed_experts as u64);
    assert_eq!(file.tensor("blk.0.ffn_gate_exps.weight").unwrap().ne, vec![h, ff, e]);
    assert_eq!(file.tensor("blk.0.ffn_down_exps.weight").unwrap().ne, vec![ff, h, e]);
    assert_eq!(file.tensor("blk.0.ffn_gate_inp.weight").unwrap().ne, vec![h, e]);
    assert_eq!(file.tensor("blk.0.ffn_up_shexp.weight").unwrap().ne, vec![h, ff * cfg.n_shared_experts as u64]);
    for key in ["expert_count", "expert_used_count", "expert_feed_forward_length", "expert_shared_feed_forward_length", "interleave_moe_layer_step"] {
        assert!(file.metadata.get(&format!("ernie4_5-moe.{key}")).is_some(), "{key}");
    }
    // Read back: identical weights, identical logits.
    let back = read_checkpoint(&path, &PthHints::default()).unwrap();
    for (name, t) in ckpt.tensors() {
        let b = back.get(name).unwrap().to_dtype(t.dtype()).unwrap();
        assert!(mm::converters::checkpoint::tensors_equal(t, &b).unwrap(), "{name}");
    }
    // Q4_K_M of the MoE writes and runs; its logits stay near the f32 model's.
    let q = dir.path().join("moe-q4_k_m.gguf");
    export(&ckpt, &q, QuantScheme::Q4_K_M, "moe");
    let qfile = GgufFile::open(&q).unwrap();
    for t in &qfile.tensors {
        assert!(t.ty.name() != "F16", "{} left as F16", t.name);
    }
    let dq = read_checkpoint(&q, &PthHints::default()).unwrap();
    let ids: Vec<u32> = (0..24).map(|i| (i * 97 % 6400) as u32).collect();
    let logits = |c: &Checkpoint| -> Tensor {
        let m = mm::model::MiniMind::from_checkpoint(c, DType::F32, &Device::Cpu).unwrap();
        let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        m.forward(&input, None, None, mm::model::Mode::Inference).unwrap().logits
    };
    let (a, b) = (logits(&ckpt), logits(&dq));
    let d = common::max_abs_diff(&a, &b);
    println!("moe q4_k_m (dequantized) vs f32 logits: max |Δ| {d:.4}");
    assert!(d < 1.0, "quantized MoE drifted by {d}");
}

#[test]
fn corrupt_or_truncated_gguf_is_a_clear_error() {
    let Some(shared) = common::shared_or_skip("corrupt_or_truncated_gguf_is_a_clear_error") else { return };
    let bytes = std::fs::read(shared.join("fixtures/llamacpp/dense-q4_k_m.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    for (what, data) in [
        ("truncated header", bytes[..1000].to_vec()),
        ("truncated data", bytes[..bytes.len() - 100].to_vec()),
        ("bad magic", [b"GGUX".as_slice(), &bytes[4..]].concat()),
        ("empty", Vec::new()),
    ] {
        std::fs::write(&path, &data).unwrap();
        let err = read_checkpoint(&path, &PthHints::default()).err().unwrap_or_else(|| panic!("{what} accepted"));
        let msg = format!("{err:#}");
        assert!(msg.contains("bad.gguf"), "{what}: error does not name the file: {msg}");
        println!("{what}: {msg}");
    }
}

#[test]
fn what_llama_cpp_cannot_represent_is_refused() {
    let mut cfg = mm::converters::MiniMindConfig { num_attention_heads: 4, ..mm::converters::MiniMindConfig::with_hidden(64, 1) };
    cfg.set_inference_rope_scaling(true);
    let ckpt = mm::model::init::random_checkpoint(&cfg, 0, mm::converters::TokenizerFiles::builtin_minimind2()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("yarn.gguf");
    let options = GgufOptions { scheme: QuantScheme::Q8_0, source_precision: SourcePrecision::F16, name: "x".into() };
    let err = gguf_ckpt::write(&ckpt, &path, &options, &|_, _, _| {}).unwrap_err();
    assert!(format!("{err:#}").contains("YaRN"), "{err:#}");
    assert!(!path.exists(), "a refused export left a file behind");
}

#[test]
fn export_command_prints_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let mm = env!("CARGO_BIN_EXE_mm");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(mm).args(args).output().unwrap();
        assert!(out.status.success(), "mm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["init", "--hidden-size", "256", "--layers", "2", "--heads", "4", "--kv-heads", "2", "-o", model.to_str().unwrap()]);
    let out_path = dir.path().join("tiny-q4_k_m.gguf");
    let text = run(&["export", "gguf", model.to_str().unwrap(), "--quant", "q4_k_m", "-o", out_path.to_str().unwrap()]);
    println!("{text}");
    assert!(text.contains("Q4_K") && text.contains("Q6_K") && text.contains("bits per weight"), "{text}");
    let file = GgufFile::open(&out_path).unwrap();
    assert_eq!(file.metadata.get("general.file_type"), Some(&MetaValue::U32(15)));
    // An unknown scheme is a clear error.
    let bad = std::process::Command::new(mm).args(["export", "gguf", model.to_str().unwrap(), "--quant", "q3_x"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("q4_k_m"));
}
