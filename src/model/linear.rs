//! A bias-free linear layer with an optional upstream LoRA branch (`W x + B(A x)`).

use candle_core::{Result, Tensor};

#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub lora: Option<(Tensor, Tensor)>,
}

impl Linear {
    pub fn new(weight: Tensor) -> Self {
        Self { weight, lora: None }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.broadcast_matmul(&self.weight.t()?)?;
        match &self.lora {
            None => Ok(y),
            Some((a, b)) => y + x.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)?,
        }
    }
}
