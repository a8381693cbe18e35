//! LoRA fine-tuning as upstream `model/model_lora.py` + `trainer/train_lora.py` do it:
//!
//! * **Targets** (`apply_lora`): every `nn.Linear` whose weight is square, walked in
//!   `named_modules()` order. For MiniMind that is `q_proj` and `o_proj` of every layer (also
//!   `k_proj`/`v_proj` when there are as many KV heads as heads, and the FFN projections if
//!   `intermediate_size == hidden_size`). The MoE router is a bare `nn.Parameter`, the
//!   embedding an `nn.Embedding`, and `lm_head` is `vocab × hidden`: none qualifies.
//! * **Init** (`LoRA.__init__`): `A` [r, in] ~ N(0, 0.02), `B` [out, r] = 0, so a fresh adapter
//!   leaves the model's output unchanged. The forward is `W x + B(A x)` with no scaling.
//!   Values come from a seeded [`StdRng`]; they are not torch's `normal_` stream.
//! * **Training**: only the adapter weights are trainable (`'lora' in name`); the base weights
//!   are frozen.
//! * **Saving** (`save_lora`): `{<module>.lora.A.weight, <module>.lora.B.weight}` in f32 (the
//!   adapters are created in f32 and autocast leaves parameters alone), one `torch.save` dict,
//!   named `<save_dir>/<lora_name>_<hidden_size>.pth` (no `_moe` suffix, unlike the full saves).

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};

use mm_converters::lora::{Lora, LoraAdapter};
use mm_converters::naming::expected_tensors;
use mm_converters::MiniMindConfig;
use crate::params::TrainableModel;

/// Upstream's `apply_lora(model, rank=8)` default.
pub const DEFAULT_RANK: usize = 8;
/// Upstream's `--lora_name` default.
pub const DEFAULT_NAME: &str = "lora_identity";
/// Standard deviation of `A`'s normal init.
pub const A_INIT_STD: f32 = 0.02;

/// Upstream's weights file name: `<lora_name>_<hidden_size>.pth`.
pub fn lora_file_name(lora_name: &str, cfg: &MiniMindConfig) -> String {
    format!("{lora_name}_{}.pth", cfg.hidden_size)
}

/// The modules upstream's `apply_lora` adapts, in its walk order, with their (out, in) dims.
pub fn lora_targets(cfg: &MiniMindConfig) -> Result<Vec<(String, usize, usize)>> {
    // `lm_head` comes last in named_modules(); it would only qualify for vocab == hidden,
    // which mm cannot put an adapter on.
    if cfg.vocab_size == cfg.hidden_size {
        bail!("lm_head is square (vocab {} == hidden); upstream would adapt it, mm cannot", cfg.vocab_size);
    }
    // Every nn.Linear of MiniMind is a `*_proj`; state-dict order is named_modules() order.
    Ok(expected_tensors(cfg)
        .into_iter()
        .filter_map(|(name, shape)| {
            let module = name.strip_suffix("_proj.weight").map(|m| format!("{m}_proj"))?;
            (shape.len() == 2 && shape[0] == shape[1]).then(|| (module, shape[0], shape[1]))
        })
        .collect())
}

/// Upstream `apply_lora` plus `train_lora.py`'s freezing: rank-`rank` adapters on every
/// square linear layer (A ~ N(0, 0.02) from `seed`, B = 0), the adapters attached to the
/// model, and only they trainable.
pub fn add_lora(model: &mut TrainableModel, rank: usize, seed: u64) -> Result<()> {
    ensure!(rank > 0, "LoRA rank must be at least 1");
    ensure!(model.lora.is_empty(), "the model already carries LoRA adapters");
    let targets = lora_targets(&model.config)?;
    ensure!(!targets.is_empty(), "the model has no square linear layer to put LoRA on");
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, A_INIT_STD)?;
    let mut branches = Vec::with_capacity(targets.len());
    for (module, out, inp) in targets {
        let a: Vec<f32> = (0..rank * inp).map(|_| normal.sample(&mut rng)).collect();
        let a = Var::from_tensor(&Tensor::from_vec(a, (rank, inp), &model.device)?)?;
        let b = Var::zeros((out, rank), DType::F32, &model.device)?;
        branches.push((module, a, b));
    }
    attach(model, branches)
}

/// Puts saved adapters (module, A [r, in], B [out, r]) back as the trainable LoRA weights,
/// replacing any the model carries (resume, or continuing from a LoRA file).
pub fn restore_lora(model: &mut TrainableModel, adapters: &[(String, Tensor, Tensor)]) -> Result<()> {
    ensure!(!adapters.is_empty(), "no LoRA adapters to restore");
    for (old, _, _) in &model.lora {
        ensure!(adapters.iter().any(|(m, _, _)| m == old), "restored LoRA lacks `{old}`, which the model carries");
    }
    let rank = adapters[0].1.dim(0)?;
    let mut branches = Vec::with_capacity(adapters.len());
    for (module, a, b) in adapters {
        ensure!(a.dim(0)? == rank, "LoRA for `{module}` has rank {}, the others {rank}", a.dim(0)?);
        let var = |t: &Tensor| -> Result<Var> {
            Ok(Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(&model.device)?.copy()?)?)
        };
        branches.push((module.clone(), var(a)?, var(b)?));
    }
    // Upstream's walk order whatever order the file listed them in (safetensors sorts names),
    // so a resumed run sums the gradient norm in the same order as an uninterrupted one.
    let order: Vec<String> =
        lora_targets(&model.config).map(|t| t.into_iter().map(|(m, _, _)| m).collect()).unwrap_or_default();
    branches.sort_by_key(|(m, _, _)| order.iter().position(|o| o == m).unwrap_or(usize::MAX));
    attach(model, branches)
}

/// Like [`restore_lora`], from an upstream LoRA file.
pub fn restore_lora_file(model: &mut TrainableModel, lora: &Lora) -> Result<()> {
    let adapters: Vec<_> = lora.adapters.iter().map(|ad| (ad.module.clone(), ad.a.clone(), ad.b.clone())).collect();
    restore_lora(model, &adapters)
}

fn attach(model: &mut TrainableModel, branches: Vec<(String, Var, Var)>) -> Result<()> {
    for (module, a, b) in &branches {
        model
            .model
            .set_lora(module, a.as_tensor().clone(), b.as_tensor().clone())
            .with_context(|| format!("attaching LoRA to `{module}`"))?;
    }
    // upstream's `lora_params`: named_parameters() with 'lora' in the name, A before B.
    model.trainable = branches
        .iter()
        .flat_map(|(m, a, b)| [(format!("{m}.lora.A.weight"), a.clone()), (format!("{m}.lora.B.weight"), b.clone())])
        .collect();
    model.lora = branches;
    Ok(())
}

/// The current adapters as an upstream LoRA file (f32 copies on the CPU).
pub fn lora_file(model: &TrainableModel) -> Result<Lora> {
    ensure!(!model.lora.is_empty(), "the model carries no LoRA adapters");
    let cpu = |v: &Var| -> Result<Tensor> { Ok(v.as_tensor().to_device(&Device::Cpu)?.to_dtype(DType::F32)?.copy()?) };
    let adapters = model
        .lora
        .iter()
        .map(|(module, a, b)| Ok(LoraAdapter { module: module.clone(), a: cpu(a)?, b: cpu(b)? }))
        .collect::<Result<Vec<_>>>()?;
    Ok(Lora { rank: model.lora[0].1.dim(0)?, adapters })
}

/// Upstream's `save_lora`: the adapters only, f32, as a `torch.save` .pth (written
/// atomically). Fits the trainer's `save_weights`.
pub fn save_lora_pth(model: &TrainableModel, path: &Path) -> Result<()> {
    lora_file(model)?.write(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_square_linears_in_upstream_order() {
        let cfg =
            MiniMindConfig { num_attention_heads: 8, num_key_value_heads: 2, ..MiniMindConfig::with_hidden(512, 2) };
        let t = lora_targets(&cfg).unwrap();
        let names: Vec<_> = t.iter().map(|(m, _, _)| m.as_str()).collect();
        assert_eq!(
            names,
            [
                "model.layers.0.self_attn.q_proj",
                "model.layers.0.self_attn.o_proj",
                "model.layers.1.self_attn.q_proj",
                "model.layers.1.self_attn.o_proj"
            ]
        );
        assert!(t.iter().all(|&(_, o, i)| o == 512 && i == 512));
        // As many KV heads as heads: k_proj and v_proj are square too.
        let mha =
            MiniMindConfig { num_attention_heads: 8, num_key_value_heads: 8, ..MiniMindConfig::with_hidden(512, 1) };
        let names: Vec<_> = lora_targets(&mha).unwrap().into_iter().map(|(m, _, _)| m).collect();
        assert_eq!(names.len(), 4);
        assert_eq!(names[1], "model.layers.0.self_attn.k_proj");
        assert_eq!(lora_file_name(DEFAULT_NAME, &cfg), "lora_identity_512.pth");
    }
}
