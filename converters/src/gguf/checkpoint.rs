//! GGUF as a checkpoint format: the writer (with llama.cpp's quantization mixtures) and the
//! reader (dequantized, Q/K rows back in MiniMind order).

use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::atomic::write_file_atomically;
use crate::output_guard::FileKind;
use crate::checkpoint::{Checkpoint, Provenance};
use crate::config::MiniMindConfig;
use crate::gguf::architecture::{self, GgufTensor, TensorSource};
use crate::gguf::file::{GgufFile, GgufWriter, MetaValue, Metadata, TensorInfo};
use crate::gguf::keys::general;
use crate::gguf::mixture::{self, ModelFacts, QuantScheme};
use crate::gguf::vocab::GgufVocab;
use crate::quant::{self, GgmlType};

/// `GGML_QNT_VERSION`.
pub const QUANTIZATION_VERSION: u32 = 2;

/// Precision the weights pass through before quantizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePrecision {
    /// `f32(f16(w))`: what llama-quantize sees after upstream's fp16 HF export and the F16 GGUF.
    F16,
    /// The checkpoint's own values.
    Exact,
}

#[derive(Debug, Clone)]
pub struct GgufOptions {
    pub scheme: QuantScheme,
    pub source_precision: SourcePrecision,
    /// `general.name`.
    pub name: String,
}

/// One tensor as written, for the export summary.
#[derive(Debug, Clone)]
pub struct WrittenTensor {
    pub name: String,
    pub ty: GgmlType,
    pub n_elements: u64,
    pub n_bytes: u64,
    pub fallback: Option<String>,
}

#[derive(Debug, Clone)]
pub struct GgufSummary {
    pub tensors: Vec<WrittenTensor>,
    pub file_bytes: u64,
    pub warnings: Vec<String>,
}

impl GgufSummary {
    /// Bits per weight over the tensor data.
    pub fn bits_per_weight(&self) -> f64 {
        let bytes: u64 = self.tensors.iter().map(|t| t.n_bytes).sum();
        let n: u64 = self.tensors.iter().map(|t| t.n_elements).sum();
        8.0 * bytes as f64 / n.max(1) as f64
    }
}

/// The tensor values `source` describes, as f32 in GGUF row order.
fn materialize(ckpt: &Checkpoint, source: &TensorSource, precision: SourcePrecision) -> Result<Vec<f32>> {
    let values = |name: &str| -> Result<Vec<f32>> {
        let t = ckpt.get(name).with_context(|| format!("checkpoint has no tensor `{name}`"))?;
        let t = match precision {
            SourcePrecision::F16 if t.dtype() != DType::F16 => t.to_dtype(DType::F16)?,
            _ => t.clone(),
        };
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let rows_of = |name: &str| ckpt.get(name).map(|t| t.dims()[0]).unwrap_or(0);
    Ok(match source {
        TensorSource::Copy(name) => values(name)?,
        TensorSource::PermuteRows { name, n_head } => architecture::permute_rows(&values(name)?, rows_of(name), *n_head),
        TensorSource::Stack(names) | TensorSource::ConcatRows(names) => {
            let mut out = Vec::new();
            for n in names {
                out.extend(values(n)?);
            }
            out
        }
        TensorSource::ConcatCols(names) => {
            let parts = names.iter().map(|n| values(n)).collect::<Result<Vec<_>>>()?;
            let rows = names.first().map(|n| rows_of(n)).unwrap_or(0);
            let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
            for r in 0..rows {
                for p in &parts {
                    let cols = p.len() / rows;
                    out.extend_from_slice(&p[r * cols..(r + 1) * cols]);
                }
            }
            out
        }
    })
}

/// llama-quantize's output order: tensors outside blocks first, then blocks by number, names
/// sorted within (`weight_name_comparer`).
fn quantizer_order(a: &str, b: &str) -> std::cmp::Ordering {
    let block = |n: &str| -> Option<(u64, String)> {
        let rest = n.strip_prefix("blk.")?;
        let (num, tail) = rest.split_once('.')?;
        Some((num.parse().ok()?, tail.to_string()))
    };
    match (block(a), block(b)) {
        (None, None) => a.cmp(b),
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(x), Some(y)) => x.cmp(&y),
    }
}

/// Metadata and the ordered tensor plan with chosen types.
fn layout(ckpt: &Checkpoint, options: &GgufOptions) -> Result<(Metadata, Vec<(GgufTensor, GgmlType)>, Vec<String>)> {
    let cfg = &ckpt.config;
    architecture::check_representable(cfg)?;
    let mut plan = architecture::plan(cfg);
    let facts = ModelFacts {
        n_layer: cfg.num_hidden_layers,
        n_expert: if cfg.use_moe { cfg.n_routed_experts } else { 0 },
        tied_embeddings: cfg.tie_word_embeddings,
    };
    let mut warnings = Vec::new();
    if options.scheme.is_quantized() {
        plan.sort_by(|a, b| quantizer_order(&a.name, &b.name));
    }
    if cfg.use_moe {
        warnings.push(format!(
            "MoE exports as llama.cpp's '{}' architecture, which needs llama.cpp from mid-2025 or later",
            architecture::ARCH_MOE
        ));
    }
    let typed: Vec<(GgufTensor, GgmlType)> = plan
        .into_iter()
        .map(|t| {
            let ty = mixture::tensor_type(options.scheme, &t.name, &t.ne, &facts);
            (t, ty)
        })
        .collect();

    let elems = |t: &GgufTensor| t.ne.iter().product::<u64>();
    let total: u64 = typed.iter().map(|(t, _)| elems(t)).sum();
    let experts: u64 = typed.iter().filter(|(t, _)| t.name.contains("_exps")).map(|(t, _)| elems(t)).sum();
    let n_expert = facts.n_expert as u64;
    let label = match experts.checked_div(n_expert) {
        Some(per_expert) => architecture::size_label(total, total - experts, per_expert, facts.n_expert),
        None => architecture::size_label(total, 0, 0, 0),
    };

    let mut md = Metadata::new();
    architecture::write_hparams(&mut md, cfg, &options.name, &label, options.scheme.file_type());
    md.set(general::QUANTIZATION_VERSION, MetaValue::U32(QUANTIZATION_VERSION));
    let vocab = GgufVocab::from_tokenizer(&ckpt.tokenizer, cfg.vocab_size)
        .context("the checkpoint's tokenizer cannot be written as GGUF metadata")?;
    vocab.write_metadata(&mut md);
    if options.scheme.is_quantized() {
        // llama-quantize copies the KVs, then re-sets these two, which moves them last.
        md.set_last(general::QUANTIZATION_VERSION, MetaValue::U32(QUANTIZATION_VERSION));
        md.set_last(general::FILE_TYPE, MetaValue::U32(options.scheme.file_type()));
    }
    Ok((md, typed, warnings))
}

/// Writes `ckpt` as a GGUF file for llama.cpp, one tensor in memory at a time, atomically.
/// `progress(done, total, name)` is called after each tensor.
pub fn write(
    ckpt: &Checkpoint,
    path: &Path,
    options: &GgufOptions,
    progress: &dyn Fn(usize, usize, &str),
) -> Result<GgufSummary> {
    let (md, typed, warnings) = layout(ckpt, options)?;
    let facts = ModelFacts {
        n_layer: ckpt.config.num_hidden_layers,
        n_expert: if ckpt.config.use_moe { ckpt.config.n_routed_experts } else { 0 },
        tied_embeddings: ckpt.config.tie_word_embeddings,
    };
    let header: Vec<(String, Vec<u64>, GgmlType)> =
        typed.iter().map(|(t, ty)| (t.name.clone(), t.ne.clone(), *ty)).collect();
    let mut written = Vec::with_capacity(typed.len());
    write_file_atomically(path, FileKind::Gguf, |out| {
        let mut writer = GgufWriter::new(out, &md, &header)?;
        for (i, (t, ty)) in typed.iter().enumerate() {
            let values = materialize(ckpt, &t.source, options.source_precision)
                .with_context(|| format!("building GGUF tensor '{}'", t.name))?;
            let bytes = quant::quantize(*ty, &values, t.ne[0] as usize)
                .with_context(|| format!("quantizing '{}' to {ty}", t.name))?;
            writer.write_tensor(&t.name, &bytes)?;
            written.push(WrittenTensor {
                name: t.name.clone(),
                ty: *ty,
                n_elements: values.len() as u64,
                n_bytes: bytes.len() as u64,
                fallback: mixture::fallback_reason(options.scheme, &t.name, &t.ne, &facts),
            });
            progress(i + 1, typed.len(), &t.name);
        }
        writer.finish()?;
        Ok(())
    })?;
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(GgufSummary { tensors: written, file_bytes, warnings })
}

/// A GGUF tensor's values as f32 (dequantized), in GGUF row order.
pub fn tensor_values(file: &GgufFile, info: &TensorInfo) -> Result<Vec<f32>> {
    quant::dequantize(info.ty, file.data(info), info.n_elements() as usize)
        .with_context(|| format!("{}: tensor '{}'", file.path.display(), info.name))
}

/// What a MiniMind GGUF says about itself: config, vocabulary, and its tensor plan (every
/// tensor checked present, known and of the right dims).
pub struct GgufHeader {
    pub config: MiniMindConfig,
    pub vocab: GgufVocab,
    pub plan: Vec<GgufTensor>,
}

pub fn read_header(file: &GgufFile) -> Result<GgufHeader> {
    let source = file.path.display().to_string();
    let embd = file.tensor("token_embd.weight").with_context(|| format!("{source}: no token_embd.weight tensor"))?;
    ensure!(embd.ne.len() == 2, "{source}: token_embd.weight is not a matrix");
    let tied = file.tensor("output.weight").is_none();
    let vocab = GgufVocab::from_metadata(&file.metadata, &source)?;
    let rows = embd.ne[1] as usize;
    vocab.check_against_embedding(&file.metadata, &source, rows)?;
    let mut config = architecture::read_hparams(&file.metadata, &source, rows, tied)?;
    if let Some(bos) = vocab.bos {
        config.bos_token_id = bos;
    }
    if let Some(eos) = vocab.eos {
        config.eos_token_id = eos;
    }
    let plan = architecture::plan(&config);
    let names: Vec<&str> = file.tensors.iter().map(|t| t.name.as_str()).collect();
    architecture::check_tensor_set(&plan, &names, &source)?;
    for t in &plan {
        let info = file.tensor(&t.name).expect("checked by check_tensor_set");
        ensure!(
            info.ne == crate::gguf::file::trim_dims(&t.ne),
            "{source}: tensor '{}' has dims {:?}, the hyperparameters need {:?}",
            t.name,
            info.ne,
            t.ne
        );
    }
    Ok(GgufHeader { config, vocab, plan })
}

/// Reads a GGUF written for `llama` / `ernie4_5-moe` back into a canonical checkpoint. Float
/// tensors keep their type; quantized ones are dequantized to f32.
pub fn read(path: &Path) -> Result<Checkpoint> {
    let file = GgufFile::open(path)?;
    let GgufHeader { config: cfg, vocab, plan } = read_header(&file)?;
    let mut tensors = Vec::new();
    for t in &plan {
        let info = file.tensor(&t.name).expect("checked by read_header");
        let dtype = match info.ty {
            GgmlType::F16 => DType::F16,
            GgmlType::BF16 => DType::BF16,
            _ => DType::F32,
        };
        let values = tensor_values(&file, info)?;
        let shape_of = |name: &str| -> Vec<usize> {
            crate::naming::expected_tensors(&cfg).into_iter().find(|(n, _)| n == name).map(|(_, s)| s).unwrap_or_default()
        };
        let make = |name: &str, data: Vec<f32>| -> Result<(String, Tensor)> {
            let t = Tensor::from_vec(data, shape_of(name), &Device::Cpu)?.to_dtype(dtype)?;
            Ok((name.to_string(), t))
        };
        match &t.source {
            TensorSource::Copy(name) => tensors.push(make(name, values)?),
            TensorSource::PermuteRows { name, n_head } => {
                let rows = t.ne[1] as usize;
                tensors.push(make(name, architecture::unpermute_rows(&values, rows, *n_head))?);
            }
            TensorSource::Stack(names) | TensorSource::ConcatRows(names) => {
                let per = values.len() / names.len();
                for (i, n) in names.iter().enumerate() {
                    tensors.push(make(n, values[i * per..(i + 1) * per].to_vec())?);
                }
            }
            TensorSource::ConcatCols(names) => {
                let rows = t.ne[1] as usize;
                let cols = t.ne[0] as usize / names.len();
                for (i, n) in names.iter().enumerate() {
                    let mut part = Vec::with_capacity(rows * cols);
                    for r in 0..rows {
                        let start = r * cols * names.len() + i * cols;
                        part.extend_from_slice(&values[start..start + cols]);
                    }
                    tensors.push(make(n, part)?);
                }
            }
        }
    }
    let tokenizer = vocab.to_tokenizer_files()?;
    let mut provenance = Provenance::new("gguf", path);
    let mut types: Vec<&str> = file.tensors.iter().map(|t| t.ty.name()).collect();
    types.sort();
    types.dedup();
    provenance.notes.push(format!("tensor types: {}", types.join(", ")));
    if file.tensors.iter().any(|t| t.ty.is_quantized()) {
        provenance.notes.push("quantized tensors were dequantized to f32".into());
    }
    Checkpoint::new(cfg, tensors, tokenizer, provenance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizer_order_puts_globals_first_and_blocks_numerically() {
        let mut names = vec!["blk.10.attn_q.weight", "token_embd.weight", "blk.2.attn_k.weight", "blk.2.attn_norm.weight", "output_norm.weight"];
        names.sort_by(|a, b| quantizer_order(a, b));
        assert_eq!(names, vec!["output_norm.weight", "token_embd.weight", "blk.2.attn_k.weight", "blk.2.attn_norm.weight", "blk.10.attn_q.weight"]);
    }
}
