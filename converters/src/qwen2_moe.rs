//! MiniMind MoE as `Qwen2MoeForCausalLM`: the exact, vLLM-native layout of
//! docs/templates_serving.md §5.2.
//!
//! MiniMind's MoE block adds an *ungated* shared expert to the top-k routed experts;
//! Qwen2-MoE multiplies its shared expert by `sigmoid(shared_expert_gate · x)` and always
//! has q/k/v biases in vLLM. The writer makes the two equal without rounding anything:
//! - `shared_expert_gate.weight` = 0, so the gate is sigmoid(0) = 0.5 exactly;
//! - the shared expert's `down_proj` × 2 (a power of two: exact unless it overflows);
//! - zero `q_proj/k_proj/v_proj.bias`;
//! - `mlp.shared_experts.0.*` → `mlp.shared_expert.*`; routed experts and the router keep
//!   their per-expert names (`mlp.experts.{e}.*`, `mlp.gate.weight`).
//!
//! The reader inverts this exactly (÷2 of a doubled value is exact) and refuses a
//! Qwen2-MoE model that is not a MiniMind model: a non-zero shared-expert gate or a
//! non-zero attention bias has no MiniMind equivalent.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

use crate::checkpoint::Checkpoint;
use crate::config::MiniMindConfig;
use crate::naming::{self, Kind, Present, QwenRule, Spec, TENSORS};

pub const ARCHITECTURE: &str = "Qwen2MoeForCausalLM";
pub const MODEL_TYPE: &str = "qwen2_moe";

/// The Qwen2-MoE-only rows of the tensor table (zeros), each with the checkpoint row it is
/// written after: the table row before it (q/k/v biases after `v_proj`, the shared-expert gate
/// after the shared expert's `up_proj`).
fn zero_rows() -> Vec<(Kind, &'static Spec)> {
    let mut out = Vec::new();
    let mut anchor = None;
    for s in TENSORS {
        match s.present {
            Present::Qwen2MoeOnly => out.push((anchor.expect("a Qwen2-MoE row follows a checkpoint row"), s)),
            _ => anchor = Some(s.kind),
        }
    }
    out
}

/// The name pattern of a Qwen2-MoE-only (zero) row.
fn zero_name(s: &Spec) -> &'static str {
    match s.qwen2_moe {
        Some(QwenRule::Zero(pattern)) => pattern,
        _ => unreachable!("a Qwen2-MoE-only row is a zero tensor"),
    }
}

/// The checkpoint's tensors under Qwen2-MoE names, with the zero gate, the doubled shared
/// `down_proj` and the zero q/k/v biases added (same dtype as the weights); all from the
/// tensor table's Qwen2-MoE column.
pub fn to_hf_tensors(ckpt: &Checkpoint) -> Result<Vec<(String, Tensor)>> {
    let cfg = &ckpt.config;
    // The config writer refuses what has no Qwen2-MoE form (dense, n_shared != 1, YaRN).
    cfg.to_qwen2_moe_json("float32")?;
    let zeros = zero_rows();
    let mut out = Vec::with_capacity(ckpt.tensors().len() + 4 * cfg.num_hidden_layers);
    for (name, tensor) in ckpt.tensors() {
        let dtype = tensor.dtype();
        let Some((spec, l, e)) = naming::parse(name, cfg) else {
            out.push((name.clone(), tensor.clone()));
            continue;
        };
        match spec.qwen2_moe {
            Some(QwenRule::Rename(pattern)) => out.push((naming::fill(pattern, l, e), tensor.clone())),
            Some(QwenRule::RenameDoubled(pattern)) => {
                let (doubled, _) = scale(tensor, 2.0)?;
                if !all_finite_where_finite(tensor, &doubled)? {
                    bail!(
                        "`{name}` × 2 overflows {dtype:?} (the Qwen2-MoE form doubles the shared expert's \
                         down_proj); export in f32 (--dtype f32)"
                    );
                }
                out.push((naming::fill(pattern, l, e), doubled));
            }
            _ => out.push((name.clone(), tensor.clone())),
        }
        // After the last copy of a row, the zero tensors the table puts after it.
        if e + 1 == spec.copies(cfg) {
            for (_, z) in zeros.iter().filter(|(anchor, _)| *anchor == spec.kind) {
                out.push((naming::fill(zero_name(z), l, 0), Tensor::zeros(z.dims(cfg), dtype, &Device::Cpu)?));
            }
        }
    }
    Ok(out)
}

/// What reading a Qwen2-MoE directory found besides the tensors.
#[derive(Debug, Default)]
pub struct FromHf {
    pub tensors: Vec<(String, Tensor)>,
    pub notes: Vec<String>,
}

/// Qwen2-MoE tensors back to canonical MiniMind names: shared expert renamed and its
/// `down_proj` halved, gate and biases checked to be zero and dropped. Missing, extra and
/// mis-shaped tensors are left for `Checkpoint::new` to report.
pub fn from_hf_tensors(cfg: &MiniMindConfig, tensors: Vec<(String, Tensor)>) -> Result<FromHf> {
    // Qwen2-MoE name → (row, layer, expert) for the renamed rows and the zero rows.
    let mut by_name = std::collections::HashMap::new();
    for l in 0..cfg.num_hidden_layers {
        for s in TENSORS {
            match s.qwen2_moe {
                Some(QwenRule::Rename(p) | QwenRule::RenameDoubled(p)) if s.in_checkpoint(cfg) => {
                    for e in 0..s.copies(cfg) {
                        by_name.insert(naming::fill(p, l, e), (s, l, e));
                    }
                }
                Some(QwenRule::Zero(p)) => {
                    by_name.insert(naming::fill(p, l, 0), (s, l, 0));
                }
                _ => {}
            }
        }
    }
    let mut out = FromHf::default();
    let mut gates_seen = vec![false; cfg.num_hidden_layers];
    for (name, tensor) in tensors {
        let Some(&(spec, l, e)) = by_name.get(&name) else {
            out.tensors.push((name, tensor));
            continue;
        };
        match spec.qwen2_moe {
            Some(QwenRule::Zero(_)) => {
                let gate = spec.kind == Kind::ShexpGateInp;
                if !all_zero(&tensor)? {
                    if gate {
                        bail!(
                            "`{name}` is not zero: this Qwen2-MoE model gates its shared expert, which MiniMind's \
                             MoE does not (a MiniMind export has a zero gate, sigmoid(0) = 0.5, and a doubled \
                             shared down_proj); it is not a MiniMind model"
                        );
                    }
                    bail!(
                        "`{name}` is not zero: MiniMind attention has no biases, so a Qwen2-MoE model with \
                         non-zero q/k/v biases is not a MiniMind model"
                    );
                }
                if gate {
                    let want = spec.dims(cfg);
                    if tensor.dims() != want.as_slice() {
                        bail!("`{name}` has shape {:?}, the config needs {want:?}", tensor.dims());
                    }
                    gates_seen[l] = true;
                }
            }
            Some(QwenRule::RenameDoubled(_)) => {
                let (halved, exact) = scale(&tensor, 0.5)?;
                if !exact {
                    out.notes.push(format!(
                        "`{name}` has odd subnormal values that halving rounds (not a doubled MiniMind weight)"
                    ));
                }
                out.tensors.push((naming::fill(spec.canonical, l, e), halved));
            }
            _ => out.tensors.push((naming::fill(spec.canonical, l, e), tensor)),
        }
    }
    if let Some(layer) = gates_seen.iter().position(|seen| !seen) {
        bail!(
            "missing tensor `{}`: without it transformers initialises the gate randomly and vLLM refuses to load",
            naming::fill(zero_name(naming::spec(Kind::ShexpGateInp)), layer, 0)
        );
    }
    Ok(out)
}

/// Whether every element is ±0.
fn all_zero(t: &Tensor) -> Result<bool> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| *v == 0.0))
}

/// No finite input became infinite.
fn all_finite_where_finite(before: &Tensor, after: &Tensor) -> Result<bool> {
    let a = before.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let b = after.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(a.iter().zip(&b).all(|(x, y)| !x.is_finite() || y.is_finite()))
}

/// Multiplies by a power of two element by element in the tensor's own dtype (no add, so
/// -0 stays -0), and says whether the inverse scaling gives every input back bit for bit.
fn scale(t: &Tensor, factor: f32) -> Result<(Tensor, bool)> {
    let shape = t.dims().to_vec();
    let flat = t.flatten_all()?;
    let (out, exact) = match t.dtype() {
        DType::F32 => {
            let v = flat.to_vec1::<f32>()?;
            let r: Vec<f32> = v.iter().map(|x| x * factor).collect();
            let exact = v.iter().zip(&r).all(|(x, y)| (y / factor).to_bits() == x.to_bits() || x.is_nan());
            (Tensor::from_vec(r, shape, &Device::Cpu)?, exact)
        }
        DType::F16 => {
            let v = flat.to_vec1::<f16>()?;
            let r: Vec<f16> = v.iter().map(|x| f16::from_f32(x.to_f32() * factor)).collect();
            let exact = v
                .iter()
                .zip(&r)
                .all(|(x, y)| f16::from_f32(y.to_f32() / factor).to_bits() == x.to_bits() || x.is_nan());
            (Tensor::from_vec(r, shape, &Device::Cpu)?, exact)
        }
        DType::BF16 => {
            let v = flat.to_vec1::<bf16>()?;
            let r: Vec<bf16> = v.iter().map(|x| bf16::from_f32(x.to_f32() * factor)).collect();
            let exact = v
                .iter()
                .zip(&r)
                .all(|(x, y)| bf16::from_f32(y.to_f32() / factor).to_bits() == x.to_bits() || x.is_nan());
            (Tensor::from_vec(r, shape, &Device::Cpu)?, exact)
        }
        other => bail!("cannot scale a {other:?} tensor"),
    };
    Ok((out, exact))
}

/// Reads the tensors of a Qwen2-MoE directory into a canonical checkpoint.
pub fn checkpoint_from_hf(
    cfg: MiniMindConfig,
    tensors: Vec<(String, Tensor)>,
    tokenizer: crate::TokenizerFiles,
    mut provenance: crate::Provenance,
) -> Result<Checkpoint> {
    let FromHf { tensors, notes } = from_hf_tensors(&cfg, tensors)?;
    provenance.notes.extend(notes);
    Checkpoint::new(cfg, tensors, tokenizer, provenance).context("Qwen2-MoE tensors do not form a MiniMind MoE model")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubling_and_halving_are_exact_in_every_dtype() {
        let values = [0.0f32, -0.0, 1.0, -3.5e-3, 6.0e-8, 1.0e-40, 65000.0 / 4.0, f32::MIN_POSITIVE];
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let t = Tensor::new(&values[..], &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let (d, exact) = scale(&t, 2.0).unwrap();
            assert!(exact, "{dtype:?}");
            let (back, exact) = scale(&d, 0.5).unwrap();
            assert!(exact, "{dtype:?}");
            assert!(crate::checkpoint::tensors_equal(&t, &back).unwrap(), "{dtype:?}");
        }
    }

    #[test]
    fn odd_subnormal_halving_is_reported() {
        let t = Tensor::new(&[f16::from_bits(1)], &Device::Cpu).unwrap();
        assert!(!scale(&t, 0.5).unwrap().1);
    }
}
