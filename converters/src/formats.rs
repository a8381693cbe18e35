//! Format detection and the one entry point to read or write any checkpoint.

use std::path::Path;

use anyhow::{bail, Result};

use candle_core::DType;

use crate::checkpoint::Checkpoint;
use crate::gguf::{
    self,
    checkpoint::{GgufOptions, SourcePrecision},
    mixture::QuantScheme,
};
use crate::hf::{self, HfLayout, DEFAULT_MAX_SHARD_BYTES};
use crate::pth::{self, checkpoint::PthHints};

/// The formats mm writes a checkpoint in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Upstream `torch.save(state_dict)`.
    Pth,
    /// HF directory, `MiniMindForCausalLM` config.
    HfMiniMind,
    /// HF directory, `LlamaForCausalLM` config (dense only).
    HfLlama,
    /// HF directory, `Qwen2MoeForCausalLM` (MoE only; exact transform, see `qwen2_moe`).
    HfQwen2Moe,
    /// llama.cpp GGUF, unquantized (F16, or F32/BF16 when the checkpoint is all that type).
    Gguf,
}

impl Format {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "pth" => Self::Pth,
            "hf" | "hf-minimind" => Self::HfMiniMind,
            "hf-llama" | "llama" => Self::HfLlama,
            "hf-qwen2-moe" | "qwen2-moe" => Self::HfQwen2Moe,
            "gguf" => Self::Gguf,
            other => bail!("unknown format `{other}` (use pth, hf, hf-llama, hf-qwen2-moe, gguf)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pth => "pth",
            Self::HfMiniMind => "hf",
            Self::HfLlama => "hf-llama",
            Self::HfQwen2Moe => "hf-qwen2-moe",
            Self::Gguf => "gguf",
        }
    }
}

/// Reads a checkpoint from a `.pth` file or an HF directory (or a `.safetensors` file
/// inside one).
pub fn read_checkpoint(path: &Path, hints: &PthHints) -> Result<Checkpoint> {
    if !path.exists() {
        bail!("{}: no such file or directory", path.display());
    }
    if path.is_dir() {
        if path.join("config.json").exists() {
            return hf::read(path);
        }
        bail!("{}: a directory without config.json is not an HF model", path.display());
    }
    crate::limits::check_regular_file(path, "model file")?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "pth" | "pt" | "bin" => pth::checkpoint::read(path, hints),
        "gguf" => gguf::checkpoint::read(path),
        "safetensors" | "json" => match path.parent() {
            Some(dir) if dir.join("config.json").exists() => hf::read(dir),
            _ => bail!("{}: needs a config.json in the same directory", path.display()),
        },
        _ => bail!("{}: unknown format (expected .pth, .gguf or an HF model directory)", path.display()),
    }
}

pub fn write_checkpoint(ckpt: &Checkpoint, path: &Path, format: Format) -> Result<()> {
    match format {
        Format::Pth => pth::checkpoint::write(ckpt, path),
        Format::HfMiniMind => hf::write(ckpt, path, HfLayout::MiniMind, DEFAULT_MAX_SHARD_BYTES),
        Format::HfLlama => hf::write(ckpt, path, HfLayout::Llama, DEFAULT_MAX_SHARD_BYTES),
        Format::HfQwen2Moe => hf::write(ckpt, path, HfLayout::Qwen2Moe, DEFAULT_MAX_SHARD_BYTES),
        Format::Gguf => {
            let scheme = match ckpt.uniform_dtype() {
                Some(DType::F32) => QuantScheme::F32,
                Some(DType::BF16) => QuantScheme::BF16,
                _ => QuantScheme::F16,
            };
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let options = GgufOptions { scheme, source_precision: SourcePrecision::Exact, name };
            gguf::checkpoint::write(ckpt, path, &options, &|_, _, _| {}).map(|_| ())
        }
    }
}
