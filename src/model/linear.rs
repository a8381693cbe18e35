//! A bias-free linear layer with an optional upstream LoRA branch (`W x + B(A x)`).
//!
//! The weight is either a dense tensor (every checkpoint format, training) or ggml blocks
//! from a quantized GGUF, multiplied directly by candle's `QMatMul`: like llama.cpp, the
//! activations are quantized to the weight type's dot-product partner (Q8_0 / Q8_K) and
//! the weights are never expanded to floats.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};

#[derive(Debug, Clone)]
pub enum Weight {
    /// [out, in] in the model's compute dtype.
    Dense(Tensor),
    /// ggml blocks of a [out, in] matrix; `dims` is (out, in).
    Quantized { matmul: QMatMul, dims: (usize, usize) },
}

#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Weight,
    pub lora: Option<(Tensor, Tensor)>,
}

impl Linear {
    pub fn new(weight: Tensor) -> Self {
        Self { weight: Weight::Dense(weight), lora: None }
    }

    /// A layer over a quantized [out, in] matrix. Float ggml types are dequantized by
    /// `QMatMul` itself; callers normally pass those as dense tensors instead.
    pub fn quantized(weight: Arc<QTensor>) -> Result<Self> {
        let dims = weight.shape().dims2()?;
        Ok(Self { weight: Weight::Quantized { matmul: QMatMul::from_arc(weight)?, dims }, lora: None })
    }

    /// (out, in).
    pub fn dims(&self) -> Result<(usize, usize)> {
        match &self.weight {
            Weight::Dense(w) => w.dims2(),
            Weight::Quantized { dims, .. } => Ok(*dims),
        }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, Weight::Quantized { .. })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Dense(w) => matmul_rows(x, w)?,
            // QMatMul wants a contiguous input whose last dim is `in`; any leading dims.
            Weight::Quantized { matmul, .. } => matmul.forward(&x.contiguous()?)?,
        };
        match &self.lora {
            None => Ok(y),
            Some((a, b)) => y + matmul_rows(&matmul_rows(x, a)?, b)?,
        }
    }
}

/// `x · wᵀ` for x [..., in] and w [out, in], as one 2-D product over all leading rows. A
/// broadcast batched product would, in training, also materialise one weight gradient per
/// batch row before summing them.
fn matmul_rows(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() == 2 {
        return x.matmul(&w.t()?);
    }
    let inp = dims[dims.len() - 1];
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("x has dims") = w.dim(0)?;
    x.reshape(((), inp))?.matmul(&w.t()?)?.reshape(out_dims)
}
