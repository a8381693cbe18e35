//! A bias-free linear layer with an optional upstream LoRA branch (`W x + B(A x)`).
//!
//! The weight is either a dense tensor (every checkpoint format, training) or ggml blocks
//! from a quantized GGUF, multiplied directly by candle's `QMatMul`: like llama.cpp, the
//! activations are quantized to the weight type's dot-product partner (Q8_0 / Q8_K) and
//! the weights are never expanded to floats.

use std::sync::{Arc, OnceLock};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor, D};

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
    /// A dense weight transposed to [in, out], contiguous, made by the first
    /// [`forward_batch_invariant`](Self::forward_batch_invariant): gemm multiplies a few rows
    /// by a row-major right-hand side several times faster than by the transposed view
    /// `forward` uses. (Set only from `weight`, which nothing replaces after construction.)
    transposed: OnceLock<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor) -> Self {
        Self { weight: Weight::Dense(weight), lora: None, transposed: OnceLock::new() }
    }

    /// Drops the transposed copy (its weight's values were changed in place: a training
    /// step updates the `Var` the weight is).
    pub fn clear_cache(&mut self) {
        self.transposed = OnceLock::new();
    }

    /// A layer over a quantized [out, in] matrix. Float ggml types are dequantized by
    /// `QMatMul` itself; callers normally pass those as dense tensors instead.
    pub fn quantized(weight: Arc<QTensor>) -> Result<Self> {
        let dims = weight.shape().dims2()?;
        Ok(Self { weight: Weight::Quantized { matmul: QMatMul::from_arc(weight)?, dims }, lora: None, transposed: OnceLock::new() })
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
        if let Some(y) = self.forward_in_weight_dtype(x, Self::forward)? {
            return Ok(y);
        }
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

impl Linear {
    /// A dense weight kept in another dtype than the activations (an F16 GGUF's matrices,
    /// held as stored for the CPU engine) runs `f` with the weight cast to the activations'
    /// dtype (exact from f16/bf16 to f32); only candle's fallback path gets here.
    fn forward_in_weight_dtype(&self, x: &Tensor, f: fn(&Self, &Tensor) -> Result<Tensor>) -> Result<Option<Tensor>> {
        match &self.weight {
            Weight::Dense(w) if w.dtype() != x.dtype() => {
                let cast = Linear { weight: Weight::Dense(w.to_dtype(x.dtype())?), lora: self.lora.clone(), transposed: OnceLock::new() };
                Ok(Some(f(&cast, x)?))
            }
            _ => Ok(None),
        }
    }

    /// [`forward`](Self::forward) for rows x [m, in] such that each output row has the same
    /// value whatever m is: a decode step over a batch of sequences must give each sequence
    /// what it gets alone, bit for bit (with quantized weights, a last-bit difference can move
    /// the next layer's Q8 activation rounding and grow into a visible one). Costs a row-major
    /// copy of each dense weight (made on first use, kept). Relies on how candle 0.11's CPU
    /// kernels sum (see below); tests/batched_decode.rs checks it for every model kind.
    pub fn forward_batch_invariant(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.forward_in_weight_dtype(x, Self::forward_batch_invariant)? {
            return Ok(y);
        }
        let y = match &self.weight {
            Weight::Dense(w) if w.dim(0)? <= NARROW => narrow_product(x, w)?,
            Weight::Dense(w) => {
                let wt = match self.transposed.get() {
                    Some(wt) => wt,
                    None => {
                        let wt = w.t()?.contiguous()?;
                        self.transposed.get_or_init(|| wt)
                    }
                };
                wide_product(x, wt)?
            }
            Weight::Quantized { matmul, .. } => {
                // candle's one-row Q6K product has a kernel of its own that sums in another
                // order than its many-row one; its other block types use one kernel for both.
                let single_row_kernel = matches!(matmul, QMatMul::QTensor(q) if q.dtype() == GgmlDType::Q6K);
                let m = x.dim(0)?;
                if m == 1 && single_row_kernel {
                    let padded = Tensor::cat(&[x, &x.zeros_like()?], 0)?;
                    matmul.forward(&padded)?.narrow(0, 0, 1)?
                } else {
                    matmul.forward(&x.contiguous()?)?
                }
            }
        };
        match &self.lora {
            None => Ok(y),
            Some((a, b)) => y + matmul_rows_invariant(&matmul_rows_invariant(x, a)?, b)?,
        }
    }
}

// Row-invariant products. gemm (candle's CPU matmul) picks its kernel by shape: a one-row
// kernel, dot products when m·out ≤ 256 and the right-hand side is the transposed view, and a
// blocked kernel whose depth blocks (kc) change at m = 64 when out ≤ 64. Against a row-major
// [in, out] right-hand side things are simpler: in f32, its one-row kernel and its blocked
// kernel sum each output in the same order as long as k fits in one depth block (gemm never
// makes those shorter than 512), and so does its kernel for the transposed product; in
// f16/bf16 every row count from two up gives the same bits. So wide products run on wᵀ made
// contiguous, in f32 as a fixed sum of ≤ 512-deep slices (the slices' partial products are
// added in order, whatever gemm's own blocking would be), in f16/bf16 with a single row
// padded to two; narrow ones (a router, a LoRA A) are broadcast products summed per row in
// f32.

/// Widest output that [`narrow_product`] handles.
const NARROW: usize = 64;

/// Depth of the slices an f32 [`wide_product`] is summed over: gemm's shortest depth block.
const DEPTH_SLICE: usize = 512;

/// `x · wᵀ` for rows x [m, in] and a narrow w [out, in], out ≤ [`NARROW`].
fn narrow_product(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let prod = x.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(&w.to_dtype(DType::F32)?.unsqueeze(0)?)?;
    prod.sum(D::Minus1)?.to_dtype(dtype)
}

/// `x · wt` for rows x [m, in] and wt [in, out] contiguous.
fn wide_product(x: &Tensor, wt: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (m, k) = x.dims2()?;
    if x.dtype() != DType::F32 {
        if m == 1 {
            return Tensor::cat(&[&x, &x.zeros_like()?], 0)?.matmul(wt)?.narrow(0, 0, 1);
        }
        return x.matmul(wt);
    }
    let mut y: Option<Tensor> = None;
    for start in (0..k).step_by(DEPTH_SLICE) {
        let len = DEPTH_SLICE.min(k - start);
        let (xs, ws) = if len == k { (x.clone(), wt.clone()) } else { (x.narrow(1, start, len)?.contiguous()?, wt.narrow(0, start, len)?) };
        let part = f32_slice_product(&xs, &ws)?;
        y = Some(match y {
            None => part,
            Some(y) => (y + part)?,
        });
    }
    y.ok_or_else(|| candle_core::Error::Msg("a product over an empty dimension".into()))
}

/// `x · wt` for x [m, k] and wt [k, out] with k ≤ [`DEPTH_SLICE`], f32. gemm vectorises its
/// blocked kernel over the left operand's rows: for a few rows of x that wastes most of each
/// vector, so from 2 to 48 rows the product runs transposed, (wtᵀ · xᵀ)ᵀ, with the weight's
/// columns in the vectors (same sums, same bits: the kernel adds each output's k terms in
/// order either way; 2-3× faster at 4-16 rows).
fn f32_slice_product(x: &Tensor, wt: &Tensor) -> Result<Tensor> {
    let m = x.dim(0)?;
    if (2..=48).contains(&m) {
        wt.t()?.matmul(&x.t()?)?.t()?.contiguous()
    } else {
        x.matmul(wt)
    }
}

/// `x · wᵀ` for rows x [m, in] and w [out, in], each output row independent of m (LoRA
/// factors: small, so transposed per call).
fn matmul_rows_invariant(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if w.dim(0)? <= NARROW {
        narrow_product(x, w)
    } else {
        wide_product(x, &w.t()?.contiguous()?)
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
