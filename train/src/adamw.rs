//! AdamW exactly as `torch.optim.AdamW`'s single-tensor path computes it (decoupled weight
//! decay first, `exp_avg.lerp_`, bias corrections as Python floats), so a step in mm and a
//! step in PyTorch land on the same weights.

use anyhow::{ensure, Result};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// torch's defaults, which upstream uses.
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken (torch keeps one per parameter; they are always equal here).
    pub step: u64,
    pub exp_avg: Vec<Tensor>,
    pub exp_avg_sq: Vec<Tensor>,
    /// On CUDA, the current step's constants in device memory (the fused kernel reads them
    /// there, so a recorded CUDA graph replays any step): written by [`begin_step`](Self::begin_step).
    constants: Option<Tensor>,
}

impl AdamW {
    pub fn new<'a>(config: AdamWConfig, params: impl Iterator<Item = &'a Var>) -> Result<Self> {
        let mut exp_avg = Vec::new();
        let mut exp_avg_sq = Vec::new();
        for p in params {
            exp_avg.push(p.as_tensor().zeros_like()?);
            exp_avg_sq.push(p.as_tensor().zeros_like()?);
        }
        Ok(Self { config, step: 0, exp_avg, exp_avg_sq, constants: None })
    }

    /// One update of every parameter with its gradient (`None`: no gradient, left as is, as
    /// torch skips parameters whose `.grad` is None).
    pub fn step(&mut self, params: &[&Var], grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.step_scaled(params, grads, lr, None)
    }

    /// [`step`](Self::step) with every gradient first multiplied by `grad_scale` (an f32
    /// scalar on the parameters' device: the clip coefficient, never read back). On CUDA each
    /// parameter is one fused kernel (`mm_model::fused::adamw_step_`) updating it and its moments
    /// in place; elsewhere the composite form below.
    pub fn step_scaled(&mut self, params: &[&Var], grads: &[Option<Tensor>], lr: f64, grad_scale: Option<&Tensor>) -> Result<()> {
        ensure!(params.len() == self.exp_avg.len() && grads.len() == params.len(), "optimizer state does not fit the parameters");
        let fused = params.first().is_some_and(|p| mm_model::model::fused_kernels(p.device()));
        if fused {
            self.begin_step(lr)?;
            return self.apply(params, grads, grad_scale);
        }
        let scaled: Vec<Option<Tensor>>;
        let grads = match grad_scale {
            None => grads,
            Some(s) => {
                scaled = grads.iter().map(|g| g.as_ref().map(|g| g.broadcast_mul(&s.to_dtype(g.dtype())?)).transpose()).collect::<candle_core::Result<_>>()?;
                &scaled
            }
        };
        self.step_composite(params, grads, lr)
    }

    /// The host half of a fused (CUDA) step: counts the step and writes its constants (learning
    /// rate, bias corrections) to the device. [`apply`](Self::apply) is the device half.
    pub fn begin_step(&mut self, lr: f64) -> Result<()> {
        let device = self.exp_avg.first().map(|t| t.device().clone()).unwrap_or(candle_core::Device::Cpu);
        self.step += 1;
        let c = self.config;
        let hyper = mm_model::fused::AdamWStep { lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weight_decay: c.weight_decay, step: self.step };
        match &self.constants {
            Some(buffer) => mm_model::fused::set_adamw_constants(buffer, &hyper)?,
            None => self.constants = Some(mm_model::fused::adamw_constants(&hyper, &device)?),
        }
        Ok(())
    }

    /// The device half of a fused step: one kernel per parameter with the constants the last
    /// [`begin_step`](Self::begin_step) wrote; it reads nothing from the host, so a CUDA graph
    /// can record it once and replay it every step.
    pub fn apply(&self, params: &[&Var], grads: &[Option<Tensor>], grad_scale: Option<&Tensor>) -> Result<()> {
        ensure!(params.len() == self.exp_avg.len() && grads.len() == params.len(), "optimizer state does not fit the parameters");
        let Some(constants) = &self.constants else { anyhow::bail!("AdamW::apply before begin_step") };
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let Some(g) = g else { continue };
            mm_model::fused::adamw_step_with_(p.as_tensor(), &self.exp_avg[i], &self.exp_avg_sq[i], &g.to_dtype(candle_core::DType::F32)?, constants, grad_scale)?;
        }
        Ok(())
    }

    fn step_composite(&mut self, params: &[&Var], grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        ensure!(params.len() == self.exp_avg.len() && grads.len() == params.len(), "optimizer state does not fit the parameters");
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias_correction1 = 1.0 - c.beta1.powi(t);
        let bias_correction2 = 1.0 - c.beta2.powi(t);
        let step_size = lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.sqrt();
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let Some(g) = g else { continue };
            let decayed = p.as_tensor().affine(1.0 - lr * c.weight_decay, 0.0)?;
            // lerp with weight 1 - beta1 (< 0.5): m + w·(g − m)
            let m = (&self.exp_avg[i] + ((g - &self.exp_avg[i])? * (1.0 - c.beta1))?)?;
            let v = ((&self.exp_avg_sq[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((v.sqrt()? / bias_correction2_sqrt)? + c.eps)?;
            let update = ((&m * -step_size)? / &denom)?;
            p.set(&(decayed + update)?)?;
            self.exp_avg[i] = m;
            self.exp_avg_sq[i] = v;
        }
        Ok(())
    }
}
