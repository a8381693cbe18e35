//! The composite candle formulations each fused op replaces, written out here (not borrowed
//! from model/src/model or train/src, which call the fused ops) so that tests and
//! `mm selftest-fused` compare against an independent form and can time it.

use candle_core::{DType, Result, Tensor, D};

/// src/model/norm.rs before fusion: normalise in f32, cast back, then scale.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    normed(x, eps)?.to_dtype(x.dtype())?.broadcast_mul(w)
}

fn normed(x: &Tensor, eps: f64) -> Result<Tensor> {
    let xf = x.to_dtype(DType::F32)?;
    let mean_sq = xf.sqr()?.mean_keepdim(D::Minus1)?;
    xf.broadcast_mul(&(mean_sq + eps)?.sqrt()?.recip()?)
}

/// RMSNorm's weight gradient for upstream gradient `dy`, with the products rounded to the dtype
/// as autograd stores them but summed in f32 (the composite's backward sums in the dtype).
pub fn rms_norm_dw(x: &Tensor, w: &Tensor, dy: &Tensor, eps: f64) -> Result<Tensor> {
    let h = w.elem_count();
    let normed = normed(x, eps)?.to_dtype(x.dtype())?;
    (dy * normed)?.to_dtype(DType::F32)?.reshape(((), h))?.sum(0)?.to_dtype(w.dtype())
}

/// src/model/attention.rs before fusion: candle's differentiable rotate-half RoPE.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    candle_nn::rotary_emb::rope_slow(x, cos, sin)
}

/// src/model/attention.rs before fusion, with the scaling done in f32: `softmax(scale · s +
/// causal mask)` over the last axis in f32, cast back to the scores' dtype.
pub fn causal_softmax(scores: &Tensor, scale: f32) -> Result<Tensor> {
    let mask = causal_mask(scores.dim(D::Minus1)?, scores.device())?;
    causal_softmax_masked(scores, scale, &mask)
}

/// The additive causal mask [t, t]: 0 on and below the diagonal, −∞ above.
pub fn causal_mask(t: usize, device: &candle_core::Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t).flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (t, t), device)
}

/// [`causal_softmax`] with the mask built once by the caller (as the model shares it).
pub fn causal_softmax_masked(scores: &Tensor, scale: f32, mask: &Tensor) -> Result<Tensor> {
    let z = (scores.to_dtype(DType::F32)? * scale as f64)?.broadcast_add(mask)?;
    candle_nn::ops::softmax(&z, D::Minus1)?.to_dtype(scores.dtype())
}

/// src/model/mlp.rs before fusion: `silu(gate) * up` in the tensors' dtype.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    candle_nn::ops::silu(gate)? * up
}

/// train/src/loss.rs's composed form: `−log_softmax(logits in f32)[target]` per row.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let log_probs = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    log_probs.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
}

/// train/src/adamw.rs's update of one parameter: returns (param, exp_avg, exp_avg_sq) after
/// one step with gradient `g` (already scaled by any clip coefficient).
pub fn adamw_step(
    p: &Tensor,
    m: &Tensor,
    v: &Tensor,
    g: &Tensor,
    h: &super::AdamWStep,
) -> Result<(Tensor, Tensor, Tensor)> {
    let t = h.step as i32;
    let bias_correction1 = 1.0 - h.beta1.powi(t);
    let bias_correction2 = 1.0 - h.beta2.powi(t);
    let step_size = h.lr / bias_correction1;
    let bias_correction2_sqrt = bias_correction2.sqrt();
    let decayed = p.affine(1.0 - h.lr * h.weight_decay, 0.0)?;
    let m = (m + ((g - m)? * (1.0 - h.beta1))?)?;
    let v = ((v * h.beta2)? + (g.sqr()? * (1.0 - h.beta2))?)?;
    let denom = ((v.sqrt()? / bias_correction2_sqrt)? + h.eps)?;
    let update = ((&m * -step_size)? / &denom)?;
    Ok(((decayed + update)?, m, v))
}
