//! SwiGLU's gating, `silu(gate) * up`, in one kernel forward and one backward.
//!
//! Rounding: silu is computed in f32 and rounded to the dtype (as candle's CUDA `silu` does;
//! candle's CPU bf16 `silu` rounds after each of its steps, so it can differ by an ulp), then
//! multiplied by `up` and rounded again, as the composite `silu(g) * u` stores it. The
//! backward rounds `dy * u` and `dy * silu(g)` where autograd stores them and applies torch's
//! `silu_backward` formula in f32.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::float::{check_float, cpu_slice, with_float_type, FusedFloat};

/// `silu(gate) * up` for two tensors of one shape and dtype (f32 or bf16).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    check_float("swiglu", "gate", gate)?;
    if gate.dims() != up.dims() || gate.dtype() != up.dtype() {
        bail!("swiglu: gate is {:?} {:?}, up is {:?} {:?}", gate.dims(), gate.dtype(), up.dims(), up.dtype());
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, Swiglu)
}

struct Swiglu;

fn silu(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "mm-fused-swiglu"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout) -> Result<(CpuStorage, Shape)> {
        with_float_type!(gs.dtype(), self.name(), T => {
            let (g, u) = (cpu_slice::<T>(gs, gl, "gate")?, cpu_slice::<T>(us, ul, "up")?);
            let y: Vec<T> = g.par_iter().zip(u).map(|(&g, &u)| T::from_f32(T::round_trip(silu(g.to_f32())) * u.to_f32())).collect();
            Ok((T::to_cpu_storage_owned(y), gl.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
        us: &candle_core::CudaStorage,
        ul: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        with_float_type!(gs.dtype(), self.name(), T => gpu::forward::<T>(gs, gl, us, ul))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        // One kernel writes both gradients: dgate in [0, n), dup in [n, 2n).
        let packed = gate.apply_op3_no_bwd(up, &dy.contiguous()?, &SwigluBackward)?;
        let dgate = packed.narrow(0, 0, n)?.reshape(gate.shape())?;
        let dup = packed.narrow(0, n, n)?.reshape(gate.shape())?;
        Ok((Some(dgate), Some(dup)))
    }
}

/// (gate, up, dy) → [dgate, dup] flattened, in the inputs' dtype.
struct SwigluBackward;

impl CustomOp3 for SwigluBackward {
    fn name(&self) -> &'static str {
        "mm-fused-swiglu-backward"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        with_float_type!(gs.dtype(), self.name(), T => {
            let (g, u, dy) = (cpu_slice::<T>(gs, gl, "gate")?, cpu_slice::<T>(us, ul, "up")?, cpu_slice::<T>(ds, dl, "gradient")?);
            let n = g.len();
            let mut out = vec![T::from_f32(0.0); 2 * n];
            let (dg, du) = out.split_at_mut(n);
            dg.par_iter_mut().zip(du.par_iter_mut()).zip(g.par_iter().zip(u).zip(dy)).for_each(|((dg, du), ((&g, &u), &d))| {
                let (g, d) = (g.to_f32(), d.to_f32());
                let sig = 1.0 / (1.0 + (-g).exp());
                let dsilu = T::round_trip(d * u.to_f32());
                *dg = T::from_f32((dsilu * sig) * (1.0 + g * (1.0 - sig)));
                *du = T::from_f32(d * T::round_trip(silu(g)));
            });
            Ok((T::to_cpu_storage_owned(out), Shape::from(2 * n)))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
        us: &candle_core::CudaStorage,
        ul: &Layout,
        ds: &candle_core::CudaStorage,
        dl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        with_float_type!(gs.dtype(), self.name(), T => gpu::backward::<T>(gs, gl, us, ul, ds, dl))
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result, Shape};

    use crate::fused::cuda::{config, elementwise_grid, view, GpuFloat, SWIGLU};

    pub(super) fn forward<T: GpuFloat>(gs: &CudaStorage, gl: &Layout, us: &CudaStorage, ul: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = &gs.device;
        let (g, u) = (view(T::as_cuda_slice(gs)?, gl, "gate")?, view(T::as_cuda_slice(us)?, ul, "up")?);
        let n = gl.shape().elem_count();
        // SAFETY: the grid-stride loop writes every element.
        let mut y = unsafe { dev.alloc::<T>(n)? };
        let func = SWIGLU.get::<T>(dev, "swiglu_fwd")?;
        let stream = dev.cuda_stream();
        let n64 = n as u64;
        let mut b = stream.launch_builder(&func);
        b.arg(&g).arg(&u).arg(&mut y).arg(&n64);
        // SAFETY: the argument list matches swiglu_fwd's signature.
        unsafe { b.launch(config(elementwise_grid(n), 256, 0)?) }.w()?;
        drop(b);
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), gl.shape().clone()))
    }

    pub(super) fn backward<T: GpuFloat>(
        gs: &CudaStorage,
        gl: &Layout,
        us: &CudaStorage,
        ul: &Layout,
        ds: &CudaStorage,
        dl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &gs.device;
        let (g, u) = (view(T::as_cuda_slice(gs)?, gl, "gate")?, view(T::as_cuda_slice(us)?, ul, "up")?);
        let dy = view(T::as_cuda_slice(ds)?, dl, "gradient")?;
        let n = gl.shape().elem_count();
        // SAFETY: the grid-stride loop writes both halves.
        let mut out = unsafe { dev.alloc::<T>(2 * n)? };
        let func = SWIGLU.get::<T>(dev, "swiglu_bwd")?;
        let stream = dev.cuda_stream();
        let n64 = n as u64;
        let mut b = stream.launch_builder(&func);
        b.arg(&g).arg(&u).arg(&dy).arg(&mut out).arg(&n64);
        // SAFETY: the argument list matches swiglu_bwd's signature.
        unsafe { b.launch(config(elementwise_grid(n), 256, 0)?) }.w()?;
        drop(b);
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from(2 * n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::compare::{assert_close, random, Tol};
    use crate::fused::reference;
    use candle_core::{DType, Var};

    /// Forward and gradients of `sum(f(g, u) * weights)`.
    fn run(f: impl Fn(&Tensor, &Tensor) -> Result<Tensor>, g: &Tensor, u: &Tensor, weights: &Tensor) -> [Tensor; 3] {
        let (g, u) = (Var::from_tensor(g).unwrap(), Var::from_tensor(u).unwrap());
        let y = f(&g, &u).unwrap();
        let grads = (&y * weights).unwrap().sum_all().unwrap().backward().unwrap();
        [y, grads.get(&g).unwrap().clone(), grads.get(&u).unwrap().clone()]
    }

    fn check(shape: &[usize], dtype: DType) {
        let g = random(shape, 2.0, 31).to_dtype(dtype).unwrap();
        let u = random(shape, 1.0, 32).to_dtype(dtype).unwrap();
        let weights = random(shape, 1.0, 33).to_dtype(dtype).unwrap();
        let fused = run(swiglu, &g, &u, &weights);
        // Against the composite in f32 on the same (rounded) inputs: candle's CPU bf16 silu and
        // its backward round after every step, which the fused op (like CUDA and torch) does not.
        let up = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let precise = run(reference::swiglu, &up(&g), &up(&u), &up(&weights));
        let tol = Tol::for_dtype(dtype);
        for ((name, f), p) in ["y", "dgate", "dup"].iter().zip(&fused).zip(&precise) {
            let tol = if *name == "y" { tol } else { tol.grad() };
            assert_close(&format!("swiglu {name}"), f, &p.to_dtype(dtype).unwrap(), tol);
        }
        // And loosely against the composite in the dtype itself.
        let composite = run(reference::swiglu, &g, &u, &weights);
        let loose = Tol { rel: tol.rel * 4.0, abs: tol.abs * 4.0 };
        for ((name, f), c) in ["y", "dgate", "dup"].iter().zip(&fused).zip(&composite) {
            assert_close(&format!("swiglu {name} (composite in {dtype:?})"), f, c, loose);
        }
    }

    #[test]
    fn matches_the_composite_form_f32() {
        check(&[3, 37], DType::F32);
        check(&[1], DType::F32);
        check(&[2, 5, 1408], DType::F32);
    }

    #[test]
    fn matches_the_composite_form_bf16() {
        check(&[3, 37], DType::BF16);
        check(&[1], DType::BF16);
        check(&[2, 5, 1408], DType::BF16);
    }
}
