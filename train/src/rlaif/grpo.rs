//! GRPO (upstream `trainer/train_grpo.py`): rewards normalised within each prompt's group of
//! generations and then over the batch, a ratio-1 policy-gradient term and the k3 KL
//! estimator against a frozen reference.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor, D};

use super::check_dims;
use crate::dpo::sequence_log_probs;

/// The advantage pipeline's intermediates (upstream's names), all f32.
pub struct GroupAdvantages {
    /// [B, G]: the rewards of each prompt's G generations.
    pub grouped_rewards: Tensor,
    /// [B·G]: the group mean and unbiased std, repeated for each generation.
    pub mean_r: Tensor,
    pub std_r: Tensor,
    /// [B·G]: `clamp((r − mean)/(std + 1e-4), ±10)`.
    pub advantages_group: Tensor,
    /// [B·G]: the above normalised again over the whole batch, `(a − mean)/(std + 1e-8)`.
    pub advantages: Tensor,
}

/// Advantages of `rewards` [B·G] (prompt-major: the G generations of a prompt are adjacent).
/// Both stds are unbiased (N−1), as torch's `std()`; the second normalisation over the
/// batch is upstream's and is kept.
pub fn group_advantages(rewards: &Tensor, num_generations: usize) -> Result<GroupAdvantages> {
    group_advantages_over(rewards, num_generations, None)
}

/// [`group_advantages`] of a data-parallel rank's rows: groups are whole on every rank, and
/// the second normalisation runs over the global batch (all ranks' rows), so N ranks compute
/// what one process given the whole batch would. (Upstream under DDP normalises each rank's
/// rows alone.)
pub fn group_advantages_over(
    rewards: &Tensor,
    num_generations: usize,
    parallel: Option<crate::distributed::GlobalBatch>,
) -> Result<GroupAdvantages> {
    let n = rewards.dims1().context("rewards must be one value per generation")?;
    ensure!(num_generations >= 2, "GRPO needs at least 2 generations per prompt (the std of one is undefined)");
    ensure!(n % num_generations == 0, "{n} rewards are not whole groups of {num_generations}");
    let rewards = rewards.to_dtype(DType::F32)?;
    let grouped_rewards = rewards.reshape((n / num_generations, num_generations))?;
    let per_row = |t: Tensor| -> Result<Tensor> { Ok(t.broadcast_as(grouped_rewards.shape())?.flatten_all()?) };
    let mean_r = per_row(grouped_rewards.mean_keepdim(D::Minus1)?)?;
    let std_r = per_row(grouped_rewards.var_keepdim(D::Minus1)?.sqrt()?)?;
    let advantages_group = (&rewards - &mean_r)?.div(&(&std_r + 1e-4)?)?.clamp(-10f32, 10f32)?;
    let over = match parallel {
        Some(g) => g.gather_rows(&advantages_group)?,
        None => advantages_group.clone(),
    };
    let mean_a = over.mean_keepdim(0)?;
    let std_a = over.var_keepdim(0)?.sqrt()?;
    let advantages = advantages_group.broadcast_sub(&mean_a)?.broadcast_div(&(std_a + 1e-8)?)?;
    Ok(GroupAdvantages { grouped_rewards, mean_r, std_r, advantages_group, advantages })
}

/// GRPO's per-token terms and loss.
pub struct GrpoLoss {
    /// [B, R]: `ref − policy`.
    pub kl_div: Tensor,
    /// [B, R]: the k3 estimator `exp(kl_div) − kl_div − 1`.
    pub per_token_kl: Tensor,
    /// [B, R]: `−(exp(lp − lp.detach())·A − β·k3)`.
    pub per_token_loss: Tensor,
    /// The masked per-row mean, averaged over rows, divided by `accumulation_steps`.
    pub loss: Tensor,
}

/// The KL pieces shared by GRPO and SPO: `kl_div = ref − lp` and `k3 = exp(kl_div) − kl_div − 1`.
pub(crate) fn k3(per_token_logps: &Tensor, ref_per_token_logps: &Tensor) -> Result<(Tensor, Tensor)> {
    let kl_div = (ref_per_token_logps.detach() - per_token_logps)?;
    let per_token_kl = ((kl_div.exp()? - &kl_div)? - 1.0)?;
    Ok((kl_div, per_token_kl))
}

/// Shape checks shared by GRPO and SPO: log-probs and mask [B, R], advantages [B].
/// The shared start of the GRPO and SPO losses: inputs checked, then the k3 KL terms.
pub(crate) fn checked_k3(
    per_token_logps: &Tensor,
    ref_per_token_logps: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    accumulation_steps: usize,
) -> Result<(Tensor, Tensor)> {
    check_token_inputs(per_token_logps, ref_per_token_logps, advantages, mask)?;
    ensure!(accumulation_steps >= 1, "accumulation_steps must be at least 1");
    k3(per_token_logps, ref_per_token_logps)
}

/// The shared end: per-sequence masked mean, batch mean, scaled for accumulation.
pub(crate) fn batch_loss(per_token_loss: &Tensor, mask: &Tensor, accumulation_steps: usize) -> Result<Tensor> {
    Ok((sequence_log_probs(per_token_loss, mask)?.mean_all()? / accumulation_steps as f64)?)
}

pub(crate) fn check_token_inputs(per_token_logps: &Tensor, ref_per_token_logps: &Tensor, advantages: &Tensor, mask: &Tensor) -> Result<()> {
    let (b, r) = per_token_logps.dims2().context("per-token log-probs must be [rows, positions]")?;
    check_dims("the reference log-probs", ref_per_token_logps, &[b, r])?;
    check_dims("the completion mask", mask, &[b, r])?;
    check_dims("the advantages", advantages, &[b])?;
    Ok(())
}

/// The GRPO loss of policy log-probs `per_token_logps` [B, R] (with gradient), frozen
/// `ref_per_token_logps` [B, R], `advantages` [B] and the completion `mask` [B, R].
/// `exp(lp − lp.detach())` is 1 in value, so the loss value is ≈ β·KL while its gradient
/// carries −A per token.
pub fn grpo_loss(
    per_token_logps: &Tensor,
    ref_per_token_logps: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    beta: f64,
    accumulation_steps: usize,
) -> Result<GrpoLoss> {
    let (kl_div, per_token_kl) = checked_k3(per_token_logps, ref_per_token_logps, advantages, mask, accumulation_steps)?;
    let ratio = (per_token_logps - per_token_logps.detach())?.exp()?;
    let policy = ratio.broadcast_mul(&advantages.detach().unsqueeze(1)?)?;
    let per_token_loss = (policy - (&per_token_kl * beta)?)?.neg()?;
    let loss = batch_loss(&per_token_loss, mask, accumulation_steps)?;
    Ok(GrpoLoss { kl_div, per_token_kl, per_token_loss, loss })
}
