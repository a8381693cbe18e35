//! Scaled causal softmax of attention scores in one kernel: `softmax(scale * s + causal_mask)`
//! per row in f32, returned in the scores' dtype. Row i of each t × t block keeps columns
//! j ≤ i; the others are exactly 0. This replaces `* scale`, `+ mask`, the f32 casts and
//! candle's softmax; note it scales in f32, where the composite scaled in the dtype (the same
//! for head_dim 64, whose scale 1/8 is exact).
//!
//! Backward: `ds = scale * p * (dp − Σ_j dp_j p_j)` in f32, with p recomputed in f32 from the
//! scores (as the composite's backward uses its f32 probabilities), rounded once.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::float::{check_float, cpu_slice, with_float_type, FusedFloat};

/// Causal softmax of `scale * scores` over the last axis of scores [.., t, t] (f32 or bf16).
pub fn causal_softmax(scores: &Tensor, scale: f32) -> Result<Tensor> {
    check_float("causal_softmax", "scores", scores)?;
    let dims = scores.dims();
    if dims.len() < 2 || dims[dims.len() - 1] != dims[dims.len() - 2] {
        bail!("causal_softmax: scores must be [.., t, t], got {dims:?}");
    }
    scores.contiguous()?.apply_op1(CausalSoftmax { scale })
}

struct CausalSoftmax {
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "mm-fused-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        with_float_type!(s.dtype(), self.name(), T => {
            let p = forward_cpu::<T>(cpu_slice(s, l, "scores")?, side(l), self.scale);
            Ok((T::to_cpu_storage_owned(p), l.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        with_float_type!(s.dtype(), self.name(), T => gpu::forward::<T>(s, l, self.scale))
    }

    fn bwd(&self, scores: &Tensor, _p: &Tensor, dp: &Tensor) -> Result<Option<Tensor>> {
        let ds = scores.apply_op2_no_bwd(&dp.contiguous()?, &CausalSoftmaxBackward { scale: self.scale })?;
        Ok(Some(ds))
    }
}

/// t: the side of the square blocks.
fn side(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1)
}

/// (max z, Σ exp(z − max)) over z = scale · s[0..=i].
fn row_stats<T: FusedFloat>(row: &[T], scale: f32) -> (f32, f32) {
    let max = row.iter().map(|&v| v.to_f32() * scale).fold(f32::NEG_INFINITY, f32::max);
    let sum = row.iter().map(|&v| (v.to_f32() * scale - max).exp()).sum();
    (max, sum)
}

fn forward_cpu<T: FusedFloat>(s: &[T], t: usize, scale: f32) -> Vec<T> {
    let mut p = vec![T::zero(); s.len()];
    p.par_chunks_mut(t).zip(s.par_chunks(t)).enumerate().for_each(|(row, (pr, sr))| {
        let i = row % t;
        let (max, sum) = row_stats(&sr[..=i], scale);
        for (o, &v) in pr[..=i].iter_mut().zip(&sr[..=i]) {
            *o = T::from_f32((v.to_f32() * scale - max).exp() / sum);
        }
    });
    p
}

/// (scores, dp) → ds, in the scores' dtype.
struct CausalSoftmaxBackward {
    scale: f32,
}

impl CustomOp2 for CausalSoftmaxBackward {
    fn name(&self) -> &'static str {
        "mm-fused-causal-softmax-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        with_float_type!(s.dtype(), self.name(), T => {
            let ds = backward_cpu::<T>(cpu_slice(s, l, "scores")?, cpu_slice(gs, gl, "gradient")?, side(l), self.scale);
            Ok((T::to_cpu_storage_owned(ds), l.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        with_float_type!(s.dtype(), self.name(), T => gpu::backward::<T>(s, l, gs, gl, self.scale))
    }
}

fn backward_cpu<T: FusedFloat>(s: &[T], dp: &[T], t: usize, scale: f32) -> Vec<T> {
    let mut ds = vec![T::zero(); s.len()];
    ds.par_chunks_mut(t).zip(s.par_chunks(t).zip(dp.par_chunks(t))).enumerate().for_each(|(row, (out, (sr, gr)))| {
        let i = row % t;
        let (max, sum) = row_stats(&sr[..=i], scale);
        let p: Vec<f32> = sr[..=i].iter().map(|&v| (v.to_f32() * scale - max).exp() / sum).collect();
        let dot: f32 = p.iter().zip(gr).map(|(&pj, &g)| g.to_f32() * pj).sum();
        for ((o, &pj), &g) in out.iter_mut().zip(&p).zip(gr) {
            *o = T::from_f32(scale * (pj * (g.to_f32() - dot)));
        }
    });
    ds
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result, Shape};

    use super::side;
    use crate::fused::cuda::{config, row_threads, u32_arg, view, GpuFloat, CAUSAL_SOFTMAX};

    /// The register-resident kernels' block size for rows of `t` columns starting at the given
    /// element offsets (16-byte vectors of T per thread), or None where they do not apply.
    fn vector_threads<T>(t: usize, starts: &[usize]) -> Option<u32> {
        let per_thread = 16 / std::mem::size_of::<T>();
        let fits = t % (32 * per_thread) == 0 && t / per_thread <= 1024 && starts.iter().all(|s| s % per_thread == 0);
        fits.then_some((t / per_thread) as u32)
    }

    /// The kernel `root` or its `_vec` form, and the block size to launch it with.
    fn pick<T: GpuFloat>(dev: &candle_core::CudaDevice, root: &str, t: usize, starts: &[usize]) -> Result<(candle_core::cuda_backend::cudarc::driver::CudaFunction, u32)> {
        Ok(match vector_threads::<T>(t, starts) {
            Some(threads) => (CAUSAL_SOFTMAX.get::<T>(dev, &format!("{root}_vec"))?, threads),
            None => (CAUSAL_SOFTMAX.get::<T>(dev, root)?, row_threads(t, 4)),
        })
    }

    pub(super) fn forward<T: GpuFloat>(ss: &CudaStorage, l: &Layout, scale: f32) -> Result<(CudaStorage, Shape)> {
        let dev = &ss.device;
        let s = view(T::as_cuda_slice(ss)?, l, "scores")?;
        let (n, t) = (l.shape().elem_count(), side(l));
        // SAFETY: the kernel writes every element of every row.
        let mut p = unsafe { dev.alloc::<T>(n)? };
        let (func, threads) = pick::<T>(dev, "causal_softmax_fwd", t, &[l.start_offset()])?;
        let stream = dev.cuda_stream();
        let t32 = u32_arg(t, "positions")?;
        let mut b = stream.launch_builder(&func);
        b.arg(&s).arg(&mut p).arg(&t32).arg(&scale);
        // SAFETY: the argument list matches causal_softmax_fwd[_vec]'s signature; the _vec form
        // gets one thread per 16 bytes of a row, aligned (vector_threads).
        unsafe { b.launch(config(n / t, threads, 0)?) }.w()?;
        drop(b);
        Ok((CudaStorage::wrap_cuda_slice(p, dev.clone()), l.shape().clone()))
    }

    pub(super) fn backward<T: GpuFloat>(
        ss: &CudaStorage,
        l: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
        scale: f32,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &ss.device;
        let s = view(T::as_cuda_slice(ss)?, l, "scores")?;
        let dp = view(T::as_cuda_slice(gs)?, gl, "gradient")?;
        let (n, t) = (l.shape().elem_count(), side(l));
        // SAFETY: the kernel writes every element of every row.
        let mut ds = unsafe { dev.alloc::<T>(n)? };
        let (func, threads) = pick::<T>(dev, "causal_softmax_bwd", t, &[l.start_offset(), gl.start_offset()])?;
        let stream = dev.cuda_stream();
        let t32 = u32_arg(t, "positions")?;
        let mut b = stream.launch_builder(&func);
        b.arg(&s).arg(&dp).arg(&mut ds).arg(&t32).arg(&scale);
        // SAFETY: as in `forward`, for causal_softmax_bwd[_vec].
        unsafe { b.launch(config(n / t, threads, 0)?) }.w()?;
        drop(b);
        Ok((CudaStorage::wrap_cuda_slice(ds, dev.clone()), l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::compare::{assert_close, random, Tol};
    use crate::fused::reference;
    use candle_core::{DType, Var};

    fn check(shape: &[usize], scale: f32, dtype: DType) {
        let s = Var::from_tensor(&random(shape, 3.0, 21).to_dtype(dtype).unwrap()).unwrap();
        let weights = random(shape, 1.0, 22).to_dtype(dtype).unwrap();

        let fused = causal_softmax(&s, scale).unwrap();
        let composite = reference::causal_softmax(&s, scale).unwrap();
        let tol = Tol::for_dtype(dtype);
        assert_close("causal_softmax p", &fused, &composite, tol);

        let gf = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (composite * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close("causal_softmax ds", gf.get(&s).unwrap(), gc.get(&s).unwrap(), tol.grad());
    }

    #[test]
    fn masked_columns_are_exactly_zero() {
        let t = 6;
        let p = causal_softmax(&random(&[2, t, t], 1.0, 23), 0.5).unwrap().to_vec3::<f32>().unwrap();
        for block in &p {
            for (i, row) in block.iter().enumerate() {
                assert!(row[i + 1..].iter().all(|&v| v == 0.0), "row {i}: {row:?}");
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn matches_the_composite_form_f32() {
        check(&[2, 3, 5, 5], 0.125, DType::F32);
        check(&[1, 1, 1, 1], 0.125, DType::F32);
        check(&[1, 2, 37, 37], 1.0 / 96f32.sqrt(), DType::F32);
    }

    #[test]
    fn matches_the_composite_form_bf16() {
        check(&[2, 3, 5, 5], 0.125, DType::BF16);
        check(&[1, 1, 1, 1], 0.125, DType::BF16);
        check(&[1, 2, 37, 37], 1.0 / 96f32.sqrt(), DType::BF16);
    }
}
