//! White-box knowledge distillation as upstream `trainer/train_distillation.py` computes it:
//!
//! * `ce`: cross-entropy of the student with `ignore_index=0` (targets equal to 0 count 0),
//!   `(ce · mask).sum() / mask.sum()`, plus the student's MoE aux loss when it has one;
//! * `distill`: `distillation_loss` on the rows where `mask == 1` only:
//!   `T² · kl_div(log_softmax(student/T), softmax(teacher/T), reduction='batchmean')`, i.e.
//!   `T² · Σ p_t (log p_t − log p_s) / rows`, the teacher (eval mode, no grad) cut to the
//!   student's vocabulary (`teacher_logits[..., :vocab_student]`);
//! * `loss = alpha · ce + (1 − alpha) · distill` (upstream defaults: alpha 0.5, T 1.5).

use anyhow::{bail, ensure, Result};
use candle_core::{DType, Device, Tensor, D};
use mm_dataset::LmBatch;

use mm_model::model::{MiniMind, Mode};
use crate::loss::{kl_div_batchmean, per_token_ce};
use crate::objective::{batch_tensors, LossParts, Objective};

/// Upstream `distillation_loss(student_logits, teacher_logits, temperature)` on rows [n, v].
pub fn distillation_loss(student_logits: &Tensor, teacher_logits: &Tensor, temperature: f64) -> Result<Tensor> {
    let teacher = candle_nn::ops::log_softmax(&(teacher_logits.to_dtype(DType::F32)? / temperature)?, D::Minus1)?.detach();
    let student = candle_nn::ops::log_softmax(&(student_logits.to_dtype(DType::F32)? / temperature)?, D::Minus1)?;
    Ok((kl_div_batchmean(&student, &teacher)? * (temperature * temperature))?)
}

pub struct Distillation {
    pub teacher: MiniMind,
    /// Weight of the CE term (`--alpha`); the KL term gets `1 − alpha`.
    pub alpha: f64,
    pub temperature: f64,
}

impl Distillation {
    pub fn new(teacher: MiniMind, alpha: f64, temperature: f64) -> Self {
        Self { teacher, alpha, temperature }
    }
}

impl Objective for Distillation {
    type Batch = LmBatch;

    fn loss(&mut self, model: &MiniMind, batch: &LmBatch, device: &Device) -> Result<LossParts> {
        let (x, y, mask) = batch_tensors(batch, device)?;
        let out = model.forward(&x, None, None, Mode::Training)?;
        let student = out.logits.to_dtype(DType::F32)?;
        let v = student.dim(D::Minus1)?;
        let teacher = self.teacher.forward(&x, None, None, Mode::Inference)?.logits.detach();
        let tv = teacher.dim(D::Minus1)?;
        ensure!(tv >= v, "the teacher's vocabulary ({tv}) is smaller than the student's ({v})");
        let teacher = teacher.narrow(D::Minus1, 0, v)?;

        // 1) CE with ignore_index=0, masked mean, plus the aux loss (MoE students).
        let kept = y.ne(0u32)?.to_dtype(DType::F32)?;
        let ce_tok = (per_token_ce(&student, &y)? * kept)?;
        let mut ce = (ce_tok * &mask)?.sum_all()?.div(&mask.sum_all()?)?;
        let mut logged = Vec::new();
        if let Some(aux) = out.aux_loss {
            logged.push(("aux", aux.detach()));
            ce = ce.add(&aux.to_dtype(DType::F32)?)?;
        }

        // 2) KL on the rows whose mask is exactly 1.
        let rows: Vec<u32> = (0..batch.loss_mask.len() as u32).filter(|&i| batch.loss_mask[i as usize] == 1.0).collect();
        if rows.is_empty() {
            bail!("a distillation batch without loss-mask tokens (upstream's loss is NaN there)");
        }
        let rows = Tensor::new(rows.as_slice(), device)?;
        let pick = |t: &Tensor| -> Result<Tensor> { Ok(t.reshape(((), v))?.index_select(&rows, 0)?) };
        let distill = distillation_loss(&pick(&student)?, &pick(&teacher)?, self.temperature)?;

        let loss = ((&ce * self.alpha)? + (&distill * (1.0 - self.alpha))?)?;
        logged.insert(0, ("ce", ce.detach()));
        logged.insert(1, ("distill", distill.detach()));
        Ok(LossParts { loss, logged })
    }

    fn tokens(&self, batch: &LmBatch) -> usize {
        batch.loss_mask.iter().filter(|&&m| m > 0.0).count()
    }
}
