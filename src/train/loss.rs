//! Losses as upstream writes them in PyTorch.

use candle_core::{DType, Result, Tensor, D};

/// Per-token cross-entropy [b, t] of logits [b, t, v] against targets [b, t]
/// (`CrossEntropyLoss(reduction='none')`), computed in f32.
pub fn per_token_ce(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    if crate::train::fused_ce::supported(&logits, targets) {
        let dims = targets.dims().to_vec();
        let v = logits.dim(D::Minus1)?;
        let rows = crate::train::fused_ce::cross_entropy_rows(&logits.reshape(((), v))?, &targets.flatten_all()?)?;
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
