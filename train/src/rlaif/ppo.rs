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

/// Upstream's `prompt_lengths = attention_mask.sum(1)`. Upstream uses them as the offset
/// each row's response is decoded from **and** as the first label index the loss counts
/// (`j >= prompt_lengths`, where label j predicts token j+1). With left padding both are wrong
/// for every shorter prompt (its response starts at the padded width P), and the label index
/// skips the first response token of every row. Passing these to [`ppo_masks`] reproduces
/// upstream; [`fixed_first_labels`] is the corrected start.
pub fn upstream_prompt_lengths(prompt_attention_mask: &Tensor) -> Result<Vec<usize>> {
    prompt_attention_mask.dims2().context("the prompt attention mask must be [rows, positions]")?;
    let rows = prompt_attention_mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    Ok(rows.iter().map(|r| r.iter().map(|&m| m as usize).sum()).collect())
}

/// The corrected first label index for left-padded prompts of width P: P − 1 in every row
/// (label P − 1 predicts the first response token, at position P). Responses then decode
/// from P.
pub fn fixed_first_labels(prompt_attention_mask: &Tensor) -> Result<Vec<usize>> {
    let (b, p) = prompt_attention_mask.dims2().context("the prompt attention mask must be [rows, positions]")?;
    ensure!(p >= 1, "empty prompts");
    Ok(vec![p - 1; b])
}

/// PPO's masks over `gen_out` [B, T] (prompt then response, pad id `pad_id`).
pub struct PpoMasks {
    /// [B, T] f32: `gen_out != pad` (the attention mask of every forward pass).
    pub full_mask: Tensor,
    /// [B, T-1] u32: `gen_out[:, 1:]`.
    pub labels: Tensor,
    /// [B, T-1] f32: label index `j >= first_label[b]`.
    pub resp_mask: Tensor,
    /// [B, T-1] f32: `resp_mask & labels != pad`.
    pub final_mask: Tensor,
    /// Upstream's `full_mask.sum(1) − 1`: the index the critic's value is read at. For a
    /// left-padded row that is not the last real token (it counts pads out but indexes from
    /// the left edge); the fixed index is `last_real`.
    pub last_indices: Vec<usize>,
    /// The position of each row's last non-pad token.
    pub last_real: Vec<usize>,
}

/// The masks of `gen_out` [B, T] where the loss counts labels from `first_label[b]` on
/// ([`upstream_prompt_lengths`] to match upstream, [`fixed_first_labels`] for the fix).
pub fn ppo_masks(gen_out: &Tensor, first_label: &[usize], pad_id: u32) -> Result<PpoMasks> {
    let (b, t) = gen_out.dims2().context("gen_out must be [rows, positions]")?;
    ensure!(t >= 2, "gen_out has {t} positions; PPO needs at least 2");
    ensure!(first_label.len() == b, "{} label starts for {b} rows", first_label.len());
    let ids = gen_out.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    let (mut full, mut resp, mut fin) = (Vec::new(), Vec::new(), Vec::new());
    let (mut last_indices, mut last_real) = (Vec::new(), Vec::new());
    for (row, &start) in ids.iter().zip(first_label) {
        let real = row.iter().filter(|&&id| id != pad_id).count();
        ensure!(real >= 1, "a gen_out row is all padding");
        last_indices.push(real - 1);
        last_real.push(row.iter().rposition(|&id| id != pad_id).unwrap_or(0));
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
        last_real,
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Row 0: prompt `7 8` left-padded to width 3, response `5 EOS(2)` then a pad; row 1:
    /// prompt `6 7 8`, response `4 5 9`.
    #[test]
    fn upstream_and_fixed_masks_on_left_padding() {
        let cpu = Device::Cpu;
        let gen_out = Tensor::new(&[[0u32, 7, 8, 5, 2, 0], [6, 7, 8, 4, 5, 9]], &cpu).unwrap();
        let prompt_mask = Tensor::new(&[[0u32, 1, 1], [1, 1, 1]], &cpu).unwrap();
        let rows = |t: &Tensor| t.to_vec2::<f32>().unwrap();

        let upstream = upstream_prompt_lengths(&prompt_mask).unwrap();
        assert_eq!(upstream, [2, 3]);
        let m = ppo_masks(&gen_out, &upstream, 0).unwrap();
        // Row 0 (one pad) happens to start right: label 2 predicts its first response token.
        // Row 1 skips label 2, its first response token (4). Row 0's value index counts the pad
        // out but indexes from the left edge: 3, not its EOS at 4.
        assert_eq!(rows(&m.final_mask), [[0., 0., 1., 1., 0.], [0., 0., 0., 1., 1.]]);
        assert_eq!(m.last_indices, [3, 5]);
        assert_eq!(m.last_real, [4, 5]);

        let fixed = ppo_masks(&gen_out, &fixed_first_labels(&prompt_mask).unwrap(), 0).unwrap();
        assert_eq!(rows(&fixed.final_mask), [[0., 0., 1., 1., 0.], [0., 0., 1., 1., 1.]]);

        assert!(ppo_masks(&gen_out, &[1], 0).is_err());
        assert!(values_at(&Tensor::zeros((2, 6), DType::F32, &cpu).unwrap(), &[0, 6]).is_err());
    }
}
