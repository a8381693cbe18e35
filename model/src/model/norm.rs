//! RMSNorm as upstream computes it: normalise in f32, cast back, then scale.

use candle_core::{DType, Result, Tensor, D};

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }

    /// Differentiable form (candle's fused rms_norm has no backward); on CUDA mm's fused
    /// kernel, which has one.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if super::fused_for(x) {
            return crate::fused::rms_norm(x, &self.weight, self.eps);
        }
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let mean_sq = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf.broadcast_mul(&(mean_sq + self.eps)?.sqrt()?.recip()?)?;
        normed.to_dtype(dtype)?.broadcast_mul(&self.weight)
    }
}
