//! Upstream LoRA adapters (`model_lora.py`): rank-r `A` [r, in] and `B` [out, r] on square
//! linear layers, forward `W x + B(A(x))` with no scaling, saved by `save_lora` as
//! `<module>.lora.{A,B}.weight`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};

use crate::checkpoint::Checkpoint;
use crate::pth;

/// One adapter: the module it attaches to (e.g. `model.layers.0.self_attn.q_proj`), A and B.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub module: String,
    pub a: Tensor,
    pub b: Tensor,
}

#[derive(Debug, Clone)]
pub struct Lora {
    pub rank: usize,
    pub adapters: Vec<LoraAdapter>,
}

impl Lora {
    /// Pairs `<module>.lora.A.weight` with `<module>.lora.B.weight`.
    pub fn from_tensors(tensors: Vec<(String, Tensor)>) -> Result<Self> {
        let mut adapters: Vec<LoraAdapter> = Vec::new();
        for (name, _) in &tensors {
            let Some(module) = name.strip_suffix(".lora.A.weight") else {
                if !name.ends_with(".lora.B.weight") {
                    bail!("`{name}` is not a LoRA tensor (<module>.lora.A.weight / .lora.B.weight)");
                }
                continue;
            };
            let find = |suffix: &str| {
                tensors
                    .iter()
                    .find(|(n, _)| n == &format!("{module}.lora.{suffix}.weight"))
                    .map(|(_, t)| t.clone())
                    .with_context(|| format!("`{module}` has no lora.{suffix}.weight"))
            };
            adapters.push(LoraAdapter { module: module.to_string(), a: find("A")?, b: find("B")? });
        }
        if adapters.is_empty() {
            bail!("no LoRA tensors found");
        }
        let rank = adapters[0].a.dims().first().copied().unwrap_or(0);
        for ad in &adapters {
            let (a, b) = (ad.a.dims(), ad.b.dims());
            if a.len() != 2 || b.len() != 2 || a[0] != rank || b[1] != rank {
                bail!("`{}`: A {a:?} and B {b:?} are not rank-{rank} factors", ad.module);
            }
        }
        Ok(Self { rank, adapters })
    }

    pub fn read(path: &Path) -> Result<Self> {
        Self::from_tensors(pth::read_pth(path)?).with_context(|| format!("{}", path.display()))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut tensors = Vec::new();
        for ad in &self.adapters {
            tensors.push((format!("{}.lora.A.weight", ad.module), ad.a.clone()));
            tensors.push((format!("{}.lora.B.weight", ad.module), ad.b.clone()));
        }
        pth::write_pth(path, &tensors)
    }

    /// Checks every adapter fits a weight of the checkpoint.
    pub fn check_against(&self, ckpt: &Checkpoint) -> Result<()> {
        for ad in &self.adapters {
            let name = format!("{}.weight", ad.module);
            let w = ckpt.get(&name).with_context(|| format!("LoRA targets `{name}`, which the model lacks"))?;
            let &[out, inp] = w.dims() else {
                bail!("LoRA targets `{name}`, which has shape {:?}: only matrices can take a LoRA", w.dims());
            };
            if ad.a.dims()[1] != inp || ad.b.dims()[0] != out {
                bail!("LoRA for `{name}` ({:?} x {:?}) does not fit {:?}", ad.b.dims(), ad.a.dims(), w.dims());
            }
        }
        Ok(())
    }

    /// `W + B·A` for every adapted weight, computed in f32 and stored in the weight's dtype.
    pub fn merge_into(&self, ckpt: &Checkpoint) -> Result<Checkpoint> {
        self.check_against(ckpt)?;
        let mut merged = Vec::new();
        for ad in &self.adapters {
            let name = format!("{}.weight", ad.module);
            let w = ckpt.get(&name).expect("checked");
            let delta = ad.b.to_dtype(DType::F32)?.matmul(&ad.a.to_dtype(DType::F32)?)?;
            merged.push((name, (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?));
        }
        let mut out = ckpt.with_tensors(merged)?;
        out.provenance.notes.push(format!("merged a rank-{} LoRA ({} adapters)", self.rank, self.adapters.len()));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Provenance, TokenizerFiles};
    use crate::config::MiniMindConfig;
    use candle_core::Device;

    #[test]
    fn an_adapter_on_a_vector_is_an_error_not_a_panic() {
        let cfg = MiniMindConfig { num_attention_heads: 4, vocab_size: 16, ..MiniMindConfig::with_hidden(64, 1) };
        let tensors = crate::naming::expected_tensors(&cfg)
            .into_iter()
            .map(|(n, s)| (n, Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap()))
            .collect();
        let ckpt = Checkpoint::new(cfg, tensors, TokenizerFiles::default(), Provenance::new("test", Path::new("t"))).unwrap();
        let module = "model.layers.0.input_layernorm";
        let lora = Lora::from_tensors(vec![
            (format!("{module}.lora.A.weight"), Tensor::zeros((2, 64), DType::F32, &Device::Cpu).unwrap()),
            (format!("{module}.lora.B.weight"), Tensor::zeros((64, 2), DType::F32, &Device::Cpu).unwrap()),
        ])
        .unwrap();
        let err = lora.merge_into(&ckpt).unwrap_err().to_string();
        assert!(err.contains("input_layernorm") && err.contains("only matrices"), "{err}");
    }
}
