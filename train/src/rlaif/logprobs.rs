//! Per-token log-probabilities of sampled tokens and the completion mask, as the RL trainers
//! compute them. The log-softmax and gather are [`crate::loss::token_log_probs`], the
//! same as DPO's.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};

use super::check_dims;
use mm_model::model::{MiniMind, Mode};
use crate::loss::token_log_probs;

/// GRPO/SPO `get_per_token_logps(model, outputs, n_keep)`: the log-probability of each of the
/// last `n_keep` tokens of `outputs` [B, T] under `model`, [B, n_keep] f32.
///
/// Upstream passes **no attention mask** here, so the left pads of a shorter prompt are
/// attended to like tokens and count as positions for RoPE; `padding: None` reproduces that.
/// The fixed behaviour passes `padding` = 1 for real tokens (prompt mask, then 1 for every
/// completion position up to its EOS) so pads are masked out.
pub fn completion_log_probs(model: &MiniMind, outputs: &Tensor, padding: Option<&Tensor>, n_keep: usize, mode: Mode) -> Result<Tensor> {
    let (b, t) = outputs.dims2().context("rollout ids must be [rows, positions]")?;
    ensure!(n_keep >= 1 && n_keep < t, "cannot score the last {n_keep} of {t} positions (the first has no context)");
    let ids = outputs.to_dtype(DType::U32)?;
    let (hidden, _) = model.forward_hidden(&ids, None, padding, mode)?;
    // `logits_to_keep = n_keep + 1`, then `[:, :-1]`: positions t-n_keep-1 .. t-2 predict the
    // last n_keep tokens. Only those rows go through the head.
    let h = hidden.dim(2)?;
    let rows = hidden.narrow(1, t - n_keep - 1, n_keep)?.reshape((b * n_keep, h))?;
    let logits = model.logits(&rows)?.reshape((b, n_keep, ()))?;
    token_log_probs(&logits, &ids.narrow(1, t - n_keep, n_keep)?.contiguous()?).map_err(Into::into)
}

/// PPO's `log_softmax(model(ids, attention_mask).logits[:, :-1]).gather(ids[:, 1:])`: the
/// log-probability of every token after the first, [B, T-1] f32. `padding` [B, T] is the
/// attention mask (1 for real tokens); pads then get upstream's `-1e9` key bias.
pub fn next_token_log_probs(model: &MiniMind, ids: &Tensor, padding: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
    let (b, t) = ids.dims2().context("sequence ids must be [rows, positions]")?;
    ensure!(t >= 2, "a sequence of {t} positions has no next token to score");
    if let Some(p) = padding {
        check_dims("the attention mask", p, &[b, t])?;
    }
    let ids = ids.to_dtype(DType::U32)?;
    let (hidden, _) = model.forward_hidden(&ids, None, padding, mode)?;
    let h = hidden.dim(2)?;
    let rows = hidden.narrow(1, 0, t - 1)?.reshape((b * (t - 1), h))?;
    let logits = model.logits(&rows)?.reshape((b, t - 1, ()))?;
    token_log_probs(&logits, &ids.narrow(1, 1, t - 1)?.contiguous()?).map_err(Into::into)
}

/// Which completion positions count: every position up to and including the first EOS, or
/// all of them when a row has none (GRPO/SPO's `is_eos` / `eos_idx` / `completion_mask`).
pub struct CompletionMask {
    /// [B, R] u8: 1 where the token is EOS.
    pub is_eos: Tensor,
    /// Index of the first EOS of each row, or R when there is none.
    pub eos_idx: Vec<usize>,
    /// [B, R] f32: 1 for positions `<= eos_idx` (upstream's int32 mask, as floats).
    pub mask: Tensor,
}

impl CompletionMask {
    /// Tokens that count per row (`mask.sum(1)`).
    pub fn lengths(&self) -> Vec<usize> {
        let r = self.mask.dims().get(1).copied().unwrap_or(0);
        self.eos_idx.iter().map(|&e| (e + 1).min(r)).collect()
    }
}

/// The completion mask of `completion_ids` [B, R] (any integer dtype) for `eos_id`.
pub fn completion_mask(completion_ids: &Tensor, eos_id: u32) -> Result<CompletionMask> {
    let (b, r) = completion_ids.dims2().context("completion ids must be [rows, positions]")?;
    let ids = completion_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    let mut is_eos = Vec::with_capacity(b * r);
    let mut mask = Vec::with_capacity(b * r);
    let mut eos_idx = Vec::with_capacity(b);
    for row in &ids {
        let first = row.iter().position(|&id| id == eos_id).unwrap_or(r);
        eos_idx.push(first);
        is_eos.extend(row.iter().map(|&id| u8::from(id == eos_id)));
        mask.extend((0..r).map(|j| if j <= first { 1f32 } else { 0.0 }));
    }
    let device = completion_ids.device();
    Ok(CompletionMask { is_eos: Tensor::from_vec(is_eos, (b, r), device)?, eos_idx, mask: Tensor::from_vec(mask, (b, r), device)? })
}
