//! `mm export hf`: an HF directory that vLLM and transformers load natively
//! (docs/templates_serving.md §5): dense → `LlamaForCausalLM` (tied), MoE → `Qwen2MoeForCausalLM`
//! (the exact transform of `mm_converters::qwen2_moe`), or the MiniMind layout (remote code,
//! for transformers only). Safetensors with `{"format":"pt"}`, sharded with an index past
//! `max_shard_bytes`, config.json, generation_config.json and the tokenizer files with the
//! chat template inline.

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::DType;

use mm_converters::hf::{self, HfLayout};
use mm_converters::{Checkpoint, TokenizerFiles};

use crate::validate_hf::{self, HfReport, HfValidateOptions, Target, TemplateProbe};

/// The `architectures` of the exported config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfArch {
    /// `LlamaForCausalLM`, tied (dense only): what upstream `convert_model.py` writes.
    Llama,
    /// `Qwen2MoeForCausalLM` (MoE only): zero shared-expert gate, ×2 shared down_proj,
    /// zero q/k/v biases.
    Qwen2Moe,
    /// `MiniMindForCausalLM` with `auto_map`: needs upstream's model_minimind.py and
    /// trust_remote_code; vLLM cannot serve it natively.
    MiniMind,
}

impl HfArch {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "llama" => Self::Llama,
            "qwen2-moe" | "qwen2_moe" => Self::Qwen2Moe,
            "minimind" => Self::MiniMind,
            other => bail!("unknown --arch `{other}` (use llama, qwen2-moe or minimind)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2Moe => "qwen2-moe",
            Self::MiniMind => "minimind",
        }
    }

    pub fn class(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2Moe => "Qwen2MoeForCausalLM",
            Self::MiniMind => "MiniMindForCausalLM",
        }
    }

    /// The exact native architecture for a model: Llama when dense, Qwen2-MoE when MoE.
    pub fn native_for(ckpt: &Checkpoint) -> Self {
        if ckpt.config.use_moe {
            Self::Qwen2Moe
        } else {
            Self::Llama
        }
    }
}

pub struct HfExportOptions<'a> {
    pub arch: HfArch,
    /// Cast every tensor first (None: keep the checkpoint's dtype).
    pub dtype: Option<DType>,
    pub max_shard_bytes: usize,
    /// Handed to the validator that checks the result.
    pub template_probe: Option<TemplateProbe<'a>>,
}

pub struct HfExportSummary {
    pub arch: HfArch,
    /// Notes on what the export decided (tokenizer fallback, …).
    pub notes: Vec<String>,
    /// The validator's verdict on the written directory (vLLM target for the native
    /// architectures, transformers for the MiniMind layout).
    pub report: HfReport,
}

/// Writes `dir` (atomically) and validates it.
pub fn export_hf(ckpt: &Checkpoint, dir: &Path, opts: &HfExportOptions) -> Result<HfExportSummary> {
    let moe = ckpt.config.use_moe;
    match (opts.arch, moe) {
        (HfArch::Llama, true) => bail!(
            "--arch llama: LlamaForCausalLM has no experts, and this is a MoE model; use --arch qwen2-moe \
             (Qwen2MoeForCausalLM, exact) or --arch minimind"
        ),
        (HfArch::Qwen2Moe, false) => bail!(
            "--arch qwen2-moe: this is a dense model, it has no experts to map; use --arch llama \
             (LlamaForCausalLM, exact)"
        ),
        _ => {}
    }
    if ckpt.config.inference_rope_scaling && opts.arch != HfArch::MiniMind {
        bail!(
            "this model has upstream MiniMind's YaRN (inference_rope_scaling), which differs from HF's `yarn`; \
             export it without rope scaling or with --arch minimind"
        );
    }
    let mut notes = Vec::new();
    let mut ckpt = match opts.dtype {
        Some(dtype) => ckpt.to_dtype(dtype)?,
        None => ckpt.clone(),
    };
    if ckpt.tokenizer.is_empty() {
        notes.push("the input has no tokenizer; wrote the built-in MiniMind2 tokenizer and chat template".into());
        ckpt.tokenizer = TokenizerFiles::builtin_minimind2();
    }
    let layout = match opts.arch {
        HfArch::Llama => HfLayout::Llama,
        HfArch::Qwen2Moe => HfLayout::Qwen2Moe,
        HfArch::MiniMind => HfLayout::MiniMind,
    };
    hf::write(&ckpt, dir, layout, opts.max_shard_bytes)?;
    let target = if opts.arch == HfArch::MiniMind { Target::Transformers } else { Target::Vllm };
    let report = validate_hf::validate_hf_dir(dir, &HfValidateOptions { target, template_probe: opts.template_probe });
    Ok(HfExportSummary { arch: opts.arch, notes, report })
}

/// Parses a shard size the way transformers' `max_shard_size` reads: `5GB` (10^9),
/// `500MB`, `2GiB` (2^30), `100KB`, or plain bytes.
pub fn parse_size(text: &str) -> Result<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| anyhow::anyhow!("--max-shard-size `{text}`: expected a size like 5GB or 200MB"))?;
    let factor: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("--max-shard-size `{text}`: unknown unit `{other}` (B, KB, MB, GB, KiB, MiB, GiB)"),
    };
    let bytes = (value * factor).round();
    if bytes.is_nan() || bytes < 1.0 {
        bail!("--max-shard-size `{text}` must be positive");
    }
    Ok(bytes as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_transformers() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("2MiB").unwrap(), 2 * 1024 * 1024);
        assert_eq!(parse_size("1.5MB").unwrap(), 1_500_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("5XB").is_err());
        assert!(parse_size("0").is_err());
    }
}
