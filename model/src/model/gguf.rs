//! Running a GGUF's quantized weights as they are, the way llama.cpp does, instead of
//! dequantizing the file into a dense checkpoint (`mm_converters::gguf::checkpoint::read`).
//!
//! Every projection matrix (and the tied output head) stays in its ggml block type and is
//! multiplied by candle's `QMatMul`; norms, the router and the token embedding used for the
//! lookup are dequantized to dense tensors. Tensor names, shapes and the Q/K row order come
//! from the same `architecture::plan` the GGUF reader and writer use:
//!
//! * `attn_q` / `attn_k` rows are interleaved per head for llama.cpp's rope; whole rows of
//!   blocks are moved back into MiniMind's order, so no value is touched.
//! * `ffn_*_exps` stacks are split into experts (each a contiguous byte range), and
//!   `ffn_*_shexp` into shared experts (rows for gate/up; columns of down when the split
//!   falls on block boundaries, otherwise that one matrix is dequantized).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Result, Tensor};

use mm_converters::config::MiniMindConfig;
use mm_converters::gguf::architecture::{self, TensorSource};
use mm_converters::gguf::checkpoint::{read_header, GgufHeader};
use mm_converters::gguf::file::{GgufFile, TensorInfo};
use mm_converters::quant::GgmlType;
use mm_converters::TokenizerFiles;

use super::linear::Linear;
use super::minimind::{MiniMind, WeightSource};

/// One canonical tensor of a GGUF model.
#[derive(Debug, Clone)]
pub enum GgufWeight {
    /// Float GGUF types (F32/F16/BF16) keep their dtype; also quantized matrices that could
    /// not be split on block boundaries, as f32.
    Dense(Tensor),
    /// ggml blocks, shape in PyTorch order ([out, in] for a matrix).
    Quantized(Arc<QTensor>),
}

impl GgufWeight {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            GgufWeight::Dense(t) => t.dims().to_vec(),
            GgufWeight::Quantized(q) => q.shape().dims().to_vec(),
        }
    }

    /// The values as a dense tensor of `dtype`.
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        match self {
            GgufWeight::Dense(t) => t.to_dtype(dtype),
            GgufWeight::Quantized(q) => q.dequantize(&Device::Cpu)?.to_dtype(dtype),
        }
    }
}

/// A GGUF file read for inference: config, tokenizer and the weights under their canonical
/// MiniMind names, quantized ones still as ggml blocks.
pub struct GgufModelFile {
    pub config: MiniMindConfig,
    pub tokenizer: TokenizerFiles,
    pub weights: HashMap<String, GgufWeight>,
    pub source: PathBuf,
    /// How many GGUF tensors of each type the file holds.
    pub type_counts: BTreeMap<&'static str, usize>,
    /// Canonical tensors that had to be dequantized to be split (see the module docs).
    pub dequantized: Vec<String>,
}

/// Whether `path` is a GGUF file with at least one block-quantized tensor.
pub fn gguf_holds_quantized(path: &Path) -> anyhow::Result<bool> {
    let file = GgufFile::open(path)?;
    Ok(file.tensors.iter().any(|t| t.ty.is_quantized()))
}

/// Whether a model path names a GGUF file (by extension, as `read_checkpoint` decides).
pub fn is_gguf_path(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn candle_type(ty: GgmlType) -> GgmlDType {
    match ty {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::BF16 => GgmlDType::BF16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q4_K => GgmlDType::Q4K,
        GgmlType::Q5_K => GgmlDType::Q5K,
        GgmlType::Q6_K => GgmlDType::Q6K,
    }
}

/// `bytes` of type `ty` as a canonical tensor of `shape` (PyTorch order).
fn weight_from_bytes(bytes: &[u8], ty: GgmlType, shape: Vec<usize>, name: &str) -> anyhow::Result<GgufWeight> {
    let n: usize = shape.iter().product();
    let row = *shape.last().context("scalar tensor")?;
    let row_bytes = ty.row_bytes(row).with_context(|| format!("{name}: row of {row} values is not whole {ty} blocks"))?;
    ensure!(bytes.len() == n / row * row_bytes, "{name}: {} bytes for {shape:?} {ty}", bytes.len());
    let dense = |t: Tensor| -> anyhow::Result<GgufWeight> { Ok(GgufWeight::Dense(t.reshape(shape.clone())?)) };
    match ty {
        GgmlType::F32 => {
            let v: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            dense(Tensor::from_vec(v, n, &Device::Cpu)?)
        }
        GgmlType::F16 => {
            let v: Vec<half::f16> = bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]])).collect();
            dense(Tensor::from_vec(v, n, &Device::Cpu)?)
        }
        GgmlType::BF16 => {
            let v: Vec<half::bf16> = bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]])).collect();
            dense(Tensor::from_vec(v, n, &Device::Cpu)?)
        }
        _ => {
            let dtype = candle_type(ty);
            ensure!(
                dtype.block_size() == ty.block_size() && dtype.type_size() == ty.type_size(),
                "{name}: candle's {dtype:?} blocks are not ggml's {ty}"
            );
            Ok(GgufWeight::Quantized(Arc::new(qtensor(bytes, dtype, shape)?)))
        }
    }
}

/// candle reads blocks in place and asserts their alignment (2 or 4 bytes); the file's data
/// is 32-byte aligned, but reordered or sliced copies may not be, so those go through a
/// u64 buffer.
fn qtensor(bytes: &[u8], dtype: GgmlDType, shape: Vec<usize>) -> Result<QTensor> {
    let storage = if (bytes.as_ptr() as usize).is_multiple_of(8) {
        QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, dtype)?
    } else {
        let mut buf = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: `buf` owns at least `bytes.len()` initialised bytes, and u8 has no alignment.
        let view = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), bytes.len()) };
        view.copy_from_slice(bytes);
        QStorage::from_data(Cow::Borrowed(view), &Device::Cpu, dtype)?
    };
    QTensor::new(storage, shape)
}

impl GgufModelFile {
    /// Reads a `llama` / `ernie4_5-moe` GGUF (as `mm export gguf` or llama.cpp write it).
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let file = GgufFile::open(path)?;
        let source = path.display().to_string();
        let GgufHeader { config, vocab, plan } = read_header(&file)?;
        let mut weights = HashMap::new();
        let mut dequantized = Vec::new();
        for t in &plan {
            let info = file.tensor(&t.name).expect("checked by read_header");
            split_tensor(&file, info, &t.source, &mut weights, &mut dequantized)
                .with_context(|| format!("{source}: tensor '{}' ({})", t.name, info.ty))?;
        }
        let mut type_counts = BTreeMap::new();
        for t in &file.tensors {
            *type_counts.entry(t.ty.name()).or_insert(0) += 1;
        }
        Ok(Self {
            config,
            tokenizer: vocab.to_tokenizer_files()?,
            weights,
            source: path.to_path_buf(),
            type_counts,
            dequantized,
        })
    }

    /// Whether any weight is still in a block-quantized type.
    pub fn is_quantized(&self) -> bool {
        self.weights.values().any(|w| matches!(w, GgufWeight::Quantized(_)))
    }

    pub fn parameter_count(&self) -> usize {
        self.weights.values().map(|w| w.dims().iter().product::<usize>()).sum()
    }

    /// Bytes the weights take in memory as loaded.
    pub fn weight_bytes(&self) -> usize {
        self.weights
            .values()
            .map(|w| match w {
                GgufWeight::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
                GgufWeight::Quantized(q) => q.storage_size_in_bytes(),
            })
            .sum()
    }
}

impl fmt::Display for GgufModelFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let types: Vec<String> = self.type_counts.iter().map(|(t, n)| format!("{n}×{t}")).collect();
        write!(
            f,
            "{} (gguf, {} tensors, {:.2}M parameters, {}; {} run quantized, {:.2} MB of weights)",
            self.source.display(),
            self.weights.len(),
            self.parameter_count() as f64 / 1e6,
            types.join(" "),
            self.weights.values().filter(|w| matches!(w, GgufWeight::Quantized(_))).count(),
            self.weight_bytes() as f64 / 1e6,
        )
    }
}

/// Turns one GGUF tensor into the canonical tensors `source` says it holds.
fn split_tensor(
    file: &GgufFile,
    info: &TensorInfo,
    source: &TensorSource,
    out: &mut HashMap<String, GgufWeight>,
    dequantized: &mut Vec<String>,
) -> anyhow::Result<()> {
    let bytes = file.data(info);
    let ty = info.ty;
    let ne: Vec<usize> = info.ne.iter().map(|&d| d as usize).collect();
    let cols = ne[0];
    let rows: usize = ne[1..].iter().product();
    let row_bytes = ty.row_bytes(cols).with_context(|| format!("rows of {cols} values are not whole {ty} blocks"))?;
    let mut put = |name: &str, bytes: &[u8], shape: Vec<usize>| -> anyhow::Result<()> {
        out.insert(name.to_string(), weight_from_bytes(bytes, ty, shape, name)?);
        Ok(())
    };
    match source {
        TensorSource::Copy(name) => put(name, bytes, ne.iter().rev().copied().collect())?,
        TensorSource::PermuteRows { name, n_head } => {
            ensure!(ne.len() == 2 && rows.is_multiple_of(2 * n_head), "cannot un-permute {rows} rows over {n_head} heads");
            // order[r] = the file row that becomes row r (the inverse of the export permutation).
            let order = architecture::unpermute_rows(&(0..rows).collect::<Vec<usize>>(), rows, *n_head);
            let mut data = Vec::with_capacity(bytes.len());
            for &r in &order {
                data.extend_from_slice(&bytes[r * row_bytes..(r + 1) * row_bytes]);
            }
            put(name, &data, vec![rows, cols])?;
        }
        TensorSource::Stack(names) => {
            ensure!(ne.len() == 3 && ne[2] == names.len(), "expected {} stacked experts, dims {ne:?}", names.len());
            let per = ne[1] * row_bytes;
            for (e, n) in names.iter().enumerate() {
                put(n, &bytes[e * per..(e + 1) * per], vec![ne[1], cols])?;
            }
        }
        TensorSource::ConcatRows(names) => {
            ensure!(ne.len() == 2 && rows.is_multiple_of(names.len()), "{rows} rows do not split into {} parts", names.len());
            let part = rows / names.len();
            for (i, n) in names.iter().enumerate() {
                put(n, &bytes[i * part * row_bytes..(i + 1) * part * row_bytes], vec![part, cols])?;
            }
        }
        TensorSource::ConcatCols(names) => {
            let k = names.len();
            ensure!(ne.len() == 2 && cols.is_multiple_of(k), "{cols} columns do not split into {k} parts");
            let part = cols / k;
            match ty.row_bytes(part) {
                Some(part_bytes) => {
                    for (i, n) in names.iter().enumerate() {
                        let mut data = Vec::with_capacity(rows * part_bytes);
                        for r in 0..rows {
                            let start = r * row_bytes + i * part_bytes;
                            data.extend_from_slice(&bytes[start..start + part_bytes]);
                        }
                        put(n, &data, vec![rows, part])?;
                    }
                }
                _ => {
                    // The split falls inside blocks: dequantize this matrix and split the values.
                    let all = weight_from_bytes(bytes, ty, vec![rows, cols], &info.name)?.dequantize(DType::F32)?;
                    for (i, n) in names.iter().enumerate() {
                        let t = all.narrow(1, i * part, part)?.contiguous()?;
                        out.insert(n.clone(), GgufWeight::Dense(t));
                        dequantized.push(n.clone());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Builds layers from a [`GgufModelFile`]: quantized matrices become `QMatMul` layers,
/// everything else dense tensors of the compute dtype.
struct GgufSource<'a> {
    weights: &'a HashMap<String, GgufWeight>,
    dtype: DType,
    device: Device,
    /// Float matrices (F16/BF16 files) stay in their stored type, for the CPU engine, which
    /// multiplies them as they are; otherwise they take `dtype`.
    keep_float_types: bool,
}

impl GgufSource<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<&GgufWeight> {
        let w = self.weights.get(name).ok_or_else(|| candle_core::Error::Msg(format!("the GGUF has no tensor for `{name}`")))?;
        if w.dims() != shape {
            candle_core::bail!("`{name}` has dims {:?}, the model needs {shape:?}", w.dims());
        }
        Ok(w)
    }
}

impl WeightSource for GgufSource<'_> {
    fn tensor(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        self.get(name, shape)?.dequantize(self.dtype)?.to_device(&self.device)
    }

    fn linear(&self, out: usize, inp: usize, name: &str) -> Result<Linear> {
        match self.get(&format!("{name}.weight"), &[out, inp])? {
            GgufWeight::Dense(t) if self.keep_float_types && t.dtype() != DType::F32 => Ok(Linear::new(t.clone())),
            GgufWeight::Dense(t) => Ok(Linear::new(t.to_dtype(self.dtype)?.to_device(&self.device)?)),
            GgufWeight::Quantized(q) => Linear::quantized(q.clone()),
        }
    }

    /// Like llama.cpp, the tied head multiplies by the quantized embedding matrix itself.
    fn head(&self, cfg: &MiniMindConfig, embed: &Tensor) -> Result<Linear> {
        let name = if cfg.tie_word_embeddings { "model.embed_tokens" } else { "lm_head" };
        match self.get(&format!("{name}.weight"), &[cfg.vocab_size, cfg.hidden_size])? {
            GgufWeight::Dense(t) if cfg.tie_word_embeddings && !(self.keep_float_types && t.dtype() != DType::F32) => {
                Ok(Linear::new(embed.clone()))
            }
            _ => self.linear(cfg.vocab_size, cfg.hidden_size, name),
        }
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

impl MiniMind {
    /// The model of a GGUF file, running quantized matrices as ggml blocks (CPU only).
    /// `file.config` may be adjusted first (e.g. `set_inference_rope_scaling`).
    pub fn from_gguf(file: &GgufModelFile, dtype: DType, device: &Device) -> anyhow::Result<Self> {
        if !device.is_cpu() && file.is_quantized() {
            bail!("quantized GGUF inference runs on the CPU");
        }
        let src = GgufSource { weights: &file.weights, dtype, device: device.clone(), keep_float_types: device.is_cpu() };
        let mut model =
            MiniMind::build(&file.config, &src).with_context(|| format!("building the model from {}", file.source.display()))?;
        model.set_cpu_engine(true);
        Ok(model)
    }
}
