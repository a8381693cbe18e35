//! The one in-memory checkpoint every reader produces and every writer consumes.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use serde_json::Value;

use crate::config::MiniMindConfig;
use crate::naming::{self, EMBED, LM_HEAD};

/// Tokenizer and chat template, kept as the original file contents so they survive
/// conversion byte for byte.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerFiles {
    pub tokenizer_json: Option<String>,
    pub tokenizer_config: Option<Value>,
    pub chat_template: Option<String>,
}

impl TokenizerFiles {
    /// The upstream MiniMind2 tokenizer, built in so a model made from nothing can talk.
    pub fn builtin_minimind2() -> Self {
        let config: Value = serde_json::from_str(include_str!("../../assets/minimind2/tokenizer_config.json"))
            .expect("built-in tokenizer_config.json is valid JSON");
        let chat_template = config.get("chat_template").and_then(Value::as_str).map(str::to_string);
        Self {
            tokenizer_json: Some(include_str!("../../assets/minimind2/tokenizer.json").to_string()),
            tokenizer_config: Some(config),
            chat_template,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tokenizer_json.is_none()
    }
}

/// Where a checkpoint came from, for `mm inspect` and for messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    pub format: String,
    pub source: PathBuf,
    pub notes: Vec<String>,
}

impl Provenance {
    pub fn new(format: &str, source: &Path) -> Self {
        Self { format: format.to_string(), source: source.to_path_buf(), notes: Vec::new() }
    }
}

/// Config + named tensors (canonical names, upstream order) + tokenizer + provenance.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub config: MiniMindConfig,
    tensors: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
    pub tokenizer: TokenizerFiles,
    pub provenance: Provenance,
}

impl Checkpoint {
    /// Builds a checkpoint from tensors under canonical names, checking each one against
    /// the config: missing, unexpected and mis-shaped tensors are errors. A `lm_head.weight`
    /// equal to the embedding is folded into the tie; a different one unties the model.
    pub fn new(
        mut config: MiniMindConfig,
        tensors: Vec<(String, Tensor)>,
        tokenizer: TokenizerFiles,
        provenance: Provenance,
    ) -> Result<Self> {
        config.validate()?;
        let mut by_name: HashMap<String, Tensor> = HashMap::new();
        for (name, tensor) in tensors {
            if by_name.insert(name.clone(), tensor).is_some() {
                bail!("tensor `{name}` appears twice");
            }
        }
        if let Some(head) = by_name.remove(LM_HEAD) {
            let tied = match by_name.get(EMBED) {
                Some(embed) => tensors_equal(embed, &head)?,
                None => bail!("missing tensor `{EMBED}`"),
            };
            config.tie_word_embeddings = tied;
            if !tied {
                by_name.insert(LM_HEAD.to_string(), head);
            }
        }
        let mut ordered = Vec::new();
        for (name, shape) in naming::expected_tensors(&config) {
            let tensor = by_name
                .remove(&name)
                .with_context(|| format!("missing tensor `{name}` (expected shape {shape:?})"))?;
            if tensor.dims() != shape.as_slice() {
                bail!("tensor `{name}` has shape {:?}, the config needs {shape:?}", tensor.dims());
            }
            if !matches!(tensor.dtype(), DType::F32 | DType::F16 | DType::BF16) {
                bail!("tensor `{name}` has dtype {:?}; weights must be f32, f16 or bf16", tensor.dtype());
            }
            ordered.push((name, tensor));
        }
        if !by_name.is_empty() {
            let mut extra: Vec<_> = by_name.keys().cloned().collect();
            extra.sort();
            bail!("unexpected tensors for this config: {}", extra.join(", "));
        }
        let index = ordered.iter().enumerate().map(|(i, (n, _))| (n.clone(), i)).collect();
        Ok(Self { config, tensors: ordered, index, tokenizer, provenance })
    }

    pub fn tensors(&self) -> &[(String, Tensor)] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.tensors[i].1)
    }

    /// The output matrix: `lm_head.weight` when untied, otherwise the embedding.
    pub fn output_matrix(&self) -> &Tensor {
        self.get(LM_HEAD).or_else(|| self.get(EMBED)).expect("checked in Checkpoint::new")
    }

    /// Tensors with the tied head spelled out, as upstream `state_dict()` lists them.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out = self.tensors.clone();
        if self.config.tie_word_embeddings {
            out.push((LM_HEAD.to_string(), self.output_matrix().clone()));
        }
        out
    }

    /// Casts every tensor (round to nearest even when narrowing).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let tensors = self
            .tensors
            .iter()
            .map(|(n, t)| Ok((n.clone(), t.to_dtype(dtype)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { tensors, ..self.clone() })
    }

    /// The one dtype all tensors share, if they do.
    pub fn uniform_dtype(&self) -> Option<DType> {
        let first = self.tensors.first()?.1.dtype();
        self.tensors.iter().all(|(_, t)| t.dtype() == first).then_some(first)
    }

    /// Replaces tensors by name (used by transforms such as LoRA merge).
    pub fn with_tensors(&self, replacements: Vec<(String, Tensor)>) -> Result<Self> {
        let mut out = self.clone();
        for (name, tensor) in replacements {
            let &i = out.index.get(&name).with_context(|| format!("no tensor `{name}` to replace"))?;
            if tensor.dims() != out.tensors[i].1.dims() {
                bail!("replacement for `{name}` has shape {:?}, not {:?}", tensor.dims(), out.tensors[i].1.dims());
            }
            out.tensors[i].1 = tensor;
        }
        Ok(out)
    }

    pub fn parameter_count(&self) -> usize {
        self.tensors.iter().map(|(_, t)| t.elem_count()).sum()
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let size = format!("{} tensors, {:.2}M parameters", self.tensors.len(), self.parameter_count() as f64 / 1e6);
        if self.provenance.source == Path::new("-") {
            // Made in memory (random init, tests): no file to name.
            write!(f, "{} ({size})", self.provenance.format)
        } else {
            write!(f, "{} ({}, {size})", self.provenance.source.display(), self.provenance.format)
        }
    }
}

/// Bitwise equality of two tensors (same dtype and shape).
pub fn tensors_equal(a: &Tensor, b: &Tensor) -> Result<bool> {
    if a.dtype() != b.dtype() || a.dims() != b.dims() {
        return Ok(false);
    }
    Ok(tensor_bytes(a)? == tensor_bytes(b)?)
}

/// The little-endian bytes of a tensor in row-major order (safetensors and `.pth` storages).
pub fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    fn le<T, const N: usize>(values: Vec<T>, to_le: fn(T) -> [u8; N]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * N);
        for v in values {
            out.extend_from_slice(&to_le(v));
        }
        out
    }
    let flat = t.contiguous()?.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => le(flat.to_vec1::<f32>()?, f32::to_le_bytes),
        DType::F16 => le(flat.to_vec1::<half::f16>()?, half::f16::to_le_bytes),
        DType::BF16 => le(flat.to_vec1::<half::bf16>()?, half::bf16::to_le_bytes),
        DType::F64 => le(flat.to_vec1::<f64>()?, f64::to_le_bytes),
        DType::I64 => le(flat.to_vec1::<i64>()?, i64::to_le_bytes),
        DType::I32 => le(flat.to_vec1::<i32>()?, i32::to_le_bytes),
        DType::I16 => le(flat.to_vec1::<i16>()?, i16::to_le_bytes),
        DType::U32 => le(flat.to_vec1::<u32>()?, u32::to_le_bytes),
        DType::U8 => flat.to_vec1::<u8>()?,
        other => bail!("no byte view for dtype {other:?}"),
    })
}

/// Parses a dtype name as users and HF configs spell it.
pub fn parse_dtype(name: &str) -> Result<DType> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "f32" | "float32" | "fp32" => DType::F32,
        "f16" | "float16" | "fp16" | "half" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        other => bail!("unknown dtype `{other}` (use f32, f16 or bf16)"),
    })
}

/// The name HF configs use for a dtype.
pub fn hf_dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}
