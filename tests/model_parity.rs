//! The candle model against upstream PyTorch outputs (`shared/fixtures/minimind2`).

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use common::*;
use mm::converters::lora::Lora;
use mm::converters::pth::checkpoint::PthHints;
use mm::converters::{read_checkpoint, Checkpoint, MiniMindConfig};
use mm::generate::{generate, Sampler, SamplingParams};
use mm::model::{KvCache, MiniMind, Mode};

const LOGIT_TOL: f32 = 1e-4;

fn fixture_config(shared: &Path, cfg: &str) -> MiniMindConfig {
    let expected = read_json(&shared.join(format!("fixtures/minimind2/{cfg}/expected.json")));
    MiniMindConfig::from_json(&expected["config_full"]).unwrap()
}

fn load(shared: &Path, cfg: &str, format: &str) -> Checkpoint {
    let dir = weights_dir(shared, cfg);
    let path = if format == "model.pth" { dir.join("model.pth") } else { dir.join(format) };
    let hints = PthHints { config: Some(fixture_config(shared, cfg)), ..Default::default() };
    read_checkpoint(&path, &hints).unwrap()
}

fn logits_of(model: &MiniMind, ids: &[u32]) -> Tensor {
    let input = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    model.forward(&input, None, None, Mode::Inference).unwrap().logits.squeeze(0).unwrap()
}

/// The same logits from the CPU inference engine (what generation and serving run), fed in
/// three pieces so the later ones read the KV cache the earlier ones filled.
fn engine_logits_of(model: &MiniMind, ids: &[u32]) -> Tensor {
    let mut cache = KvCache::new(&model.config);
    let (a, b) = (ids.len() / 3, ids.len() * 2 / 3);
    let parts: Vec<Tensor> = [&ids[..a], &ids[a..b], &ids[b..]]
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| model.forward_all_logits(p, &mut cache).unwrap())
        .collect();
    assert_eq!(cache.len(), ids.len());
    Tensor::cat(&parts, 0).unwrap()
}

/// Compares full logits against every per-position summary of a reference sequence.
fn check_sequence(logits: &Tensor, refs: &std::collections::HashMap<String, Tensor>, name: &str, probe: &Tensor) {
    let t = logits.dim(0).unwrap();
    if let Some(full) = refs.get(&format!("{name}.logits")) {
        let d = max_abs_diff(logits, full);
        assert!(d <= LOGIT_TOL, "{name}: full logits differ by {d}");
        eprintln!("{name}: max |Δlogit| full {d:.2e}");
    }
    let last8 = logits.narrow(0, t - 8, 8).unwrap();
    let d = max_abs_diff(&last8, &refs[&format!("{name}.logits_last8")]);
    assert!(d <= LOGIT_TOL, "{name}: last-8 logits differ by {d}");
    eprintln!("{name}: max |Δlogit| last 8 positions {d:.2e}");
    let lse = logits.exp().unwrap().sum(D::Minus1).unwrap().log().unwrap();
    let max = logits.max(D::Minus1).unwrap();
    let lse_ref = &refs[&format!("{name}.lse")];
    let d = max_abs_diff(&(logits.broadcast_sub(&max.unsqueeze(1).unwrap()).unwrap().exp().unwrap().sum(D::Minus1).unwrap().log().unwrap() + &max).unwrap(), lse_ref);
    assert!(d <= LOGIT_TOL, "{name}: logsumexp differs by {d} (naive {})", max_abs_diff(&lse, lse_ref));
    eprintln!("{name}: max |Δlse| {d:.2e}");
    let d = max_abs_diff(&max, &refs[&format!("{name}.max")]);
    assert!(d <= LOGIT_TOL, "{name}: max differs by {d}");
    let argmax: Vec<i64> = logits.argmax(D::Minus1).unwrap().to_dtype(DType::I64).unwrap().to_vec1().unwrap();
    let argmax_ref: Vec<i64> = refs[&format!("{name}.argmax")].to_vec1().unwrap();
    assert_eq!(argmax, argmax_ref, "{name}: argmax differs");
    let probed = logits.index_select(probe, 1).unwrap();
    let d = max_abs_diff(&probed, &refs[&format!("{name}.probe")]);
    assert!(d <= LOGIT_TOL, "{name}: probe columns differ by {d}");
}

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

fn probe_ids(refs: &std::collections::HashMap<String, Tensor>) -> Tensor {
    refs["probe_ids"].to_dtype(DType::U32).unwrap()
}

fn logits_match(cfg: &str, format: &str) {
    let Some(shared) = shared_or_skip("logits_match") else { return };
    let refs = reference(&shared.join(format!("fixtures/minimind2/{cfg}/logits.safetensors")));
    let ckpt = load(&shared, cfg, format);
    let model = MiniMind::from_checkpoint(&ckpt, DType::F32, &Device::Cpu).unwrap();
    let probe = probe_ids(&refs);
    for (name, ids) in sequences(&shared) {
        check_sequence(&logits_of(&model, &ids), &refs, &name, &probe);
        check_sequence(&engine_logits_of(&model, &ids), &refs, &name, &probe);
    }
}

#[test]
fn dense_pth_logits() {
    logits_match("dense", "model.pth");
}

#[test]
fn dense_hf_minimind_logits() {
    logits_match("dense", "hf-minimind");
}

#[test]
fn dense_hf_llama_logits() {
    logits_match("dense", "hf-llama");
}

#[test]
fn moe_pth_logits() {
    logits_match("moe", "model.pth");
}

#[test]
fn moe_hf_minimind_logits() {
    logits_match("moe", "hf-minimind");
}

#[test]
fn rope_tables_match_upstream() {
    let Some(shared) = shared_or_skip("rope_tables_match_upstream") else { return };
    let refs = reference(&shared.join("fixtures/minimind2/dense/logits.safetensors"));
    let mut cfg = fixture_config(&shared, "dense");
    for (key, yarn) in [("rope", false), ("rope_yarn", true)] {
        cfg.set_inference_rope_scaling(yarn);
        let tables = mm::model::rope::RopeTables::with_length(&cfg, 300, &Device::Cpu).unwrap();
        let cos = Tensor::cat(&[&tables.cos, &tables.cos], 1).unwrap();
        let sin = Tensor::cat(&[&tables.sin, &tables.sin], 1).unwrap();
        let dc = max_abs_diff(&cos, &refs[&format!("{key}.freqs_cos")]);
        let ds = max_abs_diff(&sin, &refs[&format!("{key}.freqs_sin")]);
        assert!(dc <= 1e-5 && ds <= 1e-5, "{key}: cos differs by {dc}, sin by {ds}");
    }
}

fn yarn_logits(cfg_name: &str) {
    let Some(shared) = shared_or_skip("yarn_logits") else { return };
    let refs = reference(&shared.join(format!("fixtures/minimind2/{cfg_name}/logits.safetensors")));
    let mut ckpt = load(&shared, cfg_name, "model.pth");
    ckpt.config.set_inference_rope_scaling(true);
    let model = MiniMind::from_checkpoint(&ckpt, DType::F32, &Device::Cpu).unwrap();
    let inputs = read_json(&shared.join("fixtures/minimind2/inputs.json"));
    let ids = ids(&inputs["random300"]["input_ids"]);
    check_sequence(&logits_of(&model, &ids), &refs, "random300_yarn", &probe_ids(&refs));
    check_sequence(&engine_logits_of(&model, &ids), &refs, "random300_yarn", &probe_ids(&refs));
}

#[test]
fn dense_yarn_logits() {
    yarn_logits("dense");
}

#[test]
fn moe_yarn_logits() {
    yarn_logits("moe");
}

fn greedy_generation(cfg: &str) {
    let Some(shared) = shared_or_skip("greedy_generation") else { return };
    let refs = reference(&shared.join(format!("fixtures/minimind2/{cfg}/logits.safetensors")));
    let model = MiniMind::from_checkpoint(&load(&shared, cfg, "hf-minimind"), DType::F32, &Device::Cpu).unwrap();
    let probe = probe_ids(&refs);
    for (name, prompt) in sequences(&shared).into_iter().filter(|(n, _)| n.starts_with("prompt")) {
        // The plain generation loop reproduces upstream's tokens.
        let mut sampler = Sampler::new(SamplingParams::greedy(24)).unwrap();
        let tokens = generate(&model, &prompt, &mut sampler, |_| Ok(true)).unwrap();
        let expected: Vec<i64> = refs[&format!("gen.{name}.tokens")].to_vec1().unwrap();
        assert_eq!(tokens.iter().map(|&t| t as i64).collect::<Vec<_>>(), expected, "{cfg} {name}: tokens");

        // Each cached step's distribution matches upstream's and a full recompute.
        let mut cache = KvCache::new(&model.config);
        let mut worst_cache = 0f32;
        let mut input = prompt.clone();
        let mut all = prompt.clone();
        let step_lse: Vec<f32> = refs[&format!("gen.{name}.step_lse")].to_vec1().unwrap();
        let step_probe = &refs[&format!("gen.{name}.step_probe")];
        for (step, &tok) in tokens.iter().enumerate() {
            let ids = Tensor::new(input.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let cached = model.forward_last(&ids, &mut cache).unwrap().squeeze(0).unwrap();
            let full = logits_of(&model, &all);
            let full_last = full.get(full.dim(0).unwrap() - 1).unwrap();
            let d = max_abs_diff(&cached, &full_last);
            assert!(d <= 1e-5, "{cfg} {name} step {step}: cache vs recompute {d}");
            worst_cache = worst_cache.max(d);
            let max = cached.max(0).unwrap().to_scalar::<f32>().unwrap();
            let lse = (cached.affine(1.0, -max as f64).unwrap().exp().unwrap().sum_all().unwrap().log().unwrap().to_scalar::<f32>().unwrap()) + max;
            assert!((lse - step_lse[step]).abs() <= LOGIT_TOL, "{cfg} {name} step {step}: lse {lse} vs {}", step_lse[step]);
            let probed = cached.index_select(&probe, 0).unwrap();
            let d = max_abs_diff(&probed, &step_probe.get(step).unwrap());
            assert!(d <= LOGIT_TOL, "{cfg} {name} step {step}: probe differs by {d}");
            input = vec![tok];
            all.push(tok);
        }
        eprintln!("{cfg} {name}: 24 greedy tokens equal; KV-cache vs recompute max |Δ| {worst_cache:.2e}");
    }
}

#[test]
fn dense_greedy_generation() {
    greedy_generation("dense");
}

#[test]
fn moe_greedy_generation() {
    greedy_generation("moe");
}

#[test]
fn lora_on_the_fly_and_merged() {
    let Some(shared) = shared_or_skip("lora_on_the_fly_and_merged") else { return };
    let lora_refs = reference(&shared.join("fixtures/minimind2/dense/lora_logits.safetensors"));
    let expected = &lora_refs["prompt0_zh.logits"];
    let lora = Lora::read(&shared.join("fixtures/minimind2/dense/lora.pth")).unwrap();
    assert_eq!(lora.rank, 8);
    assert_eq!(lora.adapters.len(), 4);
    let ckpt = load(&shared, "dense", "model.pth");
    let prompt = sequences(&shared).remove(0).1;

    let mut model = MiniMind::from_checkpoint(&ckpt, DType::F32, &Device::Cpu).unwrap();
    model.attach_lora(&lora).unwrap();
    let d = max_abs_diff(&logits_of(&model, &prompt), expected);
    assert!(d <= LOGIT_TOL, "LoRA on the fly differs by {d}");
    eprintln!("lora on the fly: max |Δlogit| {d:.2e}");

    // Merged weights keep the base's dtype, so merge into f32 weights (an f16 merge rounds W + BA).
    let base = ckpt.to_dtype(DType::F32).unwrap();
    let merged = MiniMind::from_checkpoint(&lora.merge_into(&base).unwrap(), DType::F32, &Device::Cpu).unwrap();
    let d = max_abs_diff(&logits_of(&merged, &prompt), expected);
    assert!(d <= LOGIT_TOL, "merged LoRA differs by {d}");
    eprintln!("lora merged (f32): max |Δlogit| {d:.2e}");
}
