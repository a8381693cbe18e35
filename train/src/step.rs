//! Gradients of a loss with respect to the trainable parameters, and upstream's
//! `clip_grad_norm_` (global L2 norm, clipped with a 1e-6 guard).

use anyhow::Result;
use candle_core::{DType, Tensor, Var};

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
/// `max_norm / (total + 1e-6)` when that is below 1, as torch does. Reads the norm back.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let total = clip_grad_norm_on_device(grads, max_norm)?;
    Ok(total.to_scalar::<f64>()?)
}

/// [`clip_grad_norm`] without leaving the device: the norm (an f64 scalar tensor) and the
/// clip coefficient `min(1, max_norm / (total + 1e-6))` are computed where the gradients
/// are, and every gradient is multiplied by the coefficient (exactly 1 when not clipping),
/// so a training step never waits for the GPU here. Per-tensor sums of squares in f32,
/// their total in f64.
pub fn clip_grad_norm_on_device(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<Tensor> {
    let (total, coef) = clip_coefficient_on_device(grads, max_norm)?;
    for g in grads.iter_mut().flatten() {
        *g = g.broadcast_mul(&coef.to_dtype(g.dtype())?.to_device(g.device())?)?;
    }
    Ok(total)
}

/// The global norm (f64 scalar tensor) and the clip coefficient `min(1, max_norm / (total +
/// 1e-6))` (f32 scalar), both on the gradients' device, leaving the gradients as they are
/// (AdamW applies the coefficient: `AdamW::step_scaled`). Deterministic: per-tensor sums of
/// squares in f32, their total in f64.
pub fn clip_coefficient_on_device(grads: &[Option<Tensor>], max_norm: f64) -> Result<(Tensor, Tensor)> {
    let present: Vec<Tensor> = grads.iter().flatten().cloned().collect();
    if present.first().is_some_and(|g| mm_model::model::fused_kernels(g.device())) {
        // One kernel per gradient writing fixed partial sums, added in order: deterministic.
        let total = mm_model::fused::sum_of_squares(&present)?.to_dtype(DType::F64)?.sqrt()?;
        let coef = clip_coefficient(&total, max_norm)?;
        return Ok((total, coef));
    }
    let squares: Vec<Tensor> = grads
        .iter()
        .flatten()
        .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_dtype(DType::F64)?.reshape(1))
        .collect::<candle_core::Result<_>>()?;
    let Some(first) = squares.first() else {
        let cpu = candle_core::Device::Cpu;
        return Ok((Tensor::new(0f64, &cpu)?, Tensor::new(1f32, &cpu)?));
    };
    let device = first.device().clone();
    let total = Tensor::cat(&squares, 0)?.sum_all()?.sqrt()?;
    let coef = clip_coefficient(&total, max_norm)?;
    Ok((total, coef.to_device(&device)?))
}

pub use mm_model::fused::clip_coefficient;
