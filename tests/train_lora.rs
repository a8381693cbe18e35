//! LoRA fine-tuning on the dense fixture: upstream's targets and init, frozen base weights,
//! a few AdamW steps, the saved `save_lora` .pth reloaded on the fly and merged by the CLI.

mod common;

use std::process::Command;

use candle_core::{DType, Device, Tensor};
use mm::converters::lora::Lora;
use mm::converters::pth::checkpoint::PthHints;
use mm::converters::read_checkpoint;
use mm::model::{MiniMind, Mode};
use mm::train::lora::{add_lora, lora_file_name, restore_lora_file, save_lora_pth, DEFAULT_NAME};
use mm::train::loss::{masked_mean, per_token_ce};
use mm::train::step::{clip_grad_norm, gradients};
use mm::train::{AdamW, AdamWConfig, TrainableModel};

fn batch(inputs: &serde_json::Value, key: &str) -> Tensor {
    let rows: Vec<Vec<u32>> = inputs["pretrain_batch"][key].as_array().unwrap().iter().map(common::ids).collect();
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).unwrap()
}

fn logits(model: &MiniMind, x: &Tensor) -> Tensor {
    model.forward(x, None, None, Mode::Inference).unwrap().logits
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn mm_cli(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_mm")).args(args).output().unwrap();
    assert!(out.status.success(), "mm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn lora_training_on_the_dense_fixture() {
    let Some(shared) = common::shared_or_skip("lora training") else { return };
    let fixtures = shared.join("fixtures/minimind2");
    let inputs = common::read_json(&fixtures.join("inputs.json"));
    let base_dir = common::weights_dir(&shared, "dense").join("hf-minimind");
    let ckpt = read_checkpoint(&base_dir, &PthHints::default()).unwrap();
    let mut m = TrainableModel::from_checkpoint(&ckpt, &Device::Cpu).unwrap();
    let (x, y, mask) = (batch(&inputs, "X"), batch(&inputs, "Y"), batch(&inputs, "loss_mask"));
    let before = logits(&m.model, &x);

    // Upstream apply_lora: square linears only (q_proj, o_proj; k/v have 2 of 4 heads).
    add_lora(&mut m, 8, 42).unwrap();
    let modules: Vec<&str> = m.lora.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        modules,
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.o_proj",
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.self_attn.o_proj"
        ]
    );
    let mut a_init = Vec::new();
    for (_, a, b) in &m.lora {
        assert_eq!(a.dims(), [8, 256]);
        assert_eq!(b.dims(), [256, 8]);
        assert!(values(b.as_tensor()).iter().all(|&v| v == 0.0), "B starts at zero");
        a_init.extend(values(a.as_tensor()));
    }
    let n = a_init.len() as f64;
    let mean = a_init.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (a_init.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    println!("A init: {} values, mean {mean:.2e}, std {std:.5}", a_init.len());
    assert!(mean.abs() < 2e-3 && (std - 0.02).abs() < 1e-3, "A ~ N(0, 0.02): mean {mean}, std {std}");
    assert_eq!(m.trainable.len(), 8);
    assert_eq!(m.trainable[0].0, "model.layers.0.self_attn.q_proj.lora.A.weight");
    assert_eq!(m.trainable[1].0, "model.layers.0.self_attn.q_proj.lora.B.weight");
    let d = common::max_abs_diff(&logits(&m.model, &x), &before);
    assert_eq!(d, 0.0, "a fresh adapter (B = 0) changes the logits by {d}");

    // A few steps on the fixture pretrain batch.
    let base_before: Vec<(String, Vec<f32>)> =
        m.params.iter().map(|(n, v)| (n.clone(), values(v.as_tensor()))).collect();
    let lora_before: Vec<Vec<f32>> = m.trainable.iter().map(|(_, v)| values(v.as_tensor())).collect();
    let mut opt = AdamW::new(AdamWConfig::default(), m.trainable_vars().into_iter()).unwrap();
    let mut losses = Vec::new();
    for _ in 0..8 {
        let out = m.model.forward(&x, None, None, Mode::Training).unwrap();
        let loss = masked_mean(&per_token_ce(&out.logits, &y).unwrap(), &mask).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        let vars = m.trainable_vars();
        let mut grads = gradients(&loss, &vars).unwrap();
        assert!(grads.iter().all(Option::is_some), "every LoRA weight gets a gradient");
        clip_grad_norm(&mut grads, 1.0).unwrap();
        opt.step(&vars, &grads, 1e-3).unwrap();
    }
    let out = m.model.forward(&x, None, None, Mode::Training).unwrap();
    losses.push(masked_mean(&per_token_ce(&out.logits, &y).unwrap(), &mask).unwrap().to_scalar::<f32>().unwrap());
    println!("losses over 8 LoRA steps (lr 1e-3): {losses:?}");
    assert!(losses.last().unwrap() < &(losses[0] - 0.01), "loss did not decrease: {losses:?}");
    for ((name, want), (_, v)) in base_before.iter().zip(&m.params) {
        assert!(values(v.as_tensor()) == *want, "base weight {name} changed");
    }
    for ((name, v), old) in m.trainable.iter().zip(&lora_before) {
        let new = values(v.as_tensor());
        let moved = new.iter().zip(old).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(moved > 0.0, "{name} did not move");
    }
    let trained = logits(&m.model, &x);
    println!("trained vs base logits: max |Δ| {:.3e}", common::max_abs_diff(&trained, &before));

    // Saved as upstream's save_lora .pth, reloaded on the fly.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(lora_file_name(DEFAULT_NAME, &m.config));
    assert!(path.ends_with("lora_identity_256.pth"));
    save_lora_pth(&m, &path).unwrap();
    let lora = Lora::read(&path).unwrap();
    assert_eq!((lora.rank, lora.adapters.len()), (8, 4));
    for (ad, (module, a, b)) in lora.adapters.iter().zip(&m.lora) {
        assert_eq!(&ad.module, module);
        assert_eq!(ad.a.dtype(), DType::F32);
        assert!(values(&ad.a) == values(a.as_tensor()) && values(&ad.b) == values(b.as_tensor()));
    }
    let mut reloaded = MiniMind::from_checkpoint(&ckpt, DType::F32, &Device::Cpu).unwrap();
    reloaded.attach_lora(&lora).unwrap();
    let d = common::max_abs_diff(&logits(&reloaded, &x), &trained);
    println!("saved LoRA on the fly vs training model: max |Δlogit| {d:.3e}");
    assert!(d <= 1e-5, "reloaded LoRA differs by {d}");

    // restore_lora (resume) onto a fresh trainable model.
    let mut resumed = TrainableModel::from_checkpoint(&ckpt, &Device::Cpu).unwrap();
    let mut shuffled = lora.clone();
    shuffled.adapters.reverse();
    restore_lora_file(&mut resumed, &shuffled).unwrap();
    let names = |t: &[(String, candle_core::Var)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&resumed.trainable), names(&m.trainable), "restored in upstream's order");
    let d = common::max_abs_diff(&logits(&resumed.model, &x), &trained);
    assert!(d <= 1e-5, "restored LoRA differs by {d}");

    // `mm lora merge`, to HF (f32) and to .pth by extension.
    let merged_hf = dir.path().join("merged-hf");
    mm_cli(&[
        "lora",
        "merge",
        base_dir.to_str().unwrap(),
        path.to_str().unwrap(),
        "-o",
        merged_hf.to_str().unwrap(),
        "--to",
        "hf",
        "--dtype",
        "f32",
    ]);
    let merged = read_checkpoint(&merged_hf, &PthHints::default()).unwrap();
    let merged = MiniMind::from_checkpoint(&merged, DType::F32, &Device::Cpu).unwrap();
    let d = common::max_abs_diff(&logits(&merged, &x), &trained);
    println!("`mm lora merge` (hf, f32) vs training model: max |Δlogit| {d:.3e}");
    assert!(d <= 1e-4, "merged LoRA differs by {d}");
    let merged_pth = dir.path().join("merged.pth");
    mm_cli(&[
        "lora",
        "merge",
        base_dir.to_str().unwrap(),
        path.to_str().unwrap(),
        "-o",
        merged_pth.to_str().unwrap(),
        "--dtype",
        "f32",
    ]);
    let merged = read_checkpoint(&merged_pth, &PthHints::default()).unwrap();
    let merged = MiniMind::from_checkpoint(&merged, DType::F32, &Device::Cpu).unwrap();
    let d_pth = common::max_abs_diff(&logits(&merged, &x), &trained);
    println!("`mm lora merge` (.pth) vs training model: max |Δlogit| {d_pth:.3e}");
    assert!(d_pth <= 1e-4, "merged .pth differs by {d_pth}");
}

/// Upstream's own adapter (fixture `lora.pth`) restored into a trainable model reproduces
/// upstream's LoRA logits.
#[test]
fn restored_fixture_lora_matches_pytorch() {
    let Some(shared) = common::shared_or_skip("restored fixture lora") else { return };
    let fixtures = shared.join("fixtures/minimind2");
    let inputs = common::read_json(&fixtures.join("inputs.json"));
    let prompt = common::ids(&inputs["prompts"][0]["input_ids"]);
    assert_eq!(inputs["prompts"][0]["name"], "prompt0_zh");
    let expected = &common::reference(&fixtures.join("dense/lora_logits.safetensors"))["prompt0_zh.logits"];
    let ckpt =
        read_checkpoint(&common::weights_dir(&shared, "dense").join("hf-minimind"), &PthHints::default()).unwrap();
    let mut m = TrainableModel::from_checkpoint(&ckpt, &Device::Cpu).unwrap();
    restore_lora_file(&mut m, &Lora::read(&fixtures.join("dense/lora.pth")).unwrap()).unwrap();
    let x = Tensor::from_vec(prompt.clone(), (1, prompt.len()), &Device::Cpu).unwrap();
    let got = logits(&m.model, &x).squeeze(0).unwrap();
    let d = common::max_abs_diff(&got, expected);
    println!("restored fixture LoRA vs PyTorch: max |Δlogit| {d:.2e}");
    assert!(d <= 1e-4, "differs by {d}");
}
