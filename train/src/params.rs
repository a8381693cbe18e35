//! A model whose weights are candle `Var`s: built from a checkpoint, updated in place by the
//! optimizer, written back out as a checkpoint.

use std::borrow::Cow;
use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};

use mm_converters::{Checkpoint, MiniMindConfig, Provenance, TokenizerFiles};
use mm_model::model::linear::Linear;
use mm_model::model::{MiniMind, WeightSource};

pub struct TrainableModel {
    pub config: MiniMindConfig,
    /// The model over the f32 master weights themselves (updates are seen at once).
    pub model: MiniMind,
    /// Every weight in upstream state-dict order (the tied head is the embedding).
    pub params: Vec<(String, Var)>,
    /// What the optimizer updates: all of `params`, or only adapter weights (LoRA).
    pub trainable: Vec<(String, Var)>,
    /// Trainable LoRA branches: (module, A [r, in], B [out, r]).
    pub lora: Vec<(String, Var, Var)>,
    pub tokenizer: TokenizerFiles,
    pub device: Device,
}

/// Builds the model from the master weights, cast (differentiably) to the compute dtype.
struct CastVars<'a> {
    vars: HashMap<&'a str, &'a Var>,
    dtype: DType,
    device: &'a Device,
}

impl CastVars<'_> {
    fn get(&self, name: &str) -> candle_core::Result<Tensor> {
        let var = self.vars.get(name).ok_or_else(|| candle_core::Error::Msg(format!("no weight `{name}`")))?;
        var.as_tensor().to_dtype(self.dtype)
    }
}

impl WeightSource for CastVars<'_> {
    fn tensor(&self, shape: &[usize], name: &str) -> candle_core::Result<Tensor> {
        let t = self.get(name)?;
        if t.dims() != shape {
            candle_core::bail!("`{name}` has shape {:?}, expected {shape:?}", t.dims());
        }
        Ok(t)
    }

    fn linear(&self, out: usize, inp: usize, name: &str) -> candle_core::Result<Linear> {
        Ok(Linear::new(self.tensor(&[out, inp], &format!("{name}.weight"))?))
    }

    fn head(&self, cfg: &MiniMindConfig, embed: &Tensor) -> candle_core::Result<Linear> {
        if cfg.tie_word_embeddings {
            Ok(Linear::new(embed.clone()))
        } else {
            Ok(Linear::new(self.tensor(&[cfg.vocab_size, cfg.hidden_size], "lm_head.weight")?))
        }
    }

    fn device(&self) -> &Device {
        self.device
    }
}

impl TrainableModel {
    /// f32 master weights on `device`, whatever the checkpoint's dtype.
    pub fn from_checkpoint(ckpt: &Checkpoint, device: &Device) -> Result<Self> {
        let mut params = Vec::new();
        for (name, t) in ckpt.tensors() {
            params.push((name.clone(), Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(device)?)?));
        }
        let model = Self::build(&ckpt.config, &params, DType::F32, device).context("building the trainable model")?;
        Ok(Self {
            config: ckpt.config.clone(),
            model,
            trainable: params.clone(),
            lora: Vec::new(),
            params,
            tokenizer: ckpt.tokenizer.clone(),
            device: device.clone(),
        })
    }

    fn build(cfg: &MiniMindConfig, params: &[(String, Var)], dtype: DType, device: &Device) -> Result<MiniMind> {
        let src = CastVars { vars: params.iter().map(|(n, v)| (n.as_str(), v)).collect(), dtype, device };
        Ok(MiniMind::build(cfg, &src)?)
    }

    /// The model to run this step in `dtype`: the master-weight model for f32, otherwise a
    /// fresh build over casts of the current weights (gradients flow back to the f32 masters).
    pub fn model_for(&self, dtype: DType) -> Result<Cow<'_, MiniMind>> {
        if dtype == DType::F32 {
            return Ok(Cow::Borrowed(&self.model));
        }
        let mut m = Self::build(&self.config, &self.params, dtype, &self.device)?;
        for (module, a, b) in &self.lora {
            m.set_lora(module, a.as_tensor().to_dtype(dtype)?, b.as_tensor().to_dtype(dtype)?)?;
        }
        Ok(Cow::Owned(m))
    }

    pub fn trainable_vars(&self) -> Vec<&Var> {
        self.trainable.iter().map(|(_, v)| v).collect()
    }

    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The current weights as a checkpoint (on the CPU, in `dtype`).
    pub fn to_checkpoint(&self, dtype: DType, provenance: Provenance) -> Result<Checkpoint> {
        let tensors = self
            .params
            .iter()
            // `copy`: on the CPU in the weights' own dtype, the conversions return the Var's
            // own storage, which the optimizer then changes in place; a checkpoint is a
            // snapshot (PPO's old actor was silently the live actor).
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_device(&Device::Cpu)?.to_dtype(dtype)?.copy()?)))
            .collect::<Result<Vec<(String, Tensor)>>>()?;
        Checkpoint::new(self.config.clone(), tensors, self.tokenizer.clone(), provenance)
    }
}
