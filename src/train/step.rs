//! Gradients of a loss with respect to the trainable parameters, and upstream's
//! `clip_grad_norm_` (global L2 norm, clipped with a 1e-6 guard).

use anyhow::Result;
use candle_core::{Tensor, Var};

/// `loss.backward()` then the gradient of each parameter (None where the loss does not
/// depend on it).
pub fn gradients(loss: &Tensor, params: &[&Var]) -> Result<Vec<Option<Tensor>>> {
    let store = loss.backward()?;
    Ok(params.iter().map(|p| store.get(p.as_tensor()).cloned()).collect())
}

/// Adds `more` into `acc` (gradient accumulation over micro-batches).
pub fn accumulate(acc: &mut [Option<Tensor>], more: Vec<Option<Tensor>>) -> Result<()> {
    for (a, m) in acc.iter_mut().zip(more) {
        *a = match (a.take(), m) {
            (Some(x), Some(y)) => Some((x + y)?),
            (x, y) => x.or(y),
        };
    }
    Ok(())
}

/// The total L2 norm of all gradients (before clipping); scales them by
/// `max_norm / (total + 1e-6)` when that is below 1, as torch does.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut sq = 0.0f64;
    for g in grads.iter().flatten() {
        let n = g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? as f64;
        sq += n;
    }
    let total = sq.sqrt();
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut().flatten() {
            *g = (&*g * coef)?;
        }
    }
    Ok(total)
}
