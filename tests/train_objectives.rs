//! The DPO, distillation and reasoning-SFT objectives against upstream's formulas: DPO against
//! the PyTorch fixture (`shared/fixtures/minimind2/dense/{expected.json → dpo, dpo.safetensors}`),
//! distillation and reasoning SFT against plain f64 re-computations on tiny random models.

mod common;

use candle_core::{DType, Device, Tensor, D};
use mm::converters::pth::checkpoint::PthHints;
use mm::converters::{read_checkpoint, MiniMindConfig, TokenizerFiles};
use mm::model::{MiniMind, Mode};
use mm::train::distill::Distillation;
use mm::train::dpo::{dpo_loss, logits_to_log_probs, Dpo};
use mm::train::encoder::chat_encoder;
use mm::train::objective::Objective;
use mm::train::reason::{weighted_mask, ReasonSft, TAGS, TAG_WEIGHT};
use mm::train::step::{clip_grad_norm, gradients};
use mm::train::TrainableModel;
use mm_dataset::{DpoBatch, LmBatch, TextEncoder};

fn lm_batch(x: Vec<u32>, y: Vec<u32>, mask: Vec<f32>, rows: usize) -> LmBatch {
    let seq_len = x.len() / rows;
    LmBatch { rows, seq_len, x, y, loss_mask: mask, lines: (0..rows as u64).collect() }
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

// ---------------------------------------------------------------------------------------------
// DPO

#[test]
fn dpo_matches_pytorch() {
    let Some(shared) = common::shared_or_skip("DPO parity") else { return };
    let fixtures = shared.join("fixtures/minimind2");
    let pair = &common::read_json(&fixtures.join("inputs.json"))["dpo_pair"];
    let want = &common::read_json(&fixtures.join("dense/expected.json"))["dpo"];
    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    let side = |s: &str| {
        let mask: Vec<f32> = common::ids(&pair[format!("mask_{s}")]).into_iter().map(|m| m as f32).collect();
        lm_batch(common::ids(&pair[format!("x_{s}")]), common::ids(&pair[format!("y_{s}")]), mask, 1)
    };
    let batch = DpoBatch { chosen: side("chosen"), rejected: side("rejected") };
    let cpu = Device::Cpu;

    let reference_ckpt = read_checkpoint(&common::weights_dir(&shared, "dense").join("hf-minimind"), &PthHints::default()).unwrap();
    let step1: Vec<(String, Tensor)> = common::reference(&fixtures.join("dense/train_step1.safetensors")).into_iter().collect();
    let policy = TrainableModel::from_checkpoint(&reference_ckpt.with_tensors(step1).unwrap(), &cpu).unwrap();
    let reference = MiniMind::from_checkpoint(&reference_ckpt, DType::F32, &cpu).unwrap();

    // Per-token log-probs.
    let cat = batch.concatenated();
    let (x, y, mask) = mm::train::objective::batch_tensors(&cat, &cpu).unwrap();
    let fixture = common::reference(&fixtures.join("dense/dpo.safetensors"));
    assert_eq!(f32s(&mask), f32s(&fixture["mask"]), "mask");
    let ref_lp = logits_to_log_probs(&reference.forward(&x, None, None, Mode::Inference).unwrap().logits, &y).unwrap();
    let pol_lp = logits_to_log_probs(&policy.model.forward(&x, None, None, Mode::Training).unwrap().logits, &y).unwrap();
    let d_ref = common::max_abs_diff(&ref_lp, &fixture["ref_log_probs"]);
    let d_pol = common::max_abs_diff(&pol_lp, &fixture["policy_log_probs"]);
    println!("per-token log-probs: ref max |Δ| {d_ref:.3e}, policy max |Δ| {d_pol:.3e}");
    assert!(d_ref < 2e-5 && d_pol < 2e-5, "per-token log-probs");

    // dpo_loss and its pieces.
    let d = dpo_loss(&ref_lp, &pol_lp, &mask, 0.1).unwrap();
    let got_ref = f32s(&d.ref_seq);
    let got_pol = f32s(&d.policy_seq);
    for i in 0..2 {
        let (wr, wp) = (f(&want["ref_seq_logp_mean"][i]), f(&want["policy_seq_logp_mean"][i]));
        println!("seq {i}: ref mean {:.7} (torch {wr:.7}), policy mean {:.7} (torch {wp:.7})", got_ref[i], got_pol[i]);
        assert!((got_ref[i] as f64 - wr).abs() < 1e-5 && (got_pol[i] as f64 - wp).abs() < 1e-5, "sequence means");
    }
    let (pi, rf, lg) = (scalar(&d.pi_logratios.squeeze(0).unwrap()), scalar(&d.ref_logratios.squeeze(0).unwrap()), scalar(&d.logits.squeeze(0).unwrap()));
    println!(
        "pi_logratios {pi:.7} (torch {:.7}), ref_logratios {rf:.7} (torch {:.7}), logits {lg:.7e} (torch {:.7e})",
        f(&want["pi_logratios"]),
        f(&want["ref_logratios"]),
        f(&want["logits"])
    );
    assert!((pi - f(&want["pi_logratios"])).abs() < 1e-5 && (rf - f(&want["ref_logratios"])).abs() < 1e-5);
    assert!((lg - f(&want["logits"])).abs() < 1e-5, "logits");
    let loss = scalar(&d.loss);
    println!("loss {loss:.9} (torch {:.9}), |Δ| {:.2e}", f(&want["loss"]), (loss - f(&want["loss"])).abs());
    assert!((loss - f(&want["loss"])).abs() <= 1e-5, "DPO loss");

    // The objective end to end, and the policy gradient norm of its loss.
    let mut objective = Dpo::new(reference, 0.1);
    let parts = objective.loss(&policy.model, &batch, &cpu).unwrap();
    let obj_loss = scalar(&parts.loss);
    println!("objective loss {obj_loss:.9}, logged {:?}, tokens {}", parts.logged, objective.tokens(&batch));
    assert!((obj_loss - loss).abs() < 1e-7, "objective loss vs dpo_loss");
    assert_eq!(objective.tokens(&batch), 32);
    let mut grads = gradients(&parts.loss, &policy.trainable_vars()).unwrap();
    let norm = clip_grad_norm(&mut grads, f64::MAX).unwrap();
    let want_norm = f(&want["policy_grad_norm"]);
    println!("policy grad norm {norm:.7} (torch {want_norm:.7}), relative {:.2e}", (norm - want_norm).abs() / want_norm);
    assert!((norm - want_norm).abs() / want_norm < 1e-4, "policy grad norm");
}

// ---------------------------------------------------------------------------------------------
// Distillation

fn tiny(hidden: usize, layers: usize) -> MiniMindConfig {
    MiniMindConfig { num_attention_heads: 4, ..MiniMindConfig::with_hidden(hidden, layers) }
}

fn model(cfg: &MiniMindConfig, seed: u64) -> MiniMind {
    let ckpt = mm::model::init::random_checkpoint(cfg, seed, TokenizerFiles::builtin_minimind2()).unwrap();
    MiniMind::from_checkpoint(&ckpt, DType::F32, &Device::Cpu).unwrap()
}

/// Two rows of 12: a masked answer span per row, one masked target that is 0 (upstream's
/// `ignore_index=0` drops it from the CE but not from the KL rows).
fn distill_batch() -> LmBatch {
    let t = 12;
    let x: Vec<u32> = (0..2 * t as u32).map(|i| 3 + (i * 977 + 13) % 6000).collect();
    let mut y: Vec<u32> = (0..2 * t as u32).map(|i| 3 + (i * 1531 + 7) % 6000).collect();
    let mut mask = vec![0f32; 2 * t];
    mask[4..11].fill(1.0);
    mask[t + 2..t + 9].fill(1.0);
    y[t + 5] = 0;
    y[t + 11] = 0; // unmasked padding
    lm_batch(x, y, mask, 2)
}

fn log_softmax_f64(row: &[f32], temperature: f64) -> Vec<f64> {
    let z: Vec<f64> = row.iter().map(|&v| v as f64 / temperature).collect();
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    z.iter().map(|v| v - lse).collect()
}

/// Upstream's total distillation loss from the logits, in f64 loops.
fn distill_reference(student: &[f32], teacher: &[f32], teacher_vocab: usize, batch: &LmBatch, v: usize, alpha: f64, temp: f64) -> (f64, f64, f64) {
    let n = batch.y.len();
    let (mut ce_sum, mut mask_sum, mut kl_sum, mut rows) = (0f64, 0f64, 0f64, 0usize);
    for i in 0..n {
        let s = &student[i * v..(i + 1) * v];
        let m = batch.loss_mask[i] as f64;
        mask_sum += m;
        if batch.y[i] != 0 {
            ce_sum += -log_softmax_f64(s, 1.0)[batch.y[i] as usize] * m;
        }
        if batch.loss_mask[i] == 1.0 {
            rows += 1;
            let tl = log_softmax_f64(&teacher[i * teacher_vocab..i * teacher_vocab + v], temp);
            let sl = log_softmax_f64(s, temp);
            kl_sum += tl.iter().zip(&sl).map(|(t, s)| t.exp() * (t - s)).sum::<f64>();
        }
    }
    let ce = ce_sum / mask_sum;
    let kl = temp * temp * kl_sum / rows as f64;
    (alpha * ce + (1.0 - alpha) * kl, ce, kl)
}

fn logits_of(m: &MiniMind, batch: &LmBatch) -> Vec<f32> {
    let x = Tensor::from_slice(&batch.x, (batch.rows, batch.seq_len), &Device::Cpu).unwrap();
    f32s(&m.forward(&x, None, None, Mode::Inference).unwrap().logits)
}

fn logged(parts: &[(&'static str, Tensor)], key: &str) -> f64 {
    scalar(&parts.iter().find(|(k, _)| *k == key).unwrap().1)
}

#[test]
fn distillation_with_itself_as_teacher_is_the_weighted_ce() {
    let cfg = tiny(64, 1);
    let batch = distill_batch();
    let mut objective = Distillation::new(model(&cfg, 0), 0.5, 1.5);
    let student = model(&cfg, 0);
    let parts = objective.loss(&student, &batch, &Device::Cpu).unwrap();
    let (loss, ce, kl) = (scalar(&parts.loss), logged(&parts.logged, "ce"), logged(&parts.logged, "distill"));
    let logits = logits_of(&student, &batch);
    let (_, want_ce, _) = distill_reference(&logits, &logits, cfg.vocab_size, &batch, cfg.vocab_size, 0.5, 1.5);
    println!("teacher = student: loss {loss:.8}, ce {ce:.8} (f64 {want_ce:.8}), distill {kl:.3e}");
    assert!(kl.abs() < 1e-6, "KL of a model with itself");
    assert!((loss - 0.5 * ce).abs() < 1e-6);
    assert!((ce - want_ce).abs() < 1e-5 * want_ce);
}

#[test]
fn distillation_matches_upstream_formula() {
    let student_cfg = tiny(64, 1);
    // A bigger teacher with a larger vocabulary: upstream cuts its logits to the student's.
    let teacher_cfg = MiniMindConfig { vocab_size: student_cfg.vocab_size + 64, ..tiny(96, 2) };
    let batch = distill_batch();
    let (student, teacher) = (model(&student_cfg, 0), model(&teacher_cfg, 1));
    let (s_logits, t_logits) = (logits_of(&student, &batch), logits_of(&teacher, &batch));
    for (alpha, temp) in [(0.5, 1.5), (0.2, 1.0), (0.0, 2.0)] {
        let mut objective = Distillation::new(teacher.clone(), alpha, temp);
        let parts = objective.loss(&student, &batch, &Device::Cpu).unwrap();
        let loss = scalar(&parts.loss);
        let (want, want_ce, want_kl) =
            distill_reference(&s_logits, &t_logits, teacher_cfg.vocab_size, &batch, student_cfg.vocab_size, alpha, temp);
        let (ce, kl) = (logged(&parts.logged, "ce"), logged(&parts.logged, "distill"));
        println!(
            "alpha {alpha} T {temp}: loss {loss:.8} (f64 {want:.8}, rel {:.1e}), ce {ce:.8} (f64 {want_ce:.8}), distill {kl:.8} (f64 {want_kl:.8})",
            (loss - want).abs() / want
        );
        assert!((loss - want).abs() < 1e-5 * want, "total loss");
        assert!((ce - want_ce).abs() < 1e-5 * want_ce && (kl - want_kl).abs() < 1e-5 * want_kl, "parts");
    }
    // The gradient reaches the student only.
    let vars = TrainableModel::from_checkpoint(
        &mm::model::init::random_checkpoint(&student_cfg, 0, TokenizerFiles::builtin_minimind2()).unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    let parts = Distillation::new(teacher, 0.5, 1.5).loss(&vars.model, &batch, &Device::Cpu).unwrap();
    let mut grads = gradients(&parts.loss, &vars.trainable_vars()).unwrap();
    assert!(grads.iter().all(Option::is_some));
    println!("student grad norm {:.6}", clip_grad_norm(&mut grads, f64::MAX).unwrap());
}

// ---------------------------------------------------------------------------------------------
// Reasoning SFT

#[test]
fn reason_weights_tag_targets_tenfold() {
    let encoder = chat_encoder(&TokenizerFiles::builtin_minimind2()).unwrap();
    let objective = ReasonSft::new(&encoder).unwrap();
    for tag in TAGS {
        let ids = encoder.encode(tag, true).unwrap();
        let pieces: Vec<String> = ids.iter().map(|&i| encoder.tokenizer.decode(&[i], false).unwrap()).collect();
        println!("{tag:>10} -> {ids:?} {pieces:?}");
        assert!(ids.iter().all(|i| objective.tag_ids.contains(i)));
    }
    println!("tag ids {:?}", objective.tag_ids);

    // A reasoning answer: the prompt part unmasked, the answer masked; one tag piece also
    // sits in the unmasked prompt, where upstream still sets the weight to 10.
    let ids = encoder.encode("a<b\n<think>\nso\n</think>\n<answer>\nok\n</answer>", false).unwrap();
    let (x, y) = (ids[..ids.len() - 1].to_vec(), ids[1..].to_vec());
    let prompt = 3;
    let mask: Vec<f32> = (0..y.len()).map(|i| if i >= prompt { 1.0 } else { 0.0 }).collect();
    let (weights, denominator) = weighted_mask(&y, &mask, &objective.tag_ids, TAG_WEIGHT);
    println!("y {y:?}\nweights {weights:?}, denominator {denominator}");
    assert_eq!(denominator, mask.iter().sum::<f32>());
    for i in 0..y.len() {
        let want = if objective.tag_ids.contains(&y[i]) { 10.0 } else { mask[i] };
        assert_eq!(weights[i], want, "position {i}");
    }
    assert!(weights.iter().filter(|&&w| w == 10.0).count() >= 4, "the tags are weighted");
    assert!(weights[..prompt].contains(&10.0), "a tag piece in the unmasked prompt is weighted too");

    // The loss: Σ ce·w / Σ mask on a tiny random model, against f64 loops.
    let cfg = tiny(64, 1);
    let m = model(&cfg, 5);
    let batch = lm_batch(x, y.clone(), mask.clone(), 1);
    let mut objective = objective;
    let parts = objective.loss(&m, &batch, &Device::Cpu).unwrap();
    let logits = logits_of(&m, &batch);
    let v = cfg.vocab_size;
    let num: f64 = (0..y.len()).map(|i| -log_softmax_f64(&logits[i * v..(i + 1) * v], 1.0)[y[i] as usize] * weights[i] as f64).sum();
    let want = num / denominator as f64;
    let plain: f64 = (0..y.len()).map(|i| -log_softmax_f64(&logits[i * v..(i + 1) * v], 1.0)[y[i] as usize] * mask[i] as f64).sum::<f64>()
        / denominator as f64;
    let loss = scalar(&parts.loss);
    println!("reason loss {loss:.8} (f64 {want:.8}); unweighted SFT loss would be {plain:.8}");
    assert!((loss - want).abs() < 1e-5 * want);

    // Tensor-level check of the same weighting through candle ops.
    let shape = (1, y.len());
    let yt = Tensor::from_slice(&y, shape, &Device::Cpu).unwrap();
    let lt = Tensor::from_vec(logits, (1, y.len(), v), &Device::Cpu).unwrap();
    let ce = mm::train::loss::per_token_ce(&lt, &yt).unwrap();
    let w = Tensor::from_vec(weights, shape, &Device::Cpu).unwrap();
    let again = scalar(&((ce * w).unwrap().sum(D::Minus1).unwrap().squeeze(0).unwrap() / denominator as f64).unwrap());
    assert!((again - loss).abs() < 1e-6);
}
