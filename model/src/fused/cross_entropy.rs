//! Per-row cross-entropy, one kernel forward and one backward.
//!
//! With a 6400-word vocabulary and a small hidden size, the `[tokens, vocab]` logits are the
//! largest tensors of a training step; the composed `log_softmax → gather` makes about ten
//! full-size temporaries forward and backward. This reads the logits once forward (row max,
//! log-sum-exp, target logit) and writes the gradient once backward
//! (`(softmax − onehot) · upstream grad`), all in f32 per row. The loss is f32 whatever the
//! logits' dtype; the gradient is in the logits' dtype, rounded once.
//!
//! (This started as the CPU-only kernel of train/src/fused_ce.rs, whose f32 numerics it keeps.)

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::float::{check_float, cpu_slice, with_float_type, FusedFloat};

/// Loss per row of `logits` [n, v] (f32 or bf16) against `targets` [n] (u32), as f32 [n]. A
/// target ≥ v is an error on the CPU and gives a NaN loss on the GPU (checking would cost a
/// device-to-host copy).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    check_float("cross_entropy", "logits", logits)?;
    let (n, _) = logits.dims2()?;
    if targets.dims() != [n] || targets.dtype() != DType::U32 {
        bail!("cross_entropy: targets are {:?} {:?}, expected [{n}] u32", targets.dims(), targets.dtype());
    }
    logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy)
}

struct CrossEntropy;

/// (row max, ln Σ exp(x − max)) in f32, summing in index order.
fn row_stats<T: FusedFloat>(row: &[T]) -> (f32, f32) {
    let max = row.iter().map(|&x| x.to_f32()).fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&x| (x.to_f32() - max).exp()).sum();
    (max, sum.ln())
}

/// The targets, each checked against the vocabulary size.
fn checked_targets<'a>(s: &'a CpuStorage, l: &Layout, v: usize) -> Result<&'a [u32]> {
    let targets = cpu_slice::<u32>(s, l, "targets")?;
    if let Some(t) = targets.iter().find(|&&t| t as usize >= v) {
        bail!("cross_entropy: target {t} is outside the vocabulary of {v}");
    }
    Ok(targets)
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "mm-fused-cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let targets = checked_targets(s2, l2, v)?;
        with_float_type!(s1.dtype(), self.name(), T => {
            let logits = cpu_slice::<T>(s1, l1, "logits")?;
            let loss: Vec<f32> = logits
                .par_chunks(v)
                .zip(targets.par_iter())
                .map(|(row, &t)| {
                    let (max, log_sum) = row_stats(row);
                    (max + log_sum) - row[t as usize].to_f32()
                })
                .collect();
            Ok((CpuStorage::F32(loss), Shape::from(n)))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        with_float_type!(s1.dtype(), self.name(), T => gpu::forward::<T>(s1, l1, s2, l2))
    }

    fn bwd(&self, logits: &Tensor, targets: &Tensor, _loss: &Tensor, dloss: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dloss = dloss.to_dtype(DType::F32)?.contiguous()?;
        let g = logits.apply_op3_no_bwd(targets, &dloss, &CrossEntropyBackward)?;
        Ok((Some(g), None))
    }
}

/// d loss_n / d logits_n = (softmax(logits_n) − onehot(target_n)) · dloss_n.
struct CrossEntropyBackward;

impl CustomOp3 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "mm-fused-cross-entropy-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, v) = l1.shape().dims2()?;
        let targets = checked_targets(s2, l2, v)?;
        let grads = cpu_slice::<f32>(s3, l3, "gradient")?;
        with_float_type!(s1.dtype(), self.name(), T => {
            let logits = cpu_slice::<T>(s1, l1, "logits")?;
            let mut out = vec![T::from_f32(0.0); logits.len()];
            out.par_chunks_mut(v).zip(logits.par_chunks(v)).zip(targets.par_iter().zip(grads.par_iter())).for_each(
                |((o, row), (&t, &g))| {
                    let (max, log_sum) = row_stats(row);
                    for (j, (oj, &x)) in o.iter_mut().zip(row).enumerate() {
                        let mut d = (x.to_f32() - max - log_sum).exp() * g;
                        if j == t as usize {
                            d -= g;
                        }
                        *oj = T::from_f32(d);
                    }
                },
            );
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        with_float_type!(s1.dtype(), self.name(), T => gpu::backward::<T>(s1, l1, s2, l2, s3, l3))
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, Layout, Result, Shape};

    use crate::fused::cuda::{config, row_threads, u32_arg, view, GpuFloat, CROSS_ENTROPY};

    /// Threads per row: the vocabulary is a few thousand, 8+ elements a thread.
    fn threads(v: usize) -> u32 {
        row_threads(v, 8).min(512)
    }

    pub(super) fn forward<T: GpuFloat>(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &s1.device;
        let (n, v) = l1.shape().dims2()?;
        let logits = view(T::as_cuda_slice(s1)?, l1, "logits")?;
        let targets = view(u32::as_cuda_slice(s2)?, l2, "targets")?;
        // SAFETY: thread 0 of each row's block writes its loss.
        let mut loss = unsafe { dev.alloc::<f32>(n)? };
        let func = CROSS_ENTROPY.get::<T>(dev, "cross_entropy_fwd")?;
        let stream = dev.cuda_stream();
        let v32 = u32_arg(v, "vocabulary")?;
        let mut b = stream.launch_builder(&func);
        b.arg(&logits).arg(&targets).arg(&mut loss).arg(&v32);
        // SAFETY: the argument list matches cross_entropy_fwd's signature.
        unsafe { b.launch(config(n, threads(v), 0)?) }.w()?;
        drop(b);
        Ok((CudaStorage::wrap_cuda_slice(loss, dev.clone()), Shape::from(n)))
    }

    pub(super) fn backward<T: GpuFloat>(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &s1.device;
        let (n, v) = l1.shape().dims2()?;
        let logits = view(T::as_cuda_slice(s1)?, l1, "logits")?;
        let targets = view(u32::as_cuda_slice(s2)?, l2, "targets")?;
        let dloss = view(f32::as_cuda_slice(s3)?, l3, "gradient")?;
        // SAFETY: each row's block writes the whole row.
        let mut dlogits = unsafe { dev.alloc::<T>(n * v)? };
        let func = CROSS_ENTROPY.get::<T>(dev, "cross_entropy_bwd")?;
        let stream = dev.cuda_stream();
        let v32 = u32_arg(v, "vocabulary")?;
        let mut b = stream.launch_builder(&func);
        b.arg(&logits).arg(&targets).arg(&dloss).arg(&mut dlogits).arg(&v32);
        // SAFETY: the argument list matches cross_entropy_bwd's signature.
        unsafe { b.launch(config(n, threads(v), 0)?) }.w()?;
        drop(b);
        Ok((CudaStorage::wrap_cuda_slice(dlogits, dev.clone()), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::compare::{assert_close, random, Tol};
    use crate::fused::reference;
    use candle_core::{Device, Var, D};

    #[test]
    fn matches_the_composed_form_forward_and_backward() {
        let dev = Device::Cpu;
        let data: Vec<f32> = (0..5 * 37).map(|i| ((i * 7919 % 101) as f32 - 50.0) / 13.0).collect();
        let logits = Var::from_tensor(&Tensor::from_vec(data, (5, 37), &dev).unwrap()).unwrap();
        let targets = Tensor::new(&[0u32, 36, 5, 5, 20], &dev).unwrap();
        let weights = Tensor::new(&[1f32, 0.0, 2.0, 0.5, 1.0], &dev).unwrap();

        let fused = cross_entropy(logits.as_tensor(), &targets).unwrap();
        let log_probs = candle_nn::ops::log_softmax(logits.as_tensor(), D::Minus1).unwrap();
        let composed = log_probs.gather(&targets.unsqueeze(1).unwrap(), 1).unwrap().squeeze(1).unwrap().neg().unwrap();
        let diff = (&fused - &composed).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "forward differs by {diff}");

        let g1 = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (composed * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (g1.get(logits.as_tensor()).unwrap(), g2.get(logits.as_tensor()).unwrap());
        let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "backward differs by {diff}");
    }

    fn check(n: usize, v: usize, dtype: DType) {
        let logits = Var::from_tensor(&random(&[n, v], 3.0, 41).to_dtype(dtype).unwrap()).unwrap();
        let targets: Vec<u32> = (0..n).map(|i| ((i * 7919 + 13) % v) as u32).collect();
        let targets = Tensor::new(targets, &Device::Cpu).unwrap();
        let weights = random(&[n], 1.0, 42);

        let fused = cross_entropy(&logits, &targets).unwrap();
        let composite = reference::cross_entropy(&logits, &targets).unwrap();
        assert_eq!(fused.dtype(), DType::F32);
        // The loss is f32 in both forms, from the same (rounded) logits.
        let f32_tol = Tol::for_dtype(DType::F32);
        assert_close("cross_entropy loss", &fused, &composite, f32_tol);

        let gf = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (composite * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (gf.get(&logits).unwrap(), gc.get(&logits).unwrap());
        assert_eq!(a.dtype(), dtype);
        assert_close("cross_entropy dlogits", a, b, Tol::for_dtype(dtype).grad());
    }

    #[test]
    fn matches_the_composite_form_f32() {
        check(1, 1, DType::F32);
        check(3, 37, DType::F32);
        check(7, 6400, DType::F32);
    }

    #[test]
    fn matches_the_composite_form_bf16() {
        check(1, 1, DType::BF16);
        check(3, 37, DType::BF16);
        check(7, 6400, DType::BF16);
    }

    #[test]
    fn a_target_outside_the_vocabulary_is_an_error_on_the_cpu() {
        let logits = random(&[2, 5], 1.0, 43);
        let targets = Tensor::new(&[1u32, 5], &Device::Cpu).unwrap();
        assert!(cross_entropy(&logits, &targets).is_err());
    }
}
