//! The losses of upstream's RL-from-AI-feedback trainers (`trainer/train_grpo.py`,
//! `train_spo.py`, `train_ppo.py`), as pure functions from rollouts to losses plus the figures
//! upstream logs. Sampling, reward models and the training loop live elsewhere; gradients come
//! from candle's `backward` on the returned loss.
//!
//! * [`logprobs`]: per-token log-probabilities of sampled tokens, completion masks.
//! * [`calculate_rewards`]: upstream's `calculate_rewards` (the reasoning rule rewards plus
//!   clipped and blended reward-model scores) around any scorer.
//! * [`grpo`]: group-normalised advantages and the GRPO loss.
//! * [`spo`]: the adaptive value tracker (serialisable) and the SPO loss.
//! * [`ppo`]: PPO's masks, clipped surrogate, value and KL terms.
//! * [`critic`]: upstream's `CriticModel` (MiniMind trunk + scalar value head).
//! * [`stage`]: the three as stages of the shared trainer (`mm train grpo|spo|ppo`).
//!
//! Where upstream computes something questionable that its numbers depend on (pads attended to,
//! prompt lengths used as offsets, the critic's double final norm), the upstream-compatible
//! form is the one named `upstream_*` or documented as such, with the fixed form beside it.

pub mod calculate_rewards;
pub mod critic;
pub mod grpo;
pub mod logprobs;
pub mod ppo;
pub mod spo;
pub mod stage;

use anyhow::{ensure, Result};
use candle_core::Tensor;

/// Fails with a message naming `what` unless `t` has exactly `dims`.
pub(crate) fn check_dims(what: &str, t: &Tensor, dims: &[usize]) -> Result<()> {
    ensure!(t.dims() == dims, "{what} has shape {:?}, expected {dims:?}", t.dims());
    Ok(())
}
