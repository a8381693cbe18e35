//! Upstream's learning-rate schedule (`trainer_utils.get_lr`): cosine from `lr·1.1` down to
//! `lr/10`, evaluated at every micro-step (`epoch·iters + step`, step counted from 1).

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
}
