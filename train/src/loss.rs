//! Losses as upstream writes them in PyTorch.

use candle_core::{DType, Result, Tensor, D};

/// Per-token cross-entropy [b, t] of logits [b, t, v] against targets [b, t]
/// (`CrossEntropyLoss(reduction='none')`), computed in f32.
pub fn per_token_ce(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if mm_model::model::fused_kernels(logits.device()) && targets.dtype() == DType::U32 {
        // One kernel over the logits in their own dtype (f32 math), no f32 copy of them.
        let dims = targets.dims().to_vec();
        let v = logits.dim(D::Minus1)?;
        return mm_model::fused::cross_entropy(&logits.reshape(((), v))?, &targets.flatten_all()?)?.reshape(dims);
    }
    let logits = logits.to_dtype(DType::F32)?;
    if crate::fused_ce::supported(&logits, targets) {
        let dims = targets.dims().to_vec();
        let v = logits.dim(D::Minus1)?;
        let rows = crate::fused_ce::cross_entropy_rows(&logits.reshape(((), v))?, &targets.flatten_all()?)?;
        return rows.reshape(dims);
    }
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    Ok(log_probs.gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?.squeeze(D::Minus1)?.neg()?)
}

/// `(ce · mask).sum() / mask.sum()`: the mean over the tokens that count.
pub fn masked_mean(per_token: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?;
    (per_token * &mask)?.sum_all()?.broadcast_div(&mask.sum_all()?)
}

/// Log-probability of each target token [b, t] (upstream `logits_to_log_probs`).
pub fn token_log_probs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(per_token_ce(logits, targets)?.neg()?)
}

/// `F.logsigmoid`: `min(x, 0) − log(1 + exp(−|x|))`, stable for either sign.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let tail = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    x.minimum(0f64)?.sub(&tail)
}

/// `F.kl_div(input, target, reduction='batchmean')` over rows [n, v], with the target given
/// as log-probabilities: `Σ p·(log p − input) / n`. Terms where `p` underflows to 0 are 0,
/// as torch's `xlogy` makes them.
pub fn kl_div_batchmean(input_log_probs: &Tensor, target_log_probs: &Tensor) -> Result<Tensor> {
    let n = input_log_probs.dim(0)? as f64;
    let p = target_log_probs.exp()?;
    (p * (target_log_probs - input_log_probs)?)?.sum_all()? / n
}
