//! One AdamW step of a parameter and its moment estimates, in place, exactly as
//! train/src/adamw.rs (torch's single-tensor AdamW) computes it:
//!
//! ```text
//! g = grad · grad_scale                      (when given: the clip coefficient, on the device)
//! p = p · (1 − lr·wd)
//! m = m + (g − m) · (1 − β1)
//! v = v · β2 + g² · (1 − β2)
//! p = p + (m · (−lr / bc1)) / (√v · (1 / √bc2) + ε)     bc_i = 1 − β_i^step
//! ```
//!
//! Each line rounds as candle's composite form does (constants rounded from f64 to f32 as its
//! `affine` does), so the CPU path is bit-identical to train/src/adamw.rs. On CUDA it is one
//! kernel per parameter that reads p, m, v, g once and writes p, m, v once; the gradient scale
//! stays on the device, so clipping needs no host sync. The kernel reads the step's constants
//! from device memory ([`adamw_constants`]), so a CUDA graph that recorded the launches replays
//! every later step after the host rewrites them.

use candle_core::{bail, DType, Result, Tensor};

/// The hyper-parameters of one step. `step` counts from 1 (the bias corrections use it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
}

/// The per-step constants as the kernel takes them: f64 arithmetic on the host, each stored as
/// the f32 candle's `affine` would multiply or add.
#[derive(Debug, Clone, Copy)]
struct Constants {
    decay: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    inv_bc2_sqrt: f32,
    eps: f32,
    neg_step_size: f32,
}

impl Constants {
    fn new(h: &AdamWStep) -> Self {
        let t = h.step as i32;
        let bias_correction1 = 1.0 - h.beta1.powi(t);
        let bias_correction2 = 1.0 - h.beta2.powi(t);
        Self {
            decay: (1.0 - h.lr * h.weight_decay) as f32,
            one_minus_beta1: (1.0 - h.beta1) as f32,
            beta2: h.beta2 as f32,
            one_minus_beta2: (1.0 - h.beta2) as f32,
            inv_bc2_sqrt: (1.0 / bias_correction2.sqrt()) as f32,
            eps: h.eps as f32,
            neg_step_size: (-(h.lr / bias_correction1)) as f32,
        }
    }

    fn to_array(self) -> [f32; 7] {
        [self.decay, self.one_minus_beta1, self.beta2, self.one_minus_beta2, self.inv_bc2_sqrt, self.eps, self.neg_step_size]
    }

    fn from_array(k: [f32; 7]) -> Self {
        let [decay, one_minus_beta1, beta2, one_minus_beta2, inv_bc2_sqrt, eps, neg_step_size] = k;
        Self { decay, one_minus_beta1, beta2, one_minus_beta2, inv_bc2_sqrt, eps, neg_step_size }
    }

    /// (p, m, v) after one step with gradient g (already scaled).
    fn update(&self, p: f32, m: f32, v: f32, g: f32) -> (f32, f32, f32) {
        let decayed = p * self.decay;
        let m = m + (g - m) * self.one_minus_beta1;
        let v = v * self.beta2 + (g * g) * self.one_minus_beta2;
        let denom = v.sqrt() * self.inv_bc2_sqrt + self.eps;
        (decayed + (m * self.neg_step_size) / denom, m, v)
    }
}

/// The step's constants as the kernel reads them: 7 f32 on `device`.
/// On CUDA the copy is queued from page-locked memory (an upload from ordinary memory would
/// wait for the GPU to finish everything queued before it).
pub fn adamw_constants(hyper: &AdamWStep, device: &candle_core::Device) -> Result<Tensor> {
    crate::device::upload(&Constants::new(hyper).to_array(), &[7], device).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
}

/// Writes the step's constants into `buffer` (7 f32 made by [`adamw_constants`]) in place.
pub fn set_adamw_constants(buffer: &Tensor, hyper: &AdamWStep) -> Result<()> {
    buffer.slice_set(&adamw_constants(hyper, buffer.device())?, 0, 0)
}

/// One AdamW step of `param` with `grad`, updating `param`, `exp_avg` and `exp_avg_sq` in
/// place (any tensor sharing their storage sees the change, as with `Var::set`). All four are
/// f32 of one shape on one device; param and the moments must be contiguous and distinct.
/// `grad_scale` is an f32 scalar tensor on the same device that multiplies the gradient first
/// ([`super::clip_coefficient`]).
pub fn adamw_step_(
    param: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    grad: &Tensor,
    hyper: &AdamWStep,
    grad_scale: Option<&Tensor>,
) -> Result<()> {
    if param.device().is_cuda() {
        // The kernel reads its constants from the device; adamw_step_with_ checks the operands.
        return adamw_step_with_(param, exp_avg, exp_avg_sq, grad, &adamw_constants(hyper, param.device())?, grad_scale);
    }
    check(param, exp_avg, exp_avg_sq, grad, grad_scale)?;
    let k = Constants::new(hyper);
    let grad = grad.contiguous()?;
    step_cpu(param, exp_avg, exp_avg_sq, &grad, &k, grad_scale)
}

/// [`adamw_step_`] with the constants given as [`adamw_constants`] made them (on the
/// parameter's device): what a recorded CUDA graph replays.
pub fn adamw_step_with_(
    param: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    grad: &Tensor,
    constants: &Tensor,
    grad_scale: Option<&Tensor>,
) -> Result<()> {
    if constants.dtype() != DType::F32 || constants.elem_count() != 7 || !constants.device().same_device(param.device()) {
        bail!("adamw_step_with_: the constants must be 7 f32 on the parameter's device, got {:?} {:?}", constants.dims(), constants.dtype());
    }
    check(param, exp_avg, exp_avg_sq, grad, grad_scale)?;
    let grad = grad.contiguous()?;
    if param.device().is_cuda() {
        #[cfg(feature = "cuda")]
        {
            let op = gpu::FusedAdamW { constants: constants.clone(), grad, grad_scale: grad_scale.map(|s| s.flatten_all()).transpose()? };
            return param.inplace_op3(exp_avg, exp_avg_sq, &op);
        }
    }
    let k: [f32; 7] = constants.to_vec1::<f32>()?.try_into().map_err(|_| candle_core::Error::Msg("7 constants".into()))?;
    step_cpu(param, exp_avg, exp_avg_sq, &grad, &Constants::from_array(k), grad_scale)
}

fn check(param: &Tensor, exp_avg: &Tensor, exp_avg_sq: &Tensor, grad: &Tensor, grad_scale: Option<&Tensor>) -> Result<()> {
    for (what, t) in [("param", param), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq), ("grad", grad)] {
        if t.dtype() != DType::F32 || t.dims() != param.dims() || !t.device().same_device(param.device()) {
            bail!("adamw_step_: {what} is {:?} {:?}; expected f32 {:?} on the parameter's device", t.dims(), t.dtype(), param.dims());
        }
    }
    for (what, t) in [("param", param), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)] {
        if !t.is_contiguous() {
            bail!("adamw_step_: {what} is not contiguous; it is updated in place");
        }
    }
    if let Some(s) = grad_scale {
        if s.dtype() != DType::F32 || s.elem_count() != 1 || !s.device().same_device(param.device()) {
            bail!("adamw_step_: grad_scale must be one f32 on the parameter's device, got {:?} {:?}", s.dims(), s.dtype());
        }
    }
    Ok(())
}

/// Any device without the kernel: read everything, compute in f32 with the same per-element
/// function, write back in place with `slice_set`.
fn step_cpu(param: &Tensor, m: &Tensor, v: &Tensor, grad: &Tensor, k: &Constants, scale: Option<&Tensor>) -> Result<()> {
    let scale = scale.map(|s| s.flatten_all()?.to_vec1::<f32>().map(|v| v[0])).transpose()?;
    let read = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
    let (mut ps, mut ms, mut vs, gs) = (read(param)?, read(m)?, read(v)?, read(grad)?);
    for i in 0..ps.len() {
        let g = match scale {
            Some(s) => gs[i] * s,
            None => gs[i],
        };
        (ps[i], ms[i], vs[i]) = k.update(ps[i], ms[i], vs[i], g);
    }
    let dev = param.device();
    for (dst, data) in [(param, ps), (m, ms), (v, vs)] {
        let n = data.len();
        dst.flatten_all()?.slice_set(&Tensor::from_vec(data, n, dev)?, 0, 0)?;
    }
    Ok(())
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::{DevicePtr, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{bail, CpuStorage, CudaStorage, InplaceOp3, Layout, Result, Storage, Tensor};

    use crate::fused::cuda::{config, elementwise_grid, view, ADAMW};

    /// Applied to the parameter with the two moments as sources; the gradient and its scale
    /// ride in the op and are read from their storage inside `cuda_fwd`.
    pub(super) struct FusedAdamW {
        pub(super) constants: Tensor,
        pub(super) grad: Tensor,
        pub(super) grad_scale: Option<Tensor>,
    }

    fn cuda_storage<'a>(s: &'a Storage, what: &str) -> Result<&'a CudaStorage> {
        match s {
            Storage::Cuda(c) => Ok(c),
            _ => bail!("adamw_step_: {what} is not on the CUDA device"),
        }
    }

    impl InplaceOp3 for FusedAdamW {
        fn name(&self) -> &'static str {
            "mm-fused-adamw"
        }

        fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
            bail!("mm-fused-adamw runs on CUDA only; adamw_step_ takes the CPU path itself")
        }

        fn cuda_fwd(
            &self,
            ps: &mut CudaStorage,
            pl: &Layout,
            ms: &CudaStorage,
            ml: &Layout,
            vs: &CudaStorage,
            vl: &Layout,
        ) -> Result<()> {
            let dev = ps.device.clone();
            let stream = dev.cuda_stream();
            let (gs, gl) = self.grad.storage_and_layout();
            let grad = view(f32::as_cuda_slice(cuda_storage(&gs, "grad")?)?, gl, "grad")?;
            let scale_guard = self.grad_scale.as_ref().map(|s| s.storage_and_layout());
            let scale = match &scale_guard {
                Some((s, l)) => Some(view(f32::as_cuda_slice(cuda_storage(s, "grad_scale")?)?, l, "grad_scale")?),
                None => None,
            };
            let (Some((p0, p1)), Some((m0, m1)), Some((v0, v1))) =
                (pl.contiguous_offsets(), ml.contiguous_offsets(), vl.contiguous_offsets())
            else {
                bail!("adamw_step_: param and moments must be contiguous");
            };
            let n = p1 - p0;
            let mut p = f32::as_cuda_slice_mut(ps)?.slice_mut(p0..p1);
            let (m, v) = (f32::as_cuda_slice(ms)?.slice(m0..m1), f32::as_cuda_slice(vs)?.slice(v0..v1));
            // candle hands the sources out read-only, but this op owns the moments' update: the
            // kernel writes them through their device pointers. All work is on this one stream,
            // so stream order is the only ordering they need.
            let (m_ptr, _m_sync) = m.device_ptr(&stream);
            let (v_ptr, _v_sync) = v.device_ptr(&stream);
            let (scale_ptr, _scale_sync) = match &scale {
                Some(s) => {
                    let (ptr, sync) = s.device_ptr(&stream);
                    (ptr, Some(sync))
                }
                None => (0, None),
            };
            let (ks, kl) = self.constants.storage_and_layout();
            let k = view(f32::as_cuda_slice(cuda_storage(&ks, "constants")?)?, kl, "constants")?;
            let func = ADAMW.get_named(&dev, "adamw_step")?;
            let n64 = n as u64;
            let mut b = stream.launch_builder(&func);
            b.arg(&mut p).arg(&m_ptr).arg(&v_ptr).arg(&grad).arg(&scale_ptr).arg(&n64).arg(&k);
            // SAFETY: the argument list matches adamw_step's signature (device pointers are
            // passed as u64); m and v are live for the launch and not aliased by p.
            unsafe { b.launch(config(elementwise_grid(n), 256, 0)?) }.w()?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::compare::random;
    use crate::fused::reference;
    use candle_core::{Device, Var};

    fn hyper(step: u64) -> AdamWStep {
        AdamWStep { lr: 5e-4 * step as f64, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step }
    }

    fn assert_same(what: &str, a: &Tensor, b: &Tensor) {
        let (a, b) = (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_eq!(a, b, "{what} differs");
    }

    /// Four steps in place against the composite form, with and without a gradient scale.
    #[test]
    fn is_bit_identical_to_the_composite_form() {
        for scale in [None, Some(0.37f32)] {
            let shape = [7, 37];
            let param = Var::from_tensor(&random(&shape, 1.0, 51)).unwrap();
            let (m, v) = (param.zeros_like().unwrap(), param.zeros_like().unwrap());
            let (mut p_ref, mut m_ref, mut v_ref) = (param.as_tensor().copy().unwrap(), m.copy().unwrap(), v.copy().unwrap());
            let scale_t = scale.map(|s| Tensor::new(s, &Device::Cpu).unwrap());
            for step in 1..=4 {
                let grad = random(&shape, 0.1, 51 + step);
                adamw_step_(&param, &m, &v, &grad, &hyper(step), scale_t.as_ref()).unwrap();
                let g_ref = match scale {
                    Some(s) => (&grad * s as f64).unwrap(),
                    None => grad.clone(),
                };
                (p_ref, m_ref, v_ref) = reference::adamw_step(&p_ref, &m_ref, &v_ref, &g_ref, &hyper(step)).unwrap();
            }
            assert_same("param", param.as_tensor(), &p_ref);
            assert_same("exp_avg", &m, &m_ref);
            assert_same("exp_avg_sq", &v, &v_ref);
        }
    }

    #[test]
    fn rejects_mismatched_state() {
        let p = random(&[3, 4], 1.0, 1);
        let m = random(&[4, 3], 1.0, 2);
        assert!(adamw_step_(&p, &m, &p.zeros_like().unwrap(), &p, &hyper(1), None).is_err());
    }
}
