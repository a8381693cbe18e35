//! Rotate-half (non-interleaved) RoPE, rounded exactly as `candle_nn::rotary_emb::rope_slow`
//! computes it in x's dtype: `y = round(round(x * cos) + round(rotate_half(x) * sin))`, i.e.
//!
//! ```text
//! y[i]       = x[i] * cos[i] - x[i + d/2] * sin[i]
//! y[i + d/2] = x[i + d/2] * cos[i] + x[i] * sin[i]
//! ```
//!
//! so bf16 results are bit-identical to the composite form. The backward is the transpose
//! rotation (the same op with −sin), again rounded as autograd would. x may be any strided
//! [b, h, t, d] view (q and k arrive transposed); the result is contiguous.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::float::{check_float, cpu_slice, with_float_type, FusedFloat};

/// RoPE of x [b, h, t, d] with cos, sin [≥ t, d/2] in x's dtype (rows 0..t are used).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    check_float("rope", "x", x)?;
    let (_, _, t, d) = x.dims4()?;
    if d % 2 != 0 {
        bail!("rope: head dim {d} is odd");
    }
    for (what, table) in [("cos", cos), ("sin", sin)] {
        let (rows, half) = table.dims2()?;
        if rows < t || half != d / 2 || table.dtype() != x.dtype() {
            bail!("rope: {what} is {:?} {:?}, expected [≥{t}, {}] {:?}", table.dims(), table.dtype(), d / 2, x.dtype());
        }
    }
    let cos = cos.narrow(0, 0, t)?.contiguous()?;
    let sin = sin.narrow(0, 0, t)?.contiguous()?;
    x.apply_op3(&cos, &sin, Rope { sign: 1.0 })
}

/// Rotates by `sign * sin`: 1 forward, −1 for the backward (the transpose rotation).
struct Rope {
    sign: f32,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "mm-fused-rope"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        with_float_type!(xs.dtype(), self.name(), T => {
            let x = T::cpu_storage_as_slice(xs)?;
            let y = rotate_cpu::<T>(x, xl, cpu_slice(cs, cl, "cos")?, cpu_slice(ss, sl, "sin")?, self.sign)?;
            Ok((T::to_cpu_storage_owned(y), xl.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        cs: &candle_core::CudaStorage,
        cl: &Layout,
        ss: &candle_core::CudaStorage,
        sl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        with_float_type!(xs.dtype(), self.name(), T => gpu::rotate::<T>(xs, xl, cs, cl, ss, sl, self.sign))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = dy.apply_op3_no_bwd(cos, sin, &Rope { sign: -self.sign })?;
        Ok((Some(dx), None, None))
    }
}

/// The element offsets of x: (start, [stride_b, stride_h, stride_t, stride_d]).
fn strides(l: &Layout) -> Result<(usize, [usize; 4])> {
    let s = l.stride();
    if s.len() != 4 {
        bail!("rope: x must be [b, h, t, d], got {:?}", l.dims());
    }
    Ok((l.start_offset(), [s[0], s[1], s[2], s[3]]))
}

fn rotate_cpu<T: FusedFloat>(x: &[T], xl: &Layout, cos: &[T], sin: &[T], sign: f32) -> Result<Vec<T>> {
    let (_, heads, seq, d) = xl.shape().dims4()?;
    let half = d / 2;
    let (start, [sb, sh, st, sd]) = strides(xl)?;
    let mut y = vec![T::zero(); xl.shape().elem_count()];
    y.par_chunks_mut(d).enumerate().for_each(|(row, out)| {
        let (t, bh) = (row % seq, row / seq);
        let base = start + (bh / heads) * sb + (bh % heads) * sh + t * st;
        for i in 0..half {
            let x1 = x[base + i * sd].to_f32();
            let x2 = x[base + (i + half) * sd].to_f32();
            let c = cos[t * half + i].to_f32();
            let s = sign * sin[t * half + i].to_f32();
            out[i] = T::from_f32(T::round_trip(x1 * c) - T::round_trip(x2 * s));
            out[i + half] = T::from_f32(T::round_trip(x2 * c) + T::round_trip(x1 * s));
        }
    });
    Ok(y)
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result, Shape};

    use super::strides;
    use crate::fused::cuda::{config, grid_for, u32_arg, view, GpuFloat, ROPE};

    pub(super) fn rotate<T: GpuFloat>(
        xs: &CudaStorage,
        xl: &Layout,
        cs: &CudaStorage,
        cl: &Layout,
        ss: &CudaStorage,
        sl: &Layout,
        sign: f32,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &xs.device;
        let (_, heads, seq, d) = xl.shape().dims4()?;
        let (start, [sb, sh, st, sd]) = strides(xl)?;
        let x = T::as_cuda_slice(xs)?.slice(start..);
        let (cos, sin) = (view(T::as_cuda_slice(cs)?, cl, "cos")?, view(T::as_cuda_slice(ss)?, sl, "sin")?);
        let n = xl.shape().elem_count();
        let pairs = u32_arg(n / 2, "rotated pairs")?;
        // SAFETY: the kernel writes both halves of every pair.
        let mut y = unsafe { dev.alloc::<T>(n)? };
        let func = ROPE.get::<T>(dev, "rope")?;
        let stream = dev.cuda_stream();
        let (heads, seq, half) = (u32_arg(heads, "heads")?, u32_arg(seq, "positions")?, u32_arg(d / 2, "head dim")?);
        let [sb, sh, st, sd] = [sb as u64, sh as u64, st as u64, sd as u64];
        let mut b = stream.launch_builder(&func);
        b.arg(&x).arg(&cos).arg(&sin).arg(&mut y).arg(&heads).arg(&seq).arg(&half);
        b.arg(&sb).arg(&sh).arg(&st).arg(&sd).arg(&sign).arg(&pairs);
        // SAFETY: the argument list matches rope's signature.
        unsafe { b.launch(config(grid_for(n / 2, 256), 256, 0)?) }.w()?;
        drop(b);
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::compare::{assert_close, random, Tol};
    use crate::fused::reference;
    use candle_core::{DType, Var};

    /// x is built as [b, t, h, d] and transposed, as attention hands q and k over.
    fn check(b: usize, h: usize, t: usize, d: usize, dtype: DType) {
        let x = Var::from_tensor(&random(&[b, t, h, d], 1.0, 11).to_dtype(dtype).unwrap()).unwrap();
        let xt = x.transpose(1, 2).unwrap();
        let angles = random(&[t + 3, d / 2], 2.0, 12);
        let (cos, sin) = (angles.cos().unwrap().to_dtype(dtype).unwrap(), angles.sin().unwrap().to_dtype(dtype).unwrap());
        let weights = random(&[b, h, t, d], 1.0, 13).to_dtype(dtype).unwrap();

        let fused = rope(&xt, &cos, &sin).unwrap();
        let composite = reference::rope(&xt, &cos, &sin).unwrap();
        // Same rounding points as rope_slow: bit-identical in either dtype.
        let exact = Tol { rel: 0.0, abs: 0.0 };
        assert_close("rope y", &fused, &composite, exact);

        let gf = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (composite * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close("rope dx", gf.get(&x).unwrap(), gc.get(&x).unwrap(), exact);
    }

    /// A view with a start offset and gaps, as a slice of a fused qkv projection would be.
    #[test]
    fn takes_any_strided_view() {
        let (b, t, h, d) = (2, 7, 3, 16);
        let qkv = Var::from_tensor(&random(&[b, t, 3 * h, d], 1.0, 14)).unwrap();
        let k = qkv.narrow(2, h, h).unwrap().transpose(1, 2).unwrap();
        assert!(!k.is_contiguous() && k.layout().start_offset() > 0);
        let angles = random(&[t, d / 2], 2.0, 15);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let weights = random(&[b, h, t, d], 1.0, 16);
        let fused = rope(&k, &cos, &sin).unwrap();
        let composite = reference::rope(&k, &cos, &sin).unwrap();
        let exact = Tol { rel: 0.0, abs: 0.0 };
        assert_close("rope y", &fused, &composite, exact);
        let gf = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (composite * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close("rope d(qkv)", gf.get(&qkv).unwrap(), gc.get(&qkv).unwrap(), exact);
    }

    #[test]
    fn matches_rope_slow_f32() {
        check(2, 3, 5, 8, DType::F32);
        check(1, 2, 1, 64, DType::F32);
        check(2, 2, 37, 96, DType::F32);
    }

    #[test]
    fn matches_rope_slow_bf16() {
        check(2, 3, 5, 8, DType::BF16);
        check(1, 2, 1, 64, DType::BF16);
        check(2, 2, 37, 96, DType::BF16);
    }
}
