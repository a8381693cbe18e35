//! The global gradient norm and upstream's clip coefficient, kept on the device:
//! `clip_grad_norm_` needs `Σ‖g‖²` over every gradient, and reading it back each step would
//! stall the stream. [`sum_of_squares`] adds each tensor's squares into one f32 on the device
//! (one kernel per tensor on CUDA); [`clip_coefficient`] turns its root into
//! `min(1, max_norm / (√total + 1e-6))`, which [`adamw_step_`](super::adamw_step_) takes as
//! its `grad_scale`.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, DType, InplaceOp2, Layout, Result, Tensor};

use super::float::{cpu_slice, with_float_type, FusedFloat};

/// Blocks of the per-tensor kernel: each writes one partial sum into the tensor's slot range.
const PARTIALS: usize = 128;

/// Σ x² over all the `tensors` (f32 or bf16, on one device), as an f32 scalar on that device.
/// Deterministic: each tensor's squares go into `PARTIALS` fixed partial sums, which are then
/// added in order (in f64).
pub fn sum_of_squares(tensors: &[Tensor]) -> Result<Tensor> {
    let Some(first) = tensors.first() else {
        bail!("sum_of_squares: no tensors");
    };
    let acc = Tensor::zeros(tensors.len() * PARTIALS, DType::F32, first.device())?;
    for (i, t) in tensors.iter().enumerate() {
        if !t.device().same_device(first.device()) {
            bail!("sum_of_squares: tensors are on different devices");
        }
        if t.elem_count() > 0 {
            acc.narrow(0, i * PARTIALS, PARTIALS)?.inplace_op2(&t.contiguous()?, &AddSquares)?;
        }
    }
    acc.to_dtype(DType::F64)?.sum_all()?.to_dtype(DType::F32)
}

/// Adds Σ src² to the f32 scalar it is applied to.
struct AddSquares;

impl InplaceOp2 for AddSquares {
    fn name(&self) -> &'static str {
        "mm-fused-sum-of-squares"
    }

    fn cpu_fwd(&self, acc: &mut CpuStorage, al: &Layout, src: &CpuStorage, sl: &Layout) -> Result<()> {
        let sum = with_float_type!(src.dtype(), self.name(), T => {
            cpu_slice::<T>(src, sl, "tensor")?.iter().map(|&x| x.to_f32() as f64 * x.to_f32() as f64).sum::<f64>()
        });
        let CpuStorage::F32(acc) = acc else { bail!("sum_of_squares: the accumulator is not f32") };
        // The CPU writes its whole sum into the slot's first partial.
        acc[al.start_offset()] += sum as f32;
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, acc: &mut candle_core::CudaStorage, al: &Layout, src: &candle_core::CudaStorage, sl: &Layout) -> Result<()> {
        with_float_type!(src.dtype(), self.name(), T => gpu::add_squares::<T>(acc, al, src, sl))
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, Layout, Result};

    use crate::fused::cuda::{config, view, GpuFloat, GRAD_NORM};

    pub(super) fn add_squares<T: GpuFloat>(acc: &mut CudaStorage, al: &Layout, src: &CudaStorage, sl: &Layout) -> Result<()> {
        let dev = acc.device.clone();
        let x = view(T::as_cuda_slice(src)?, sl, "tensor")?;
        let n = sl.shape().elem_count();
        let start = al.start_offset();
        let mut acc = f32::as_cuda_slice_mut(acc)?.slice_mut(start..start + super::PARTIALS);
        let func = GRAD_NORM.get::<T>(&dev, "sum_of_squares")?;
        let stream = dev.cuda_stream();
        let n64 = n as u64;
        let mut b = stream.launch_builder(&func);
        b.arg(&x).arg(&n64).arg(&mut acc);
        // SAFETY: the argument list matches sum_of_squares's signature.
        unsafe { b.launch(config(super::PARTIALS, 256, 0)?) }.w()?;
        Ok(())
    }
}

/// torch's `min(1, max_norm / (total + 1e-6))` from the f64 norm, as an f32 scalar (the
/// gradient-clipping coefficient AdamW multiplies in).
pub fn clip_coefficient(total: &Tensor, max_norm: f64) -> candle_core::Result<Tensor> {
    total.affine(1.0, 1e-6)?.recip()?.affine(max_norm, 0.0)?.minimum(1.0)?.to_dtype(candle_core::DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::compare::random;

    #[test]
    fn sums_squares_over_all_tensors() {
        let ts = [random(&[3, 37], 1.0, 61), random(&[5], 2.0, 62).to_dtype(DType::BF16).unwrap(), random(&[1], 1.0, 63)];
        let want: f64 = ts
            .iter()
            .map(|t| t.to_dtype(DType::F64).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap())
            .sum();
        let got = sum_of_squares(&ts).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
    }
}
