//! A model ready to talk: weights on a device, tokenizer and chat template.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use crate::chat::{ChatTemplate, Tokenizer};
use crate::converters::lora::Lora;
use crate::converters::PthHints;
use crate::converters::{read_checkpoint, Checkpoint, TokenizerFiles};
use crate::model::{gguf_holds_quantized, is_gguf_path, GgufModelFile, MiniMind};

pub struct LoadedModel {
    pub model: MiniMind,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub checkpoint_summary: String,
}

/// How to load a model file (what `--lora`, `--dtype`, `--device`, `--rope-scaling` and
/// `--dequantize` say).
#[derive(Clone)]
pub struct LoadOptions<'a> {
    pub hints: PthHints,
    pub lora: Option<&'a Path>,
    pub dtype: DType,
    pub device: Device,
    /// Upstream's YaRN extrapolation (`inference_rope_scaling`).
    pub rope_scaling: bool,
    /// Dequantize a GGUF to dense tensors instead of running it as stored.
    pub dequantize: bool,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        Self { hints: PthHints::default(), lora: None, dtype: DType::F32, device: Device::Cpu, rope_scaling: false, dequantize: false }
    }
}

impl LoadedModel {
    /// Reads any supported format, optionally applies a LoRA on the fly, and builds the
    /// tokenizer (the built-in MiniMind2 one when the checkpoint carries none). A quantized
    /// GGUF runs its blocks as they are, and on the CPU an F16/BF16 GGUF runs as stored too
    /// (see [`Self::from_gguf`]), unless `dequantize`.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        if !opts.dequantize && is_gguf_path(path) && (opts.device.is_cpu() || gguf_holds_quantized(path)?) {
            let mut file = GgufModelFile::read(path)?;
            if opts.rope_scaling {
                file.config.set_inference_rope_scaling(true);
            }
            return Self::from_gguf(&file, opts.lora, opts.dtype, &opts.device);
        }
        let mut ckpt = read_checkpoint(path, &opts.hints)?;
        if opts.rope_scaling {
            ckpt.config.set_inference_rope_scaling(true);
        }
        Self::from_checkpoint(&ckpt, opts.lora, opts.dtype, &opts.device)
    }

    pub fn from_checkpoint(ckpt: &Checkpoint, lora: Option<&Path>, dtype: DType, device: &Device) -> Result<Self> {
        let model = MiniMind::from_checkpoint(ckpt, dtype, device)
            .with_context(|| format!("building the model from {}", ckpt.provenance.source.display()))?;
        Self::assemble(model, &ckpt.tokenizer, lora, ckpt.to_string(), &ckpt.provenance.source)
    }

    /// A GGUF model whose quantized matrices stay ggml blocks, multiplied with `QMatMul`.
    pub fn from_gguf(file: &GgufModelFile, lora: Option<&Path>, dtype: DType, device: &Device) -> Result<Self> {
        let model = MiniMind::from_gguf(file, dtype, device)?;
        Self::assemble(model, &file.tokenizer, lora, file.to_string(), &file.source)
    }

    fn assemble(mut model: MiniMind, tokenizer: &TokenizerFiles, lora: Option<&Path>, summary: String, source: &Path) -> Result<Self> {
        if let Some(lora_path) = lora {
            let lora = Lora::read(lora_path)?;
            model.attach_lora(&lora).with_context(|| format!("{}", lora_path.display()))?;
        }
        let files = if tokenizer.is_empty() { TokenizerFiles::builtin_minimind2() } else { tokenizer.clone() };
        let (tokenizer, template) = tokenizer_and_template(&files).with_context(|| format!("{}", source.display()))?;
        let template = template.map(|t| t.with_origin(source.display().to_string()));
        Ok(Self { model, tokenizer, template, checkpoint_summary: summary })
    }
}

/// Builds the tokenizer and chat template from a checkpoint's tokenizer files; template
/// variables such as `bos_token` come from tokenizer_config.json as transformers passes them.
pub fn tokenizer_and_template(files: &TokenizerFiles) -> Result<(Tokenizer, Option<ChatTemplate>)> {
    let json = files.tokenizer_json.as_deref().context("no tokenizer.json")?;
    let tokenizer = Tokenizer::from_strings(json, files.tokenizer_config.as_ref())?;
    let template = match &files.chat_template {
        Some(source) => {
            let t = ChatTemplate::new(source)?;
            Some(match &files.tokenizer_config {
                Some(cfg) => t.with_special_tokens_from_config(cfg),
                None => t,
            })
        }
        None => None,
    };
    Ok((tokenizer, template))
}
