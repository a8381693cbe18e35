//! The engine's weight matrices: each projection of the candle model taken over in its stored
//! format (f32/f16/bf16 values, or ggml blocks as the GGUF holds them), with its LoRA branch.

use anyhow::{bail, Context, Result};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Tensor};

use mm_kernels::float::FMatrix;
use mm_kernels::quant::{QMatrix, QType};

use crate::model::linear::{Linear, Weight};

pub enum Matrix {
    Float(FMatrix),
    Quant(QMatrix),
}

impl Matrix {
    pub fn rows(&self) -> usize {
        match self {
            Matrix::Float(m) => m.rows(),
            Matrix::Quant(m) => m.rows(),
        }
    }

    pub fn row_align(&self) -> usize {
        match self {
            Matrix::Float(m) => m.row_align(),
            Matrix::Quant(m) => m.row_align(),
        }
    }

    /// A dense [rows, cols] tensor (f32, f16 or bf16, any device-side dtype converted).
    pub fn from_tensor(w: &Tensor) -> Result<Matrix> {
        let (rows, cols) = w.dims2()?;
        let w = w.to_device(&candle_core::Device::Cpu)?.contiguous()?;
        Ok(Matrix::Float(match w.dtype() {
            DType::F16 => FMatrix::from_f16(rows, cols, &w.flatten_all()?.to_vec1::<half::f16>()?),
            DType::BF16 => FMatrix::from_bf16(rows, cols, &w.flatten_all()?.to_vec1::<half::bf16>()?),
            _ => FMatrix::from_f32(rows, cols, &w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
        }))
    }

    /// ggml blocks as stored; float ggml types as float matrices.
    fn from_qtensor(q: &QTensor) -> Result<Matrix> {
        let (rows, cols) = q.shape().dims2()?;
        let ty = match q.dtype() {
            GgmlDType::Q4_0 => QType::Q4_0,
            GgmlDType::Q4_1 => QType::Q4_1,
            GgmlDType::Q5_0 => QType::Q5_0,
            GgmlDType::Q5_1 => QType::Q5_1,
            GgmlDType::Q8_0 => QType::Q8_0,
            GgmlDType::Q4K => QType::Q4K,
            GgmlDType::Q5K => QType::Q5K,
            GgmlDType::Q6K => QType::Q6K,
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                return Matrix::from_tensor(&q.dequantize(&candle_core::Device::Cpu)?.to_dtype(match q.dtype() {
                    GgmlDType::F16 => DType::F16,
                    GgmlDType::BF16 => DType::BF16,
                    _ => DType::F32,
                })?)
            }
            other => bail!("ggml type {other:?} has no CPU kernel in mm"),
        };
        let data = q.data()?;
        Ok(Matrix::Quant(QMatrix::new(ty, rows, cols, &data).map_err(anyhow::Error::msg)?))
    }
}

/// A projection `W x (+ B(A x))`.
pub struct Proj {
    pub w: Matrix,
    /// LoRA A [r, in] and B [out, r].
    pub lora: Option<(FMatrix, FMatrix)>,
}

impl Proj {
    pub fn from_linear(l: &Linear) -> Result<Proj> {
        let w = match &l.weight {
            Weight::Dense(t) => Matrix::from_tensor(t)?,
            Weight::Quantized { matmul, .. } => match matmul {
                QMatMul::QTensor(q) => Matrix::from_qtensor(q)?,
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => Matrix::from_tensor(t)?,
            },
        };
        let lora = match &l.lora {
            None => None,
            Some((a, b)) => {
                let float = |t: &Tensor| -> Result<FMatrix> {
                    match Matrix::from_tensor(&t.to_dtype(DType::F32)?)? {
                        Matrix::Float(f) => Ok(f),
                        Matrix::Quant(_) => unreachable!("from_tensor makes float matrices"),
                    }
                };
                Some((float(a).context("LoRA A")?, float(b).context("LoRA B")?))
            }
        };
        Ok(Proj { w, lora })
    }

    pub fn rows(&self) -> usize {
        self.w.rows()
    }
}
