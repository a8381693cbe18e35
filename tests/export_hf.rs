//! `mm export hf`: the dense fixture as LlamaForCausalLM is bit-identical to upstream's own
//! Llama export; the MoE fixture as Qwen2MoeForCausalLM reads back to the original weights
//! exactly; sharding; both validate clean; wrong architectures are refused.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use mm::converters::checkpoint::tensors_equal;
use mm::converters::pth::checkpoint::PthHints;
use mm::converters::read_checkpoint;
use mm::export::validate_hf::{validate_hf_dir, HfReport, HfValidateOptions, Target};

fn mm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mm")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = mm(args);
    assert!(out.status.success(), "mm {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn validate(dir: &Path) -> HfReport {
    validate_hf_dir(dir, &HfValidateOptions::new(Target::Vllm))
}

fn assert_clean(report: &HfReport) {
    assert!(report.errors.is_empty() && report.warnings.is_empty(), "{}", mm::export::validate_hf::describe(report));
}

#[test]
fn dense_fixture_as_llama_is_bit_identical_to_upstreams_llama_export() {
    let Some(shared) = common::shared_or_skip("dense_fixture_as_llama_is_bit_identical") else { return };
    let fixture = common::weights_dir(&shared, "dense");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("llama");
    let stdout = ok(&["export", "hf", fixture.join("hf-minimind").to_str().unwrap(), "--arch", "llama", "-o", out.to_str().unwrap()]);
    assert!(stdout.contains("LlamaForCausalLM") && stdout.contains("OK (0 warnings)"), "{stdout}");

    let ours = common::reference(&out.join("model.safetensors"));
    let theirs = common::reference(&fixture.join("hf-llama/model.safetensors"));
    let mut names: Vec<_> = ours.keys().collect();
    names.sort();
    let mut expected: Vec<_> = theirs.keys().collect();
    expected.sort();
    assert_eq!(names, expected);
    for (name, t) in &theirs {
        assert!(tensors_equal(&ours[name], t).unwrap(), "`{name}` differs from the fixture's hf-llama");
    }
    let config = common::read_json(&out.join("config.json"));
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["tie_word_embeddings"], true);
    let generation = common::read_json(&out.join("generation_config.json"));
    assert_eq!((generation["bos_token_id"].as_u64(), generation["eos_token_id"].as_u64()), (Some(1), Some(2)));
    let tok = common::read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tok["tokenizer_class"], "PreTrainedTokenizerFast");
    assert!(tok["chat_template"].as_str().unwrap().contains("<|im_start|>"));
    assert_clean(&validate(&out));
    // The default architecture of a dense model is llama.
    let default = tmp.path().join("default");
    ok(&["export", "hf", fixture.join("hf-minimind").to_str().unwrap(), "-o", default.to_str().unwrap()]);
    assert_eq!(common::read_json(&default.join("config.json"))["architectures"][0], "LlamaForCausalLM");
}

#[test]
fn moe_fixture_as_qwen2_moe_reads_back_to_the_original_weights() {
    let Some(shared) = common::shared_or_skip("moe_fixture_as_qwen2_moe_reads_back") else { return };
    let src = common::weights_dir(&shared, "moe").join("hf-minimind");
    let original = read_checkpoint(&src, &PthHints::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (name, extra) in [("single", None), ("sharded", Some("2MB"))] {
        let out = tmp.path().join(name);
        let mut args = vec!["export", "hf", src.to_str().unwrap(), "-o", out.to_str().unwrap()];
        if let Some(size) = extra {
            args.extend(["--max-shard-size", size]);
        }
        let stdout = ok(&args);
        assert!(stdout.contains("Qwen2MoeForCausalLM"), "{stdout}");
        let config = common::read_json(&out.join("config.json"));
        assert_eq!(config["model_type"], "qwen2_moe");
        assert_eq!(config["shared_expert_intermediate_size"], config["moe_intermediate_size"]);
        if extra.is_some() {
            let index = common::read_json(&out.join("model.safetensors.index.json"));
            let shards: std::collections::BTreeSet<_> =
                index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap().to_string()).collect();
            assert!(shards.len() > 1, "{shards:?}");
            assert!(!out.join("model.safetensors").exists());
        }
        assert_clean(&validate(&out));

        let back = read_checkpoint(&out, &PthHints::default()).unwrap();
        assert_eq!(back.provenance.format, "hf-qwen2-moe");
        assert_eq!(back.config, original.config);
        assert_eq!(back.tensors().len(), original.tensors().len());
        for ((na, ta), (nb, tb)) in original.tensors().iter().zip(back.tensors()) {
            assert_eq!(na, nb);
            assert!(tensors_equal(ta, tb).unwrap(), "`{na}` did not survive the Qwen2-MoE round trip ({name})");
        }
    }
}

#[test]
fn an_architecture_that_cannot_hold_the_model_is_refused() {
    let Some(shared) = common::shared_or_skip("an_architecture_that_cannot_hold_the_model_is_refused") else { return };
    let tmp = tempfile::tempdir().unwrap();
    for (cfg, arch, says) in [("dense", "qwen2-moe", "dense model"), ("moe", "llama", "--arch qwen2-moe")] {
        let src = common::weights_dir(&shared, cfg).join("hf-minimind");
        let out = tmp.path().join(format!("{cfg}-{arch}"));
        let res = mm(&["export", "hf", src.to_str().unwrap(), "--arch", arch, "-o", out.to_str().unwrap()]);
        assert_eq!(res.status.code(), Some(1));
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(err.contains(says), "{err}");
        assert!(!out.exists(), "a refused export left {} behind", out.display());
    }
    let src = common::weights_dir(&shared, "dense").join("hf-minimind");
    let res = mm(&["export", "hf", src.to_str().unwrap(), "--arch", "gpt2", "-o", tmp.path().join("x").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&res.stderr).contains("unknown --arch"));
    let res = mm(&["export", "hf", src.to_str().unwrap(), "--max-shard-size", "5XB", "-o", tmp.path().join("x").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&res.stderr).contains("unknown unit"));
}

#[test]
fn minimind_layout_is_transformers_remote_code_only() {
    let Some(shared) = common::shared_or_skip("minimind_layout_is_transformers_remote_code_only") else { return };
    let src = common::weights_dir(&shared, "dense").join("model.pth");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mm");
    // A bare upstream .pth (4 heads) as the MiniMind layout: written, but vLLM cannot serve it.
    let stdout = ok(&["export", "hf", src.to_str().unwrap(), "--heads", "4", "--arch", "minimind", "-o", out.to_str().unwrap()]);
    assert!(stdout.contains("MiniMindForCausalLM"), "{stdout}");
    let res = mm(&["validate", "hf", out.to_str().unwrap()]);
    assert_eq!(res.status.code(), Some(1));
    let text = String::from_utf8_lossy(&res.stdout);
    assert!(text.contains("arch.unknown") && text.contains("--arch llama"), "{text}");
    let res = mm(&["validate", "hf", out.to_str().unwrap(), "--target", "transformers", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    let codes: Vec<&str> = report["errors"].as_array().unwrap().iter().map(|e| e["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["remote_code.missing_file"], "{report:#}");
}

#[test]
fn untied_models_carry_lm_head_in_both_layouts() {
    use candle_core::{DType, Device, Tensor};
    use mm::converters::naming::expected_tensors;
    use mm::converters::{Checkpoint, MiniMindConfig, Provenance, TokenizerFiles};
    use mm::export::hf::{export_hf, HfArch, HfExportOptions};

    let tmp = tempfile::tempdir().unwrap();
    for (moe, arch) in [(false, HfArch::Llama), (true, HfArch::Qwen2Moe)] {
        let cfg = MiniMindConfig { num_attention_heads: 4, use_moe: moe, tie_word_embeddings: false, ..MiniMindConfig::with_hidden(128, 1) };
        let tensors: Vec<_> = expected_tensors(&cfg)
            .into_iter()
            .enumerate()
            .map(|(i, (n, s))| (n, (Tensor::ones(s, DType::F32, &Device::Cpu).unwrap() * ((i as f64 + 1.0) / 64.0)).unwrap()))
            .collect();
        assert!(tensors.iter().any(|(n, _)| n == "lm_head.weight"));
        let ckpt = Checkpoint::new(cfg, tensors, TokenizerFiles::builtin_minimind2(), Provenance::new("t", Path::new("-"))).unwrap();
        assert!(!ckpt.config.tie_word_embeddings);
        let dir = tmp.path().join(arch.name());
        let opts = HfExportOptions { arch, dtype: Some(DType::BF16), max_shard_bytes: 5_000_000_000, template_probe: None };
        let summary = export_hf(&ckpt, &dir, &opts).unwrap();
        assert_clean(&summary.report);
        assert_eq!(common::read_json(&dir.join("config.json"))["tie_word_embeddings"], false);
        let back = read_checkpoint(&dir, &PthHints::default()).unwrap();
        let cast = ckpt.to_dtype(DType::BF16).unwrap();
        assert!(!back.config.tie_word_embeddings);
        for ((na, ta), (nb, tb)) in cast.tensors().iter().zip(back.tensors()) {
            assert_eq!(na, nb);
            assert!(tensors_equal(ta, tb).unwrap(), "{na} ({})", arch.name());
        }
    }
}
