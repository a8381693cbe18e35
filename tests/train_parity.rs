//! One AdamW step on the fixture pretrain batch, against upstream PyTorch
//! (`shared/fixtures/minimind2/<cfg>/expected.json` → `train`, `train_step1*.safetensors`).

mod common;

use candle_core::{DType, Device, Tensor};
use mm::converters::pth::checkpoint::PthHints;
use mm::converters::read_checkpoint;
use mm::model::Mode;
use mm::train::loss::{masked_mean, per_token_ce};
use mm::train::step::{clip_grad_norm, gradients};
use mm::train::{AdamW, AdamWConfig, TrainableModel};

fn batch(inputs: &serde_json::Value, key: &str) -> Tensor {
    let rows: Vec<Vec<u32>> = inputs["pretrain_batch"][key].as_array().unwrap().iter().map(common::ids).collect();
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).unwrap()
}

struct StepResult {
    loss: f64,
    ce: f64,
    aux: f64,
    grad_norm: f64,
}

fn forward_backward(m: &TrainableModel, x: &Tensor, y: &Tensor, mask: &Tensor) -> (StepResult, Vec<Option<Tensor>>) {
    let out = m.model.forward(x, None, None, Mode::Training).unwrap();
    let ce = masked_mean(&per_token_ce(&out.logits, y).unwrap(), mask).unwrap();
    let aux = match out.aux_loss {
        Some(a) => a,
        None => Tensor::new(0f32, &Device::Cpu).unwrap(),
    };
    let loss = (&ce + &aux).unwrap();
    let vars: Vec<_> = m.trainable_vars();
    let mut grads = gradients(&loss, &vars).unwrap();
    let grad_norm = clip_grad_norm(&mut grads, 1.0).unwrap();
    let scalar = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    (StepResult { loss: scalar(&loss), ce: scalar(&ce), aux: scalar(&aux), grad_norm }, grads)
}

fn check(cfg: &str, post_step_file: &str) {
    let Some(shared) = common::shared_or_skip(&format!("train step parity ({cfg})")) else { return };
    let fixtures = shared.join("fixtures/minimind2");
    let inputs = common::read_json(&fixtures.join("inputs.json"));
    let expected = common::read_json(&fixtures.join(cfg).join("expected.json"));
    let train = &expected["train"];
    let ckpt = read_checkpoint(&common::weights_dir(&shared, cfg).join("hf-minimind"), &PthHints::default()).unwrap();
    let m = TrainableModel::from_checkpoint(&ckpt, &Device::Cpu).unwrap();
    let (x, y, mask) = (batch(&inputs, "X"), batch(&inputs, "Y"), batch(&inputs, "loss_mask"));

    let (s1, grads) = forward_backward(&m, &x, &y, &mask);
    let e1 = &train["step1"];
    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    println!(
        "{cfg} step 1: loss {:.7} (torch {:.7}), ce {:.7}, aux {:.7} (torch {:.7}), grad norm {:.7} (torch {:.7})",
        s1.loss, f(&e1["loss"]), s1.ce, s1.aux, f(&e1["aux_loss"]), s1.grad_norm, f(&e1["grad_norm_before_clip"])
    );
    assert!((s1.loss - f(&e1["loss"])).abs() < 1e-5, "step 1 loss");
    assert!((s1.aux - f(&e1["aux_loss"])).abs() < 1e-5, "step 1 aux loss");
    // Per-tensor gradient norms (unclipped). The tied embedding is the one tensor off by ~1e-4
    // relative; the fixture's own total (5.241964) is not the root-sum-square of its own
    // per-tensor norms (5.242582) either, so its embedding figure is checked loosely.
    let coef = s1.grad_norm + 1e-6;
    let want_norms = &e1["per_param_grad_norm_before_clip"];
    let (mut worst_rel, mut sum_sq_torch) = (0f64, 0f64);
    for ((name, _), g) in m.params.iter().zip(&grads) {
        let got = g.as_ref().map(|g| g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64).unwrap_or(0.0).sqrt() * coef.max(1.0);
        let want = f(&want_norms[name]);
        sum_sq_torch += want * want;
        let rel = (got - want).abs() / want;
        let bound = if name == "model.embed_tokens.weight" { 2e-4 } else if cfg == "moe" { 2e-5 } else { 1e-6 };
        assert!(rel < bound, "{name}: grad norm {got} vs torch {want} (rel {rel:.2e})");
        if name != "model.embed_tokens.weight" {
            worst_rel = worst_rel.max(rel);
        }
    }
    println!(
        "{cfg} step 1: per-tensor grad norms within {worst_rel:.1e} relative (embedding excepted); torch total {:.7} vs root-sum-square of torch's per-tensor norms {:.7}",
        f(&e1["grad_norm_before_clip"]),
        sum_sq_torch.sqrt()
    );
    assert!((s1.grad_norm - f(&e1["grad_norm_before_clip"])).abs() / f(&e1["grad_norm_before_clip"]) < 2e-4, "step 1 grad norm");

    let mut opt = AdamW::new(AdamWConfig::default(), m.trainable_vars().into_iter()).unwrap();
    let vars: Vec<_> = m.trainable_vars();
    opt.step(&vars, &grads, 5e-4).unwrap();

    // Post-step weights: ≤ 1e-5 for 99.99 % of elements, ≤ 2·lr for all (fixture README).
    let reference = common::reference(&fixtures.join(cfg).join(post_step_file));
    let (mut total, mut close, mut worst) = (0usize, 0usize, 0f32);
    for (name, want) in &reference {
        let got = m.params.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no parameter {name}")).1.as_tensor();
        let diff: Vec<f32> = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        total += diff.len();
        close += diff.iter().filter(|&&d| d <= 1e-5).count();
        worst = diff.iter().fold(worst, |a, &b| a.max(b));
    }
    println!("{cfg} post-step weights: {close}/{total} elements within 1e-5, max |Δ| {worst:.3e} over {} tensors", reference.len());
    // The README's 99.99 % is for dense; MoE experts and their gradients pass through upstream's
    // fp16 buffer, where the README asks for looser bounds.
    let share = if cfg == "moe" { 0.999 } else { 0.9999 };
    assert!(close as f64 >= share * total as f64, "too many post-step elements off");
    assert!(worst <= 2.0 * 5e-4, "an element moved more than 2·lr away");

    let (s2, _) = forward_backward(&m, &x, &y, &mask);
    let e2 = &train["step2"];
    println!(
        "{cfg} step 2: loss {:.7} (torch {:.7}), aux {:.7} (torch {:.7}), grad norm {:.7} (torch {:.7})",
        s2.loss, f(&e2["loss"]), s2.aux, f(&e2["aux_loss"]), s2.grad_norm, f(&e2["grad_norm_before_clip"])
    );
    assert!((s2.loss - f(&e2["loss"])).abs() < 1e-4, "step 2 loss");
    assert!((s2.grad_norm - f(&e2["grad_norm_before_clip"])).abs() / f(&e2["grad_norm_before_clip"]) < 2e-4, "step 2 grad norm");
}

#[test]
fn dense_step_matches_pytorch() {
    check("dense", "train_step1.safetensors");
}

#[test]
fn moe_step_matches_pytorch() {
    check("moe", "train_step1_partial.safetensors");
}
