//! Token embedding lookup with a deterministic backward.
//!
//! candle's `embedding` is `index_select`, whose gradient is `index_add`; on CUDA that kernel
//! runs in a single block, which makes it one of the slowest steps of a training step
//! (~5 ms for 16k tokens). Here the backward gives each vocabulary row its own block, which sums
//! the gradient rows of that token in position order (f32, rounded once): no atomics, the same
//! bits every run. The forward is a plain gather.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};

use super::float::{check_float, cpu_slice, with_float_type, FusedFloat};

/// Rows of `weight` [vocab, h] (f32 or bf16) for `ids` (u32, any shape): `[..ids, h]`.
pub fn embedding(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
    check_float("embedding", "weight", weight)?;
    let (vocab, h) = weight.dims2()?;
    if ids.dtype() != DType::U32 {
        bail!("embedding: ids are {:?}; expected u32", ids.dtype());
    }
    let mut dims = ids.dims().to_vec();
    let flat = ids.flatten_all()?.contiguous()?;
    let rows = weight.contiguous()?.apply_op2(&flat, Embedding { vocab, h })?;
    dims.push(h);
    rows.reshape(dims)
}

struct Embedding {
    vocab: usize,
    h: usize,
}

impl CustomOp2 for Embedding {
    fn name(&self) -> &'static str {
        "mm-fused-embedding"
    }

    fn cpu_fwd(&self, ws: &CpuStorage, wl: &Layout, is: &CpuStorage, il: &Layout) -> Result<(CpuStorage, Shape)> {
        let ids = cpu_slice::<u32>(is, il, "ids")?;
        with_float_type!(ws.dtype(), self.name(), T => {
            let w = cpu_slice::<T>(ws, wl, "weight")?;
            let mut out = Vec::with_capacity(ids.len() * self.h);
            for &id in ids {
                let id = id as usize;
                if id >= self.vocab {
                    bail!("embedding: token id {id} is outside the vocabulary ({})", self.vocab);
                }
                out.extend_from_slice(&w[id * self.h..(id + 1) * self.h]);
            }
            Ok((T::to_cpu_storage_owned(out), Shape::from((ids.len(), self.h))))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
        is: &candle_core::CudaStorage,
        il: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        with_float_type!(ws.dtype(), self.name(), T => gpu::forward::<T>(ws, wl, is, il, self.vocab, self.h))
    }

    fn bwd(&self, _weight: &Tensor, ids: &Tensor, _rows: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dw = dy.contiguous()?.apply_op2_no_bwd(ids, &EmbeddingBackward { vocab: self.vocab, h: self.h })?;
        Ok((Some(dw), None))
    }
}

/// (dy [n, h], ids [n]) → dw [vocab, h] in dy's dtype.
struct EmbeddingBackward {
    vocab: usize,
    h: usize,
}

impl CustomOp2 for EmbeddingBackward {
    fn name(&self) -> &'static str {
        "mm-fused-embedding-backward"
    }

    fn cpu_fwd(&self, ds: &CpuStorage, dl: &Layout, is: &CpuStorage, il: &Layout) -> Result<(CpuStorage, Shape)> {
        let ids = cpu_slice::<u32>(is, il, "ids")?;
        with_float_type!(ds.dtype(), self.name(), T => {
            let dy = cpu_slice::<T>(ds, dl, "gradient")?;
            let mut acc = vec![0f32; self.vocab * self.h];
            for (n, &id) in ids.iter().enumerate() {
                let row = &mut acc[id as usize * self.h..(id as usize + 1) * self.h];
                for (a, &d) in row.iter_mut().zip(&dy[n * self.h..(n + 1) * self.h]) {
                    *a += d.to_f32();
                }
            }
            let out: Vec<T> = acc.into_iter().map(T::from_f32).collect();
            Ok((T::to_cpu_storage_owned(out), Shape::from((self.vocab, self.h))))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ds: &candle_core::CudaStorage,
        dl: &Layout,
        is: &candle_core::CudaStorage,
        il: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        with_float_type!(ds.dtype(), self.name(), T => gpu::backward::<T>(ds, dl, is, il, self.vocab, self.h))
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, Layout, Result, Shape};

    use crate::fused::cuda::{config, elementwise_grid, u32_arg, view, GpuFloat, EMBEDDING};

    pub(super) fn forward<T: GpuFloat>(
        ws: &CudaStorage,
        wl: &Layout,
        is: &CudaStorage,
        il: &Layout,
        vocab: usize,
        h: usize,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &ws.device;
        let w = view(T::as_cuda_slice(ws)?, wl, "weight")?;
        let ids = view(<u32 as CudaDType>::as_cuda_slice(is)?, il, "ids")?;
        let n = il.shape().elem_count();
        // SAFETY: the grid-stride loop writes every element.
        let mut out = unsafe { dev.alloc::<T>(n * h)? };
        let func = EMBEDDING.get::<T>(dev, "embedding_fwd")?;
        let stream = dev.cuda_stream();
        let (n64, h32, v32) = (n as u64, u32_arg(h, "hidden size")?, u32_arg(vocab, "vocabulary")?);
        let mut b = stream.launch_builder(&func);
        b.arg(&w).arg(&ids).arg(&mut out).arg(&n64).arg(&h32).arg(&v32);
        // SAFETY: the argument list matches embedding_fwd's signature.
        unsafe { b.launch(config(elementwise_grid(n * h), 256, 0)?) }.w()?;
        drop(b);
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((n, h))))
    }

    pub(super) fn backward<T: GpuFloat>(
        ds: &CudaStorage,
        dl: &Layout,
        is: &CudaStorage,
        il: &Layout,
        vocab: usize,
        h: usize,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &ds.device;
        let dy = view(T::as_cuda_slice(ds)?, dl, "gradient")?;
        let ids = view(<u32 as CudaDType>::as_cuda_slice(is)?, il, "ids")?;
        let n = il.shape().elem_count();
        // SAFETY: one block per vocabulary row writes all of that row.
        let mut dw = unsafe { dev.alloc::<T>(vocab * h)? };
        let func = EMBEDDING.get::<T>(dev, "embedding_bwd")?;
        let stream = dev.cuda_stream();
        let (n32, h32) = (u32_arg(n, "tokens")?, u32_arg(h, "hidden size")?);
        // EMBEDDING_THREADS in embedding.cu.
        let threads = 256;
        let mut b = stream.launch_builder(&func);
        b.arg(&dy).arg(&ids).arg(&mut dw).arg(&n32).arg(&h32);
        // SAFETY: the argument list matches embedding_bwd's signature.
        unsafe { b.launch(config(vocab, threads, 0)?) }.w()?;
        drop(b);
        Ok((CudaStorage::wrap_cuda_slice(dw, dev.clone()), Shape::from((vocab, h))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_index_select_and_its_gradient() {
        for dtype in [DType::F32, DType::BF16] {
            let w = crate::fused::compare::random(&[11, 7], 1.0, 5).to_dtype(dtype).unwrap();
            let ids = Tensor::new(&[[3u32, 0, 3], [10, 3, 1]], &Device::Cpu).unwrap();
            let weights = crate::fused::compare::random(&[2, 3, 7], 1.0, 6).to_dtype(dtype).unwrap();
            let run = |f: &dyn Fn(&Tensor) -> Tensor| {
                let v = Var::from_tensor(&w).unwrap();
                let y = f(v.as_tensor());
                let g = (&y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                (y, g.get(v.as_tensor()).unwrap().clone())
            };
            let (y1, g1) = run(&|w| embedding(w, &ids).unwrap());
            let (y2, g2) = run(&|w| w.embedding(&ids.flatten_all().unwrap()).unwrap().reshape((2, 3, 7)).unwrap());
            let diff = |a: &Tensor, b: &Tensor| {
                (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
            };
            assert_eq!(diff(&y1, &y2), 0.0, "{dtype:?} rows");
            // Token 3 appears three times: f32 sums agree exactly; bf16 rounds once here and
            // after each add in index_add.
            let tol = if dtype == DType::F32 { 1e-6 } else { 2e-2 };
            assert!(diff(&g1, &g2) <= tol, "{dtype:?} gradient differs by {}", diff(&g1, &g2));
        }
    }

    #[test]
    fn an_id_outside_the_vocabulary_is_an_error() {
        let w = Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap();
        let ids = Tensor::new(&[1u32, 4], &Device::Cpu).unwrap();
        let err = embedding(&w, &ids).unwrap_err().to_string();
        assert!(err.contains("outside the vocabulary"), "{err}");
    }
}
