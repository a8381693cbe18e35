//! DPO as upstream `trainer/train_dpo.py` trains it: a frozen reference model (the same
//! starting weights, eval mode, no grad) scores `cat([chosen, rejected])` beside the policy,
//! and the loss is `dpo_loss` on the per-token log-probs. No MoE aux loss is added.

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, D};
use mm_dataset::DpoBatch;

use mm_model::model::{MiniMind, Mode};
use crate::loss::{log_sigmoid, token_log_probs};
use crate::objective::{batch_tensors, LossParts, Objective};

/// Upstream `logits_to_log_probs`: log_softmax over the vocabulary, gathered at `labels`.
pub fn logits_to_log_probs(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(token_log_probs(logits, labels)?)
}

/// Per-row masked mean `(lp · mask).sum(1) / mask.sum(1).clamp_min(1e-8)`, shape [rows].
pub fn sequence_log_probs(log_probs: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?;
    let lengths = mask.sum(D::Minus1)?.maximum(1e-8f64)?;
    Ok((log_probs * &mask)?.sum(D::Minus1)?.div(&lengths)?)
}

/// `dpo_loss` and the intermediate figures it computes.
pub struct DpoLoss {
    /// `-logsigmoid(beta · logits).mean()`.
    pub loss: Tensor,
    /// Per-sequence masked means, [2b] (chosen rows first).
    pub ref_seq: Tensor,
    pub policy_seq: Tensor,
    /// `chosen − rejected` for the policy and the reference, [b].
    pub pi_logratios: Tensor,
    pub ref_logratios: Tensor,
    /// `pi_logratios − ref_logratios`, [b].
    pub logits: Tensor,
}

/// Upstream `dpo_loss(ref_log_probs, policy_log_probs, mask, beta)`: the first half of the
/// rows is chosen, the second half rejected (split at `rows // 2`).
pub fn dpo_loss(ref_log_probs: &Tensor, policy_log_probs: &Tensor, mask: &Tensor, beta: f64) -> Result<DpoLoss> {
    let ref_seq = sequence_log_probs(ref_log_probs, mask)?;
    let policy_seq = sequence_log_probs(policy_log_probs, mask)?;
    let rows = ref_seq.dim(0)?;
    let half = rows / 2;
    let ratio = |s: &Tensor| -> Result<Tensor> { Ok((s.narrow(0, 0, half)? - s.narrow(0, half, rows - half)?)?) };
    let pi_logratios = ratio(&policy_seq)?;
    let ref_logratios = ratio(&ref_seq)?;
    let logits = (&pi_logratios - &ref_logratios)?;
    let loss = log_sigmoid(&(&logits * beta)?)?.neg()?.mean_all()?;
    Ok(DpoLoss { loss, ref_seq, policy_seq, pi_logratios, ref_logratios, logits })
}

/// The DPO stage: `reference` is a frozen copy of the policy's starting weights.
pub struct Dpo {
    pub reference: MiniMind,
    pub beta: f64,
}

impl Dpo {
    /// `beta` is upstream's `--beta` (default 0.1).
    pub fn new(reference: MiniMind, beta: f64) -> Self {
        Self { reference, beta }
    }
}

fn mean(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?.mean_all()?.detach())
}

impl Objective for Dpo {
    type Batch = DpoBatch;

    fn loss(&mut self, model: &MiniMind, batch: &DpoBatch, device: &Device) -> Result<LossParts> {
        ensure!(batch.chosen.rows == batch.rejected.rows, "a DPO batch needs as many rejected rows as chosen");
        let (x, y, mask) = batch_tensors(&batch.concatenated(), device)?;
        let ref_logits = self.reference.forward(&x, None, None, Mode::Inference)?.logits.detach();
        let ref_lp = logits_to_log_probs(&ref_logits, &y)?.detach();
        let policy_logits = model.forward(&x, None, None, Mode::Training)?.logits;
        let policy_lp = logits_to_log_probs(&policy_logits, &y)?;
        let d = dpo_loss(&ref_lp, &policy_lp, &mask, self.beta)?;
        // Implicit rewards beta·(policy − reference) of each side, as DPO papers log them.
        let rewards = ((&d.policy_seq - &d.ref_seq)?.detach() * self.beta)?;
        let b = batch.chosen.rows;
        let chosen = rewards.narrow(0, 0, b)?;
        let rejected = rewards.narrow(0, b, b)?;
        let accuracy = mean(&chosen.gt(&rejected)?)?;
        let logged = vec![
            ("reward_chosen", mean(&chosen)?),
            ("reward_rejected", mean(&rejected)?),
            ("reward_margin", mean(&(&chosen - &rejected)?)?),
            ("reward_accuracy", accuracy),
            ("policy_logp_chosen", mean(&d.policy_seq.narrow(0, 0, b)?)?),
            ("policy_logp_rejected", mean(&d.policy_seq.narrow(0, b, b)?)?),
        ];
        Ok(LossParts { loss: d.loss, logged })
    }

    fn tokens(&self, batch: &DpoBatch) -> usize {
        [&batch.chosen, &batch.rejected].iter().map(|b| b.loss_mask.iter().filter(|&&m| m > 0.0).count()).sum()
    }

    /// The loss is a mean over pairs (each pair's log-probs are already per-sequence figures).
    fn loss_denominator(&self, batch: &DpoBatch) -> usize {
        batch.chosen.rows
    }
}
