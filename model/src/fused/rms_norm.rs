//! RMSNorm as upstream computes it, in one kernel forward and one backward:
//! `w * (x.float() * rsqrt(mean(x.float()^2) + eps)).to(x.dtype)`.
//!
//! Rounding points are those of the composite form in src/model/norm.rs: the mean is
//! `sum * (1/h)`, `r = 1 / sqrt(mean + eps)` in f32, the normalised row is rounded to x's dtype,
//! then multiplied by `w` and rounded again. The backward rounds `dy * w` and
//! `dy * normed` where autograd would store them and sums `dw` in f32.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::float::{check_float, cpu_slice, with_float_type, FusedFloat};

/// RMSNorm of `x` [.., h] with weight `w` [h] (same dtype as x, f32 or bf16).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    check_float("rms_norm", "x", x)?;
    let h = x.dim(candle_core::D::Minus1)?;
    if w.dims() != [h] || w.dtype() != x.dtype() {
        bail!("rms_norm: weight is {:?} {:?}, expected [{h}] {:?}", w.dims(), w.dtype(), x.dtype());
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

struct RmsNorm {
    eps: f32,
}

/// `1 / h` as candle's `mean` multiplies by it: computed in f64, stored as f32.
fn inv_h(h: usize) -> f32 {
    (1.0 / h as f64) as f32
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "mm-fused-rms-norm"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        with_float_type!(xs.dtype(), self.name(), T => {
            let y = forward_cpu::<T>(cpu_slice(xs, xl, "x")?, cpu_slice(ws, wl, "weight")?, self.eps);
            Ok((T::to_cpu_storage_owned(y), xl.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        with_float_type!(xs.dtype(), self.name(), T => gpu::forward::<T>(xs, xl, ws, wl, self.eps))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let h = w.elem_count();
        let n = x.elem_count();
        // One kernel writes both gradients: dx in [0, n), dw in [n, n + h).
        let packed = x.apply_op3_no_bwd(w, &dy.contiguous()?, &RmsNormBackward { eps: self.eps })?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n, h)?;
        Ok((Some(dx), Some(dw)))
    }
}

fn forward_cpu<T: FusedFloat>(x: &[T], w: &[T], eps: f32) -> Vec<T> {
    let h = w.len();
    let inv_h = inv_h(h);
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(h).zip(x.par_chunks(h)).for_each(|(yr, xr)| {
        let sq: f32 = xr.iter().map(|&v| v.to_f32() * v.to_f32()).sum();
        let r = 1.0 / (sq * inv_h + eps).sqrt();
        for ((o, &v), &wj) in yr.iter_mut().zip(xr).zip(w) {
            *o = T::from_f32(T::round_trip(v.to_f32() * r) * wj.to_f32());
        }
    });
    y
}

/// (x, w, dy) → [dx (flattened), dw], in x's dtype.
struct RmsNormBackward {
    eps: f32,
}

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "mm-fused-rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        with_float_type!(xs.dtype(), self.name(), T => {
            let x = cpu_slice::<T>(xs, xl, "x")?;
            let out = backward_cpu::<T>(x, cpu_slice(ws, wl, "weight")?, cpu_slice(gs, gl, "gradient")?, self.eps);
            let len = out.len();
            Ok((T::to_cpu_storage_owned(out), Shape::from(len)))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        with_float_type!(xs.dtype(), self.name(), T => gpu::backward::<T>(xs, xl, ws, wl, gs, gl, self.eps))
    }
}

fn backward_cpu<T: FusedFloat>(x: &[T], w: &[T], dy: &[T], eps: f32) -> Vec<T> {
    /// Rows per parallel task; each task sums its rows' dw terms, then the tasks' sums are
    /// added in order (deterministic whatever the thread count).
    const ROWS_PER_TASK: usize = 64;
    let h = w.len();
    let inv_h = inv_h(h);
    let mut out = vec![T::zero(); x.len() + h];
    let (dx, dw_out) = out.split_at_mut(x.len());
    let chunk = ROWS_PER_TASK * h;
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk)))
        .map(|(dx_rows, (x_rows, dy_rows))| {
            let mut dw = vec![0f32; h];
            for (dxr, (xr, gr)) in dx_rows.chunks_mut(h).zip(x_rows.chunks(h).zip(dy_rows.chunks(h))) {
                let mut sq = 0f32;
                let mut dot = 0f32;
                for ((&v, &g), &wj) in xr.iter().zip(gr).zip(w) {
                    let v = v.to_f32();
                    sq += v * v;
                    dot += T::round_trip(g.to_f32() * wj.to_f32()) * v;
                }
                let r = 1.0 / (sq * inv_h + eps).sqrt();
                let c = r * r * r * dot * inv_h;
                for (j, o) in dxr.iter_mut().enumerate() {
                    let (v, g) = (xr[j].to_f32(), gr[j].to_f32());
                    let dn = T::round_trip(g * w[j].to_f32());
                    *o = T::from_f32(r * dn - v * c);
                    dw[j] += T::round_trip(g * T::round_trip(v * r));
                }
            }
            dw
        })
        .collect();
    let mut dw = vec![0f32; h];
    for part in &partials {
        dw.iter_mut().zip(part).for_each(|(a, p)| *a += p);
    }
    dw_out.iter_mut().zip(&dw).for_each(|(o, &s)| *o = T::from_f32(s));
    out
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{bail, CudaStorage, Layout, Result, Shape};

    use super::inv_h;
    use crate::fused::cuda::{config, row_threads, u32_arg, view, GpuFloat, RMS_NORM};

    /// Backward blocks: about what an H100/H200 keeps resident; each writes one row of dw partials.
    const BACKWARD_BLOCKS: usize = 1024;
    /// The backward keeps a row of dw partials in shared memory: 48 KiB without opt-in, less
    /// block_sum's own 128 bytes.
    const MAX_H: usize = 12 * 1024 - 64;

    /// (rows, h) of x; h is its last dimension.
    fn rows_and_h(l: &Layout) -> (usize, usize) {
        let h = l.dims().last().copied().unwrap_or(1);
        (l.shape().elem_count() / h.max(1), h)
    }

    pub(super) fn forward<T: GpuFloat>(
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        eps: f32,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &xs.device;
        let (x, w) = (view(T::as_cuda_slice(xs)?, xl, "x")?, view(T::as_cuda_slice(ws)?, wl, "weight")?);
        let (rows, h) = rows_and_h(xl);
        // SAFETY: every element is written by the kernel below.
        let mut y = unsafe { dev.alloc::<T>(rows * h)? };
        let func = RMS_NORM.get::<T>(dev, "rms_norm_fwd")?;
        let stream = dev.cuda_stream();
        let (h32, inv) = (u32_arg(h, "hidden size")?, inv_h(h));
        let mut b = stream.launch_builder(&func);
        b.arg(&x).arg(&w).arg(&mut y).arg(&h32).arg(&inv).arg(&eps);
        // SAFETY: the argument list matches rms_norm_fwd's signature.
        unsafe { b.launch(config(rows, row_threads(h, 2), 0)?) }.w()?;
        drop(b);
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), xl.shape().clone()))
    }

    pub(super) fn backward<T: GpuFloat>(
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
        eps: f32,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &xs.device;
        let x = view(T::as_cuda_slice(xs)?, xl, "x")?;
        let w = view(T::as_cuda_slice(ws)?, wl, "weight")?;
        let dy = view(T::as_cuda_slice(gs)?, gl, "gradient")?;
        let (rows, h) = rows_and_h(xl);
        if h > MAX_H {
            bail!("rms_norm backward: hidden size {h} is over the fused kernel's {MAX_H}");
        }
        let blocks = rows.min(BACKWARD_BLOCKS);
        // SAFETY: the backward kernel writes every dx element and every partial; the dw
        // kernel writes the last h elements.
        let mut out = unsafe { dev.alloc::<T>(rows * h + h)? };
        let mut partial = unsafe { dev.alloc::<f32>(blocks * h)? };
        let stream = dev.cuda_stream();
        let (rows32, h32, blocks32, inv) = (u32_arg(rows, "rows")?, u32_arg(h, "hidden size")?, blocks as u32, inv_h(h));
        {
            let func = RMS_NORM.get::<T>(dev, "rms_norm_bwd")?;
            let mut b = stream.launch_builder(&func);
            b.arg(&x).arg(&w).arg(&dy).arg(&mut out).arg(&mut partial);
            b.arg(&rows32).arg(&h32).arg(&inv).arg(&eps);
            // SAFETY: the argument list matches rms_norm_bwd's; shared memory is h floats.
            unsafe { b.launch(config(blocks, row_threads(h, 2), (h * 4) as u32)?) }.w()?;
        }
        {
            let func = RMS_NORM.get::<T>(dev, "rms_norm_dw")?;
            let mut dw = out.slice_mut(rows * h..);
            let mut b = stream.launch_builder(&func);
            b.arg(&partial).arg(&mut dw).arg(&blocks32).arg(&h32);
            let cfg = LaunchConfig { grid_dim: (h.div_ceil(32) as u32, 1, 1), block_dim: (32, 32, 1), shared_mem_bytes: 0 };
            // SAFETY: the argument list matches rms_norm_dw's signature.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from(rows * h + h)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::reference;
    use crate::fused::compare::{assert_close, random, Tol};
    use candle_core::{DType, Device, Var};

    fn check(shape: &[usize], dtype: DType) {
        let dev = Device::Cpu;
        let h = *shape.last().unwrap();
        let x = Var::from_tensor(&random(shape, 1.0, 1).to_dtype(dtype).unwrap()).unwrap();
        let w = Var::from_tensor(&(random(&[h], 0.5, 2) + 1.0).unwrap().to_dtype(dtype).unwrap()).unwrap();
        let weights = random(shape, 1.0, 3).to_dtype(dtype).unwrap();
        let eps = 1e-5;

        let fused = rms_norm(&x, &w, eps).unwrap();
        let composite = reference::rms_norm(&x, &w, eps).unwrap();
        let tol = Tol::for_dtype(dtype);
        assert_close("rms_norm y", &fused, &composite, tol);

        let gf = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (composite * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close("rms_norm dx", gf.get(&x).unwrap(), gc.get(&x).unwrap(), tol.grad());
        // The composite sums dw in the dtype (bf16 loses bits over many rows); compare with f32 sums.
        let dw_ref = reference::rms_norm_dw(&x, &w, &weights, eps).unwrap();
        assert_close("rms_norm dw", gf.get(&w).unwrap(), &dw_ref, tol.grad());
        let _ = dev;
    }

    #[test]
    fn matches_the_composite_form_f32() {
        check(&[3, 5, 64], DType::F32);
        check(&[1, 37], DType::F32);
        check(&[7, 100], DType::F32);
        check(&[2, 768], DType::F32);
    }

    #[test]
    fn matches_the_composite_form_bf16() {
        check(&[3, 5, 64], DType::BF16);
        check(&[1, 37], DType::BF16);
        check(&[7, 100], DType::BF16);
        check(&[2, 768], DType::BF16);
    }
}
