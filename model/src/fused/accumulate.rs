//! `acc += g` in place for f32 tensors: gradient accumulation into buffers that live across
//! steps (the CUDA-graph training step writes its gradients there, since a replayed graph can
//! only hand results back through memory that existed when it was recorded). Bit-identical to
//! `acc + g`.

use candle_core::{bail, CpuStorage, DType, InplaceOp2, Layout, Result, Tensor};

/// Adds `g` into `acc` (both f32, one shape, one device; `acc` contiguous).
pub fn accumulate_(acc: &Tensor, g: &Tensor) -> Result<()> {
    if acc.dtype() != DType::F32 || g.dtype() != DType::F32 || acc.dims() != g.dims() || !acc.device().same_device(g.device()) {
        bail!("accumulate_: {:?} {:?} into {:?} {:?}: both must be f32 of one shape on one device", g.dims(), g.dtype(), acc.dims(), acc.dtype());
    }
    if !acc.is_contiguous() {
        bail!("accumulate_: the accumulator is not contiguous; it is updated in place");
    }
    acc.inplace_op2(&g.contiguous()?, &Accumulate)
}

struct Accumulate;

impl InplaceOp2 for Accumulate {
    fn name(&self) -> &'static str {
        "mm-fused-accumulate"
    }

    fn cpu_fwd(&self, acc: &mut CpuStorage, al: &Layout, g: &CpuStorage, gl: &Layout) -> Result<()> {
        let (CpuStorage::F32(acc), CpuStorage::F32(g)) = (acc, g) else { bail!("accumulate_: f32 only") };
        let (Some((a0, a1)), Some((g0, g1))) = (al.contiguous_offsets(), gl.contiguous_offsets()) else {
            bail!("accumulate_: operands must be contiguous");
        };
        for (a, b) in acc[a0..a1].iter_mut().zip(&g[g0..g1]) {
            *a += *b;
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, acc: &mut candle_core::CudaStorage, al: &Layout, g: &candle_core::CudaStorage, gl: &Layout) -> Result<()> {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        use candle_core::cuda_backend::{CudaDType, WrapErr};

        use super::cuda::{config, elementwise_grid, view, ADAMW};
        let dev = acc.device.clone();
        let g = view(f32::as_cuda_slice(g)?, gl, "gradient")?;
        let Some((a0, a1)) = al.contiguous_offsets() else { bail!("accumulate_: the accumulator is not contiguous") };
        let n = a1 - a0;
        let mut acc = f32::as_cuda_slice_mut(acc)?.slice_mut(a0..a1);
        let func = ADAMW.get_named(&dev, "accumulate_f32")?;
        let stream = dev.cuda_stream();
        let n64 = n as u64;
        let mut b = stream.launch_builder(&func);
        b.arg(&mut acc).arg(&g).arg(&n64);
        // SAFETY: the argument list matches accumulate_f32's signature.
        unsafe { b.launch(config(elementwise_grid(n), 256, 0)?) }.w()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::compare::random;

    #[test]
    fn equals_the_out_of_place_sum() {
        let (a, g) = (random(&[5, 33], 1.0, 71), random(&[5, 33], 0.5, 72));
        let want = (&a + &g).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let acc = a.copy().unwrap();
        accumulate_(&acc, &g).unwrap();
        assert_eq!(acc.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        assert!(accumulate_(&acc, &g.to_dtype(DType::BF16).unwrap()).is_err());
    }
}
