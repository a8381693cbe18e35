//! SPO (upstream `trainer/train_spo.py`): one generation per prompt, a baseline from an
//! adaptive Beta-posterior value tracker carried across steps, and a plain REINFORCE loss with
//! the k3 KL penalty.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::grpo::{batch_loss, checked_k3};

/// The reward range the tracker assumes: rewards in ±`SCALE` map to [0, 1].
pub const SCALE: f64 = 3.0;

/// How the tracker's forgetting factor rho is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RhoMode {
    /// From the drift of the policy's mean log-prob between updates (upstream's default).
    Kl,
    /// Always `rho_const`.
    Constant,
}

/// Upstream's `AutoAdaptiveValueTracker`: a Beta(α, β) estimate of the normalised reward whose
/// mean is the baseline, decayed by rho before each update. All state is f64, as upstream's
/// Python floats; it is saved with a run so a resumed run continues the same baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueTracker {
    pub rho_mode: RhoMode,
    pub rho_const: f64,
    /// The log-prob drift that halves rho.
    pub d_half: f64,
    pub clip_lower: f64,
    pub clip_upper: f64,
    pub alpha: f64,
    pub beta: f64,
    /// The masked mean log-prob of the previous update (None before the first).
    pub old_mean_logprob: Option<f64>,
}

impl Default for ValueTracker {
    /// Upstream's defaults: `rho_mode='kl', rho_const=0.9, D_half=0.06, clip 0.5..0.96`.
    fn default() -> Self {
        Self::new(RhoMode::Kl, 0.9, 0.06, 0.5, 0.96)
    }
}

/// What one [`ValueTracker::update`] computed.
#[derive(Debug, Clone)]
pub struct TrackerUpdate {
    pub rho: f64,
    /// The masked mean of the log-probs over the whole batch (when given).
    pub mean_logprob: Option<f64>,
    /// `|old − cur|` mean log-prob, when rho came from it.
    pub kl: Option<f64>,
    /// [B] f32: `(r + 3)/6`.
    pub normalized_rewards: Tensor,
    pub avg_normalized_reward: f64,
}

impl ValueTracker {
    /// α = β = ½·1/(1 − clip_lower): a prior worth as many samples as rho's floor keeps.
    pub fn new(rho_mode: RhoMode, rho_const: f64, d_half: f64, clip_lower: f64, clip_upper: f64) -> Self {
        let n_init = 1.0 / (1.0 - clip_lower);
        Self { rho_mode, rho_const, d_half, clip_lower, clip_upper, alpha: 0.5 * n_init, beta: 0.5 * n_init, old_mean_logprob: None }
    }

    /// The baseline α/(α+β) (in [0, 1]) for each of `batch` rows, f32 as upstream's tensor.
    pub fn baselines(&self, batch: usize, device: &Device) -> Result<Tensor> {
        let baseline = self.alpha / (self.alpha + self.beta);
        Ok(Tensor::full(baseline as f32, batch, device)?)
    }

    /// rho for the current mean log-prob: `rho_const` in constant mode or on the first update
    /// (unclipped), else `clip(2^(−|old − cur|/D_half), lower, upper)`.
    pub fn compute_rho(&self, cur_mean_logprob: f64) -> f64 {
        match (self.rho_mode, self.old_mean_logprob) {
            (RhoMode::Constant, _) | (_, None) => self.rho_const,
            (RhoMode::Kl, Some(old)) => {
                let kl = (old - cur_mean_logprob).abs();
                2f64.powf(-kl / self.d_half).min(self.clip_upper).max(self.clip_lower)
            }
        }
    }

    /// Upstream's `update(rewards, cur_logprobs, response_masks)`, run after the backward
    /// pass: `rewards` [B] are the **unclipped** totals (so a normalised reward can exceed 1),
    /// `logprobs` the detached policy log-probs and float mask, both [B, R].
    pub fn update(&mut self, rewards: &Tensor, logprobs: Option<(&Tensor, &Tensor)>) -> Result<TrackerUpdate> {
        self.update_over(rewards, logprobs, None)
    }

    /// [`update`](Self::update) from a data-parallel rank's rows: the means are the global
    /// batch's (the rewards gathered from every rank, the masked log-prob sums summed), so every
    /// rank's tracker takes the same step, the one a single process given the whole batch
    /// would. `normalized_rewards` stays this rank's rows.
    pub fn update_over(
        &mut self,
        rewards: &Tensor,
        logprobs: Option<(&Tensor, &Tensor)>,
        parallel: Option<crate::distributed::GlobalBatch>,
    ) -> Result<TrackerUpdate> {
        let b = rewards.dims1().context("tracker rewards must be one value per row")?;
        let (rho, mean_logprob, kl) = match logprobs {
            Some((lp, mask)) => {
                ensure!(lp.dims() == mask.dims(), "log-probs {:?} and mask {:?} differ in shape", lp.dims(), mask.dims());
                ensure!(lp.dim(0)? == b, "log-probs have {} rows, rewards {b}", lp.dim(0)?);
                let mask = mask.to_dtype(DType::F32)?;
                let (sum, count) = ((lp.detach() * &mask)?.sum_all()?, mask.sum_all()?);
                let (sum, count) = match parallel {
                    Some(g) => {
                        let both = g.sum(&Tensor::stack(&[sum, count], 0)?)?;
                        (both.get(0)?, both.get(1)?)
                    }
                    None => (sum, count),
                };
                let mean = sum.div(&count)?.to_scalar::<f32>()? as f64;
                let kl = match (self.rho_mode, self.old_mean_logprob) {
                    (RhoMode::Kl, Some(old)) => Some((old - mean).abs()),
                    _ => None,
                };
                let rho = self.compute_rho(mean);
                self.old_mean_logprob = Some(mean);
                (rho, Some(mean), kl)
            }
            None => (self.rho_const, None, None),
        };
        // (r + 3) / (2·3) in f32, dividing (not multiplying by 1/6) as torch does.
        let scale = Tensor::new(2.0 * SCALE as f32, rewards.device())?;
        let normalize = |r: &Tensor| -> Result<Tensor> { Ok((r.to_dtype(DType::F32)? + SCALE)?.broadcast_div(&scale)?) };
        let normalized_rewards = normalize(rewards)?;
        let avg = match parallel {
            Some(g) => normalize(&g.gather_rows(rewards)?)?,
            None => normalized_rewards.clone(),
        };
        let avg = avg.mean_all()?.to_scalar::<f32>()? as f64;
        self.alpha = rho * self.alpha + avg;
        self.beta = rho * self.beta + (1.0 - avg);
        Ok(TrackerUpdate { rho, mean_logprob, kl, normalized_rewards, avg_normalized_reward: avg })
    }
}

/// SPO's advantage pipeline, all [B] f32.
pub struct SpoAdvantages {
    /// `6·baseline − 3`: the baseline on the reward scale.
    pub unnormalized_baselines: Tensor,
    /// `rewards − unnormalized_baselines`.
    pub advantages_raw: Tensor,
    /// The above clamped to ±5 (no batch normalisation: the baseline is already stable).
    pub advantages: Tensor,
}

/// Advantages of `rewards` [B] against the tracker's `baselines` [B] (taken before this
/// step's update).
pub fn spo_advantages(rewards: &Tensor, baselines: &Tensor) -> Result<SpoAdvantages> {
    let b = rewards.dims1().context("rewards must be one value per row")?;
    super::check_dims("the baselines", baselines, &[b])?;
    let unnormalized_baselines = baselines.to_dtype(DType::F32)?.affine(2.0 * SCALE, -SCALE)?;
    let advantages_raw = (rewards.to_dtype(DType::F32)? - &unnormalized_baselines)?;
    let advantages = advantages_raw.clamp(-5f32, 5f32)?;
    Ok(SpoAdvantages { unnormalized_baselines, advantages_raw, advantages })
}

/// SPO's per-token terms and loss.
pub struct SpoLoss {
    pub kl_div: Tensor,
    pub per_token_kl: Tensor,
    /// [B, R]: `−lp·A + β·k3`.
    pub per_token_loss: Tensor,
    /// The masked per-row mean, averaged over rows, divided by `accumulation_steps`.
    pub loss: Tensor,
    /// Upstream's logged KL: the masked mean of `per_token_kl` over the batch (`/(n + 1e-8)`).
    pub kl: Tensor,
}

/// The SPO loss; arguments as [`super::grpo::grpo_loss`].
pub fn spo_loss(
    per_token_logps: &Tensor,
    ref_per_token_logps: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    beta: f64,
    accumulation_steps: usize,
) -> Result<SpoLoss> {
    let (kl_div, per_token_kl) = checked_k3(per_token_logps, ref_per_token_logps, advantages, mask, accumulation_steps)?;
    let pg = per_token_logps.neg()?.broadcast_mul(&advantages.detach().unsqueeze(1)?)?;
    let per_token_loss = (pg + (&per_token_kl * beta)?)?;
    let loss = batch_loss(&per_token_loss, mask, accumulation_steps)?;
    let mask = mask.to_dtype(DType::F32)?;
    let kl = (per_token_kl.detach() * &mask)?.sum_all()?.div(&(mask.sum_all()? + 1e-8)?)?;
    Ok(SpoLoss { kl_div, per_token_kl, per_token_loss, loss, kl })
}
