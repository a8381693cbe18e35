//! Reasoning SFT as upstream `trainer/train_distill_reason.py` computes it: SFT cross-entropy
//! where every target that is one of the tag tokens gets loss weight 10.
//!
//! * The tag ids are the union of `tokenizer('<think>')`, `tokenizer('</think>')`,
//!   `tokenizer('<answer>')` and `tokenizer('</answer>')` ids. The MiniMind tokenizer has no
//!   such special tokens, so these are ordinary BPE pieces (`<`, `>`, `</`, `think`, …), and
//!   every occurrence of any of them as a target is weighted.
//! * The weight is *set* to 10 (`loss_mask[sp_ids] = 10`), also where the mask was 0; the
//!   denominator is the sum of the original mask, taken before the reweighting.
//! * `loss = (ce · weighted_mask).sum() / mask.sum() + aux_loss`.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use mm_dataset::{LmBatch, TextEncoder};

use mm_model::model::{MiniMind, Mode};
use crate::loss::per_token_ce;
use crate::objective::{LossParts, Objective};

/// The tags upstream weights.
pub const TAGS: [&str; 4] = ["<think>", "</think>", "<answer>", "</answer>"];
/// Upstream's weight for tag targets.
pub const TAG_WEIGHT: f32 = 10.0;

/// The weighted mask and the original mask's sum (the loss's denominator).
pub fn weighted_mask(y: &[u32], mask: &[f32], tag_ids: &[u32], weight: f32) -> (Vec<f32>, f32) {
    let sum = mask.iter().sum();
    let weighted = y.iter().zip(mask).map(|(t, &m)| if tag_ids.contains(t) { weight } else { m }).collect();
    (weighted, sum)
}

pub struct ReasonSft {
    /// Target ids that get [`TAG_WEIGHT`].
    pub tag_ids: Vec<u32>,
}

impl ReasonSft {
    /// Tag ids as upstream finds them: each tag encoded on its own (special tokens on).
    pub fn new<E: TextEncoder + ?Sized>(encoder: &E) -> Result<Self> {
        let mut tag_ids = Vec::new();
        for tag in TAGS {
            tag_ids.extend(encoder.encode(tag, true)?);
        }
        tag_ids.sort_unstable();
        tag_ids.dedup();
        Ok(Self { tag_ids })
    }
}

impl Objective for ReasonSft {
    type Batch = LmBatch;

    fn loss(&mut self, model: &MiniMind, batch: &LmBatch, device: &Device) -> Result<LossParts> {
        let shape = (batch.rows, batch.seq_len);
        let x = Tensor::from_slice(&batch.x, shape, device)?;
        let y = Tensor::from_slice(&batch.y, shape, device)?;
        let (weights, denominator) = weighted_mask(&batch.y, &batch.loss_mask, &self.tag_ids, TAG_WEIGHT);
        let weights = Tensor::from_vec(weights, shape, device)?;
        let out = model.forward(&x, None, None, Mode::Training)?;
        let ce = ((per_token_ce(&out.logits, &y)? * weights)?.sum_all()? / denominator as f64)?;
        let mut logged = vec![("ce", ce.detach())];
        let loss = match out.aux_loss {
            Some(aux) => {
                logged.push(("aux", aux.detach()));
                ce.add(&aux.to_dtype(DType::F32)?)?
            }
            None => ce,
        };
        Ok(LossParts { loss, logged })
    }

    fn tokens(&self, batch: &LmBatch) -> usize {
        batch.loss_mask.iter().filter(|&&m| m > 0.0).count()
    }
}
