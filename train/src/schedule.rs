//! Upstream's learning-rate schedule (`trainer_utils.get_lr`): cosine from `lr·1.1` down to
//! `lr/10`, evaluated at every micro-step (`epoch·iters + step`, step counted from 1).

/// Which schedule a stage follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// `get_lr` per micro-step (pretrain, SFT, LoRA, DPO, distillation, reasoning SFT).
    #[default]
    GetLr,
    /// torch's `CosineAnnealingLR(T_max = optimizer steps, eta_min = lr/10)` stepped once per
    /// optimizer step (the RL trainers: GRPO, SPO, PPO).
    CosineAnnealing,
}

/// `CosineAnnealingLR`'s learning rate after `optimizer_steps` scheduler steps of `t_max`:
/// `eta_min + (lr − eta_min)(1 + cos(π·k/T))/2` with `eta_min = lr/10` (the closed form torch
/// documents; its recursive form agrees to rounding). Past `t_max` the cosine keeps turning,
/// as torch's does.
pub fn cosine_annealing_lr(optimizer_steps: u64, t_max: u64, lr: f64) -> f64 {
    let eta_min = lr / 10.0;
    let t = t_max.max(1) as f64;
    eta_min + (lr - eta_min) * (1.0 + (std::f64::consts::PI * optimizer_steps as f64 / t).cos()) / 2.0
}

pub fn upstream_lr(current_step: u64, total_steps: u64, lr: f64) -> f64 {
    let total = total_steps.max(1) as f64;
    lr / 10.0 + 0.5 * lr * (1.0 + (std::f64::consts::PI * current_step as f64 / total).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_upstream_endpoints() {
        // get_lr(0, n, lr) = lr/10 + lr; get_lr(n, n, lr) = lr/10; midpoint lr/10 + lr/2.
        assert!((upstream_lr(0, 100, 5e-4) - 5.5e-4).abs() < 1e-15);
        assert!((upstream_lr(100, 100, 5e-4) - 5e-5).abs() < 1e-15);
        assert!((upstream_lr(50, 100, 5e-4) - 3e-4).abs() < 1e-15);
    }

    #[test]
    fn cosine_annealing_endpoints() {
        // lr at k=0 is the base, at T the floor lr/10, halfway their mean.
        assert!((cosine_annealing_lr(0, 16, 8e-8) - 8e-8).abs() < 1e-22);
        assert!((cosine_annealing_lr(16, 16, 8e-8) - 8e-9).abs() < 1e-22);
        assert!((cosine_annealing_lr(8, 16, 8e-8) - 4.4e-8).abs() < 1e-22);
    }
}
