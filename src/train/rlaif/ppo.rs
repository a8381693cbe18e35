//! PPO (upstream `trainer/train_ppo.py`): sequence-level log-prob sums, a clipped ratio
//! against an old actor, a critic's value at the last position, and a KL-to-reference term in
//! the loss. One backward covers actor and critic.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};

use super::check_dims;

/// Upstream's defaults (`--clip_epsilon 0.1 --vf_coef 0.5 --kl_coef 0.02`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PpoConfig {
    pub clip_epsilon: f64,
    pub vf_coef: f64,
    pub kl_coef: f64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self { clip_epsilon: 0.1, vf_coef: 0.5, kl_coef: 0.02 }
    }
}

/// Upstream's `prompt_lengths = attention_mask.sum(1)`, used as the position where each row's
/// response starts (for decoding and for the loss mask). With left padding that is wrong for
/// every shorter prompt: its response really starts at the padded width P. This reproduces
/// upstream; the fixed start is P for every row ([`padded_response_starts`]).
pub fn upstream_response_starts(prompt_attention_mask: &Tensor) -> Result<Vec<usize>> {
    prompt_attention_mask.dims2().context("the prompt attention mask must be [rows, positions]")?;
    let rows = prompt_attention_mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    Ok(rows.iter().map(|r| r.iter().map(|&m| m as usize).sum()).collect())
}

/// Where responses start for left-padded prompts of width P: P in every row.
pub fn padded_response_starts(prompt_attention_mask: &Tensor) -> Result<Vec<usize>> {
    let (b, p) = prompt_attention_mask.dims2().context("the prompt attention mask must be [rows, positions]")?;
    Ok(vec![p; b])
}

/// PPO's masks over `gen_out` [B, T] (prompt then response, pad id `pad_id`).
pub struct PpoMasks {
    /// [B, T] f32: `gen_out != pad` (the attention mask of every forward pass).
    pub full_mask: Tensor,
    /// [B, T-1] u32: `gen_out[:, 1:]`.
    pub labels: Tensor,
    /// [B, T-1] f32: label index `j >= response_start` (j predicts token j+1, so with the
    /// upstream start this skips the first response token of an unpadded row).
    pub resp_mask: Tensor,
    /// [B, T-1] f32: `resp_mask & labels != pad`.
    pub final_mask: Tensor,
    /// Upstream's `full_mask.sum(1) − 1`: the index the critic's value is read at. For a
    /// left-padded row that is not the last real token (it counts pads out but indexes from
    /// the left edge); the fixed index is the position of the last non-pad token.
    pub last_indices: Vec<usize>,
}

/// The masks of `gen_out` [B, T] with responses starting at `response_starts` (from
/// [`upstream_response_starts`] to match upstream).
pub fn ppo_masks(gen_out: &Tensor, response_starts: &[usize], pad_id: u32) -> Result<PpoMasks> {
    let (b, t) = gen_out.dims2().context("gen_out must be [rows, positions]")?;
    ensure!(t >= 2, "gen_out has {t} positions; PPO needs at least 2");
    ensure!(response_starts.len() == b, "{} response starts for {b} rows", response_starts.len());
    let ids = gen_out.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    let (mut full, mut resp, mut fin, mut last_indices) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (row, &start) in ids.iter().zip(response_starts) {
        let real = row.iter().filter(|&&id| id != pad_id).count();
        ensure!(real >= 1, "a gen_out row is all padding");
        last_indices.push(real - 1);
        full.extend(row.iter().map(|&id| f32::from(u8::from(id != pad_id))));
        for j in 0..t - 1 {
            let r = j >= start;
            resp.push(f32::from(u8::from(r)));
            fin.push(f32::from(u8::from(r && row[j + 1] != pad_id)));
        }
    }
    let device = gen_out.device();
    let u32_ids = gen_out.to_dtype(DType::U32)?;
    Ok(PpoMasks {
        full_mask: Tensor::from_vec(full, (b, t), device)?,
        labels: u32_ids.narrow(1, 1, t - 1)?.contiguous()?,
        resp_mask: Tensor::from_vec(resp, (b, t - 1), device)?,
        final_mask: Tensor::from_vec(fin, (b, t - 1), device)?,
        last_indices,
    })
}

/// `values_seq[b, index[b]]` [B], differentiable in `values_seq` [B, T].
pub fn values_at(values_seq: &Tensor, indices: &[usize]) -> Result<Tensor> {
    let (b, t) = values_seq.dims2().context("values must be [rows, positions]")?;
    ensure!(indices.len() == b && indices.iter().all(|&i| i < t), "value indices {indices:?} do not fit [{b}, {t}]");
    let idx = Tensor::from_vec(indices.iter().map(|&i| i as u32).collect::<Vec<_>>(), (b, 1), values_seq.device())?;
    Ok(values_seq.gather(&idx, 1)?.squeeze(1)?)
}

/// PPO's terms (upstream's names); [B] unless noted, scalars otherwise.
pub struct PpoLoss {
    /// Masked **sums** of the per-token log-probs (not means).
    pub actor_logp: Tensor,
    pub old_logp: Tensor,
    pub ref_logp: Tensor,
    /// `rewards − values.detach()`.
    pub advantages: Tensor,
    /// `exp(actor − old)` and the two surrogates `ratio·A`, `clamp(ratio, 1±ε)·A`.
    pub ratio: Tensor,
    pub surr1: Tensor,
    pub surr2: Tensor,
    /// Scalars: `mean(actor − old)` (logged only), `mean(actor − ref)` (in the loss).
    pub kl: Tensor,
    pub kl_ref: Tensor,
    /// `−mean(min(surr1, surr2))`, `mse(values, rewards)` (values not detached), and
    /// `policy + vf·value + kl_coef·kl_ref`.
    pub policy_loss: Tensor,
    pub value_loss: Tensor,
    pub loss: Tensor,
}

/// The PPO loss from per-token log-probs [B, T-1] of the actor (with gradient), the old actor
/// and the reference (frozen), the `final_mask` [B, T-1], the critic's `values` [B] (with
/// gradient) and the `rewards` [B].
pub fn ppo_loss(
    actor_logp_tokens: &Tensor,
    old_logp_tokens: &Tensor,
    ref_logp_tokens: &Tensor,
    final_mask: &Tensor,
    values: &Tensor,
    rewards: &Tensor,
    cfg: &PpoConfig,
) -> Result<PpoLoss> {
    let (b, n) = actor_logp_tokens.dims2().context("actor log-probs must be [rows, positions]")?;
    check_dims("the old actor's log-probs", old_logp_tokens, &[b, n])?;
    check_dims("the reference log-probs", ref_logp_tokens, &[b, n])?;
    check_dims("the final mask", final_mask, &[b, n])?;
    check_dims("the values", values, &[b])?;
    check_dims("the rewards", rewards, &[b])?;
    let mask = final_mask.to_dtype(DType::F32)?;
    let masked_sum = |t: &Tensor| -> Result<Tensor> { Ok((t * &mask)?.sum(1)?) };
    let actor_logp = masked_sum(actor_logp_tokens)?;
    let old_logp = masked_sum(&old_logp_tokens.detach())?;
    let ref_logp = masked_sum(&ref_logp_tokens.detach())?;
    let rewards = rewards.to_dtype(DType::F32)?.detach();
    let advantages = (&rewards - values.detach())?;
    let kl = (&actor_logp - &old_logp)?.mean_all()?.detach();
    let kl_ref = (&actor_logp - &ref_logp)?.mean_all()?;
    let ratio = (&actor_logp - &old_logp)?.exp()?;
    let surr1 = (&ratio * &advantages)?;
    let clipped = ratio.clamp((1.0 - cfg.clip_epsilon) as f32, (1.0 + cfg.clip_epsilon) as f32)?;
    let surr2 = (clipped * &advantages)?;
    let policy_loss = surr1.minimum(&surr2)?.mean_all()?.neg()?;
    let value_loss = (values - &rewards)?.sqr()?.mean_all()?;
    let loss = ((&policy_loss + (&value_loss * cfg.vf_coef)?)? + (&kl_ref * cfg.kl_coef)?)?;
    Ok(PpoLoss { actor_logp, old_logp, ref_logp, advantages, ratio, surr1, surr2, kl, kl_ref, policy_loss, value_loss, loss })
}
