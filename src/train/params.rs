//! A model whose weights are candle `Var`s: built from a checkpoint, updated in place by the
//! optimizer, written back out as a checkpoint.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::converters::{Checkpoint, MiniMindConfig, Provenance, TokenizerFiles};
use crate::model::MiniMind;

pub struct TrainableModel {
    pub config: MiniMindConfig,
    pub model: MiniMind,
    /// Trainable parameters in upstream state-dict order (the tied head is the embedding).
    pub params: Vec<(String, Var)>,
    pub tokenizer: TokenizerFiles,
}

impl TrainableModel {
    /// f32 master weights on `device`, whatever the checkpoint's dtype.
    pub fn from_checkpoint(ckpt: &Checkpoint, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let mut params = Vec::new();
        {
            let mut data = varmap.data().lock().expect("fresh VarMap");
            for (name, t) in ckpt.tensors() {
                let var = Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(device)?)?;
                data.insert(name.clone(), var.clone());
                params.push((name.clone(), var));
            }
        }
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let model = MiniMind::new(&ckpt.config, vb).context("building the trainable model")?;
        Ok(Self { config: ckpt.config.clone(), model, params, tokenizer: ckpt.tokenizer.clone() })
    }

    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.params.iter().map(|(_, v)| v)
    }

    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The current weights as a checkpoint (on the CPU, in `dtype`).
    pub fn to_checkpoint(&self, dtype: DType, provenance: Provenance) -> Result<Checkpoint> {
        let tensors = self
            .params
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_device(&Device::Cpu)?.to_dtype(dtype)?)))
            .collect::<Result<Vec<(String, Tensor)>>>()?;
        Checkpoint::new(self.config.clone(), tensors, self.tokenizer.clone(), provenance)
    }
}
