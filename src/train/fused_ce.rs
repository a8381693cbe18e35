//! Per-token cross-entropy as one CPU kernel with its own backward.
//!
//! With a 6400-word vocabulary and a small hidden size, the `[tokens, vocab]` logits are the
//! largest tensors of a training step; the composed `log_softmax → gather` makes about ten
//! full-size temporaries forward and backward. This kernel reads the logits once forward
//! (row max, log-sum-exp, target logit) and writes the gradient once backward
//! (`(softmax − onehot) · upstream grad`), with the same f32 arithmetic per row.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Whether the fused kernel applies (CPU, f32 logits, u32 targets); otherwise callers use
/// the composed form.
pub fn supported(logits: &Tensor, targets: &Tensor) -> bool {
    logits.device().is_cpu() && logits.dtype() == candle_core::DType::F32 && targets.dtype() == candle_core::DType::U32
}

/// Loss per row of `logits` [n, v] against `targets` [n].
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy)
}

fn contiguous<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("cross-entropy: {what} is not contiguous")))?;
    Ok(&s.as_slice::<T>()?[start..end])
}

/// (row max, log Σ exp(x − max)) in f32, summing in index order.
fn row_stats(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    (max, sum.ln())
}

struct CrossEntropy;

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let logits = contiguous::<f32>(s1, l1, "logits")?;
        let targets = contiguous::<u32>(s2, l2, "targets")?;
        if targets.len() != n {
            candle_core::bail!("cross-entropy: {} targets for {n} rows", targets.len());
        }
        let out: Vec<f32> = logits
            .par_chunks(v)
            .zip(targets.par_iter())
            .map(|(row, &t)| {
                let (max, log_sum) = row_stats(row);
                let target = row.get(t as usize).copied().unwrap_or(f32::NAN);
                (max + log_sum) - target
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, logits: &Tensor, targets: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = logits.apply_op3_no_bwd(targets, &grad.contiguous()?, &CrossEntropyGrad)?;
        Ok((Some(g), None))
    }
}

/// d loss_n / d logits_n = (softmax(logits_n) − onehot(target_n)) · grad_n.
struct CrossEntropyGrad;

impl CustomOp3 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-grad"
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
        let (n, v) = l1.shape().dims2()?;
        let logits = contiguous::<f32>(s1, l1, "logits")?;
        let targets = contiguous::<u32>(s2, l2, "targets")?;
        let grads = contiguous::<f32>(s3, l3, "gradient")?;
        let mut out = vec![0f32; n * v];
        out.par_chunks_mut(v).zip(logits.par_chunks(v)).zip(targets.par_iter().zip(grads.par_iter())).for_each(
            |((o, row), (&t, &g))| {
                let (max, log_sum) = row_stats(row);
                for (oi, &x) in o.iter_mut().zip(row) {
                    *oi = (x - max - log_sum).exp() * g;
                }
                if let Some(ot) = o.get_mut(t as usize) {
                    *ot -= g;
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    #[test]
    fn matches_the_composed_form_forward_and_backward() {
        let dev = Device::Cpu;
        let data: Vec<f32> = (0..5 * 37).map(|i| ((i * 7919 % 101) as f32 - 50.0) / 13.0).collect();
        let logits = Var::from_tensor(&Tensor::from_vec(data, (5, 37), &dev).unwrap()).unwrap();
        let targets = Tensor::new(&[0u32, 36, 5, 5, 20], &dev).unwrap();
        let weights = Tensor::new(&[1f32, 0.0, 2.0, 0.5, 1.0], &dev).unwrap();

        let fused = cross_entropy_rows(logits.as_tensor(), &targets).unwrap();
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
}
