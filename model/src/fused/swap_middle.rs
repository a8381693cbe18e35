//! `[A, B, C, D] → [A, C, B, D]`, contiguous in and out, with itself as its backward:
//! attention's `[batch, positions, heads, head_dim] ↔ [batch, heads, positions, head_dim]`.
//! candle makes a transposed view contiguous with its generic strided copy and, in the
//! backward, copies each transposed gradient again; this is one coalesced copy each way
//! (16-byte words when a head's row allows). Values are moved, never computed: bit-exact.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// x [A, B, C, D] (any layout) as a contiguous [A, C, B, D].
pub fn swap_middle(x: &Tensor) -> Result<Tensor> {
    let (a, b, c, d) = x.dims4()?;
    if a * b * c * d == 0 {
        bail!("swap_middle: empty tensor {:?}", x.dims());
    }
    if x.elem_count() > u32::MAX as usize {
        // Past the kernel's 32-bit indexing: candle's own copy.
        return x.transpose(1, 2)?.contiguous();
    }
    x.contiguous()?.apply_op1(SwapMiddle)
}

struct SwapMiddle;

/// The input's (A, B, C, D) and the output shape [A, C, B, D].
fn swapped(l: &Layout) -> Result<((usize, usize, usize, usize), Shape)> {
    let (a, b, c, d) = l.shape().dims4()?;
    Ok(((a, b, c, d), Shape::from((a, c, b, d))))
}

impl CustomOp1 for SwapMiddle {
    fn name(&self) -> &'static str {
        "mm-fused-swap-middle"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (dims, shape) = swapped(l)?;
        fn copy<T: Copy>(x: &[T], (a, b, c, d): (usize, usize, usize, usize)) -> Vec<T> {
            let mut y = Vec::with_capacity(x.len());
            for ia in 0..a {
                for ic in 0..c {
                    for ib in 0..b {
                        let at = ((ia * b + ib) * c + ic) * d;
                        y.extend_from_slice(&x[at..at + d]);
                    }
                }
            }
            y
        }
        let Some((start, end)) = l.contiguous_offsets() else { bail!("swap_middle: input not contiguous") };
        let out = match s {
            CpuStorage::F32(x) => CpuStorage::F32(copy(&x[start..end], dims)),
            CpuStorage::BF16(x) => CpuStorage::BF16(copy(&x[start..end], dims)),
            CpuStorage::F16(x) => CpuStorage::F16(copy(&x[start..end], dims)),
            other => bail!("swap_middle: {:?} is not a float type", other.dtype()),
        };
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        gpu::swap(s, l)
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(swap_middle(dy)?))
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};
    use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
    use candle_core::{bail, CudaStorage, Layout, Result, Shape};

    use crate::fused::cuda::{config, elementwise_grid, u32_arg, SWAP_MIDDLE};

    pub(super) fn swap(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let ((_, b, c, d), shape) = super::swapped(l)?;
        let Some((start, end)) = l.contiguous_offsets() else { bail!("swap_middle: input not contiguous") };
        let dev = s.device.clone();
        let stream = dev.cuda_stream();
        let elem = s.dtype().size_in_bytes();
        let (start_b, row_b) = (start * elem, d * elem);
        // 16-byte words where a row and the start are whole words (cudaMalloc aligns the base).
        let (kernel, word) = if row_b % 16 == 0 && start_b % 16 == 0 {
            ("swap_middle_v16", 16)
        } else {
            match elem {
                2 => ("swap_middle_b2", 2),
                4 => ("swap_middle_b4", 4),
                _ => bail!("swap_middle: {:?} is not supported on CUDA", s.dtype()),
            }
        };
        let n_words = u32_arg((end - start) * elem / word, "words")?;
        let (b32, c32, dw) = (u32_arg(b, "axis 1")?, u32_arg(c, "axis 2")?, u32_arg(row_b / word, "row words")?);
        let func = SWAP_MIDDLE.get_named(&dev, kernel)?;
        // The kernels move raw words: the storages are passed as their device addresses.
        macro_rules! launch {
            ($src:expr, $T:ty) => {{
                let src = $src.slice(start..end);
                // SAFETY: every element of the output is written by the kernel.
                let mut dst = unsafe { dev.alloc::<$T>(end - start)? };
                {
                    let (src_ptr, _s) = src.device_ptr(&stream);
                    let (dst_ptr, _d) = dst.device_ptr_mut(&stream);
                    let mut builder = stream.launch_builder(&func);
                    builder.arg(&src_ptr).arg(&dst_ptr).arg(&n_words).arg(&b32).arg(&c32).arg(&dw);
                    // SAFETY: the argument list matches the swap_middle kernels' signature; both
                    // buffers hold n_words words of `word` bytes, 16-byte aligned for v16.
                    unsafe { builder.launch(config(elementwise_grid(n_words as usize), 256, 0)?) }.w()?;
                }
                CudaStorage::wrap_cuda_slice(dst, dev.clone())
            }};
        }
        let out = match &s.slice {
            CudaStorageSlice::F32(x) => launch!(x, f32),
            CudaStorageSlice::BF16(x) => launch!(x, half::bf16),
            CudaStorageSlice::F16(x) => launch!(x, half::f16),
            _ => bail!("swap_middle: {:?} is not a float type", s.dtype()),
        };
        Ok((out, shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::compare::random;
    use candle_core::{DType, Var};

    #[test]
    fn equals_transpose_forward_and_backward() {
        for dtype in [DType::F32, DType::BF16] {
            let x = Var::from_tensor(&random(&[2, 3, 4, 5], 1.0, 91).to_dtype(dtype).unwrap()).unwrap();
            let w = random(&[2, 4, 3, 5], 1.0, 92).to_dtype(dtype).unwrap();
            let fused = swap_middle(x.as_tensor()).unwrap();
            let composite = x.as_tensor().transpose(1, 2).unwrap().contiguous().unwrap();
            let flat = |t: &Tensor| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(flat(&fused), flat(&composite));
            let gf = (&fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (&composite * &w).unwrap().sum_all().unwrap().backward().unwrap();
            assert_eq!(flat(gf.get(x.as_tensor()).unwrap()), flat(gc.get(x.as_tensor()).unwrap()));
        }
    }
}
