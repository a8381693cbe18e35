//! `llm.mnn.weight`: block-quantized Linear records and fp32 RMSNorm records, concatenated
//! in graph order with no header and no padding (docs/mnn.md §5), as MNN 3.6.1's
//! `llmexport.py` writes them.
//!
//! Quantization: [`super::quantize`].
//!
//! # Records
//!
//! * Linear → Convolution, `external = [offset, weight_len, alpha_len, bias_len, 0]`:
//!   `u8 2`, `oc, ic` as 16-bit (32-bit when either exceeds 65535), the weight map
//!   (`u8 count` — 0 meaning 256 — and `count` i8 values `−offset..offset−1`), the packed
//!   values (`weight_len` counts header + values), the alpha, an optional fp32 bias.
//! * RMSNorm → LayerNorm, `external = [offset, gamma_bytes, beta_bytes]`: fp32 gamma, then
//!   fp32 zeros of the same length (the beta).

use std::io::Write;

use anyhow::{bail, ensure, Context, Result};
use candle_core::DType;
use serde_json::{json, Value};

use mm_converters::naming::{self, Kind, EMBED, FINAL_NORM};
use mm_converters::quant::float::f32_to_bf16_bits;
use mm_converters::{Checkpoint, MiniMindConfig};

pub use super::quantize::{quantize, QuantOptions, QuantizedMatrix, DEFAULT_QUANT_BLOCK};

/// Sizes of one Linear record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearLayout {
    pub oc: usize,
    pub ic: usize,
    pub bits: u8,
    /// Effective block size (what the alpha is laid out by).
    pub block: usize,
    /// The block size asked for (written to `tie_embeddings.quant_block`, as llmexport does).
    pub requested_block: usize,
    pub header_len: u64,
    pub packed_len: u64,
    pub alpha_len: u64,
    pub bias_len: u64,
    /// `oc`/`ic` stored as i32 (`quanParameter.shapeInt32`).
    pub shape_int32: bool,
    pub alpha_fp16: bool,
}

impl LinearLayout {
    pub fn new(oc: usize, ic: usize, opts: &QuantOptions, has_bias: bool) -> Result<Self> {
        opts.validate()?;
        let shape_int32 = oc > 65535 || ic > 65535;
        let map_len = 1 + (1u64 << opts.bits);
        let header_len = 1 + if shape_int32 { 8 } else { 4 } + map_len;
        let block = opts.effective_block(ic);
        let alpha_len = (oc * (ic / block) * 2 * if opts.alpha_fp16 { 2 } else { 4 }) as u64;
        Ok(Self {
            oc,
            ic,
            bits: opts.bits,
            block,
            requested_block: opts.block,
            header_len,
            packed_len: ((oc * ic * opts.bits as usize).div_ceil(8)) as u64,
            alpha_len,
            bias_len: if has_bias { 4 * oc as u64 } else { 0 },
            shape_int32,
            alpha_fp16: opts.alpha_fp16,
        })
    }

    /// `external[1]`: header + packed values.
    pub fn weight_len(&self) -> u64 {
        self.header_len + self.packed_len
    }

    pub fn total_len(&self) -> u64 {
        self.weight_len() + self.alpha_len + self.bias_len
    }
}

/// The record header: `u8 2`, the shape, the weight map.
pub fn linear_header(oc: usize, ic: usize, bits: u8) -> Vec<u8> {
    let mut h = vec![2u8];
    if oc > 65535 || ic > 65535 {
        h.extend_from_slice(&(oc as i32).to_le_bytes());
        h.extend_from_slice(&(ic as i32).to_le_bytes());
    } else {
        h.extend_from_slice(&(oc as u16).to_le_bytes());
        h.extend_from_slice(&(ic as u16).to_le_bytes());
    }
    let offset = 1i32 << (bits - 1);
    h.push(if bits == 8 { 0 } else { (2 * offset) as u8 });
    h.extend((-offset..offset).map(|v| v as i8 as u8));
    h
}

/// Convolution2D's `quanParameter` (IDSTQuan) for a record; the graph copies it verbatim.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuanParameter {
    /// `type: 1` (IDST quantized weights, external).
    pub kind: i32,
    pub a_max_or_bits: i32,
    /// 1: the stored zero already includes `offset·scale` (what `tie_embeddings` expects).
    pub a_min: i32,
    /// Non-zero marks asymmetric quantization: `oc · (ic / block)`. llmexport divides by the
    /// requested block, not the halved one (0 when the block exceeds `ic`, which would turn
    /// the record symmetric); this uses the effective block, equal whenever no halving happens.
    pub read_type: i32,
    pub quant_scale: f32,
    pub shape_int32: bool,
    /// `scaleStorage`: FP16 (1) or FP32 (0).
    pub scale_fp16: bool,
}

impl QuanParameter {
    /// MNN's JSON form, keys in llmexport's order.
    pub fn to_json(&self) -> Value {
        json!({
            "quantScale": self.quant_scale,
            "scaleIn": 0.0,
            "scaleOut": 0.0,
            "useInt32": false,
            "has_scaleInt": false,
            "shapeInt32": self.shape_int32,
            "type": self.kind,
            "aMaxOrBits": self.a_max_or_bits,
            "aMin": self.a_min,
            "readType": self.read_type,
            "weightSize": 0,
            "scaleStorage": if self.scale_fp16 { "FP16" } else { "FP32" },
        })
    }
}

/// `llm_config.tie_embeddings`: where the runtime reads embedding rows inside lm_head's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TieEmbeddings {
    pub weight_offset: u64,
    pub alpha_offset: u64,
    pub alpha_size: u64,
    pub quant_bit: u8,
    pub quant_block: usize,
    pub alpha_fp16: bool,
}

impl TieEmbeddings {
    pub fn to_json(&self) -> Value {
        json!({
            "weight_offset": self.weight_offset,
            "alpha_offset": self.alpha_offset,
            "alpha_size": self.alpha_size,
            "quant_bit": self.quant_bit,
            "quant_block": self.quant_block,
            "alpha_dtype": if self.alpha_fp16 { "fp16" } else { "fp32" },
        })
    }
}

/// One Linear record in the weight file.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearRecord {
    /// The Convolution op's name in llmexport's scheme (`/layers.0/self_attn/q_proj/Linear`).
    pub op_name: String,
    /// Canonical checkpoint tensor name.
    pub tensor: String,
    pub offset: u64,
    pub layout: LinearLayout,
}

impl LinearRecord {
    /// `Convolution2D.external`: `[offset, weight_len, alpha_len, bias_len, 0]`.
    pub fn external(&self) -> [i64; 5] {
        let l = &self.layout;
        [self.offset as i64, l.weight_len() as i64, l.alpha_len as i64, l.bias_len as i64, 0]
    }

    pub fn quan_parameter(&self) -> QuanParameter {
        let l = &self.layout;
        QuanParameter {
            kind: 1,
            a_max_or_bits: l.bits as i32,
            a_min: 1,
            read_type: (l.oc * (l.ic / l.block)) as i32,
            quant_scale: 1.0,
            shape_int32: l.shape_int32,
            scale_fp16: l.alpha_fp16,
        }
    }

    /// Where the embedding reader finds this record's values and alpha.
    pub fn tie_embeddings(&self) -> TieEmbeddings {
        let l = &self.layout;
        TieEmbeddings {
            weight_offset: self.offset + l.header_len,
            alpha_offset: self.offset + l.weight_len(),
            alpha_size: l.alpha_len,
            quant_bit: l.bits,
            quant_block: l.requested_block,
            alpha_fp16: l.alpha_fp16,
        }
    }
}

/// One RMSNorm record (gamma, then a zero beta).
#[derive(Debug, Clone, PartialEq)]
pub struct NormRecord {
    pub op_name: String,
    pub tensor: String,
    pub offset: u64,
    /// Number of gamma values.
    pub len: usize,
}

impl NormRecord {
    /// `LayerNorm.external`: `[offset, gamma_bytes, beta_bytes]`.
    pub fn external(&self) -> [i64; 3] {
        [self.offset as i64, 4 * self.len as i64, 4 * self.len as i64]
    }

    pub fn total_len(&self) -> u64 {
        8 * self.len as u64
    }
}

/// Appends records to a weight file, tracking offsets.
pub struct WeightFileWriter<W: Write> {
    out: W,
    offset: u64,
}

impl<W: Write> WeightFileWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out, offset: 0 }
    }

    /// Bytes written so far (the next record's offset).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).context("writing llm.mnn.weight")?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Writes a quantized Linear (`requested_block` is what `tie_embeddings` reports).
    pub fn push_linear(
        &mut self,
        op_name: &str,
        tensor: &str,
        m: &QuantizedMatrix,
        opts: &QuantOptions,
        bias: Option<&[f32]>,
    ) -> Result<LinearRecord> {
        ensure!(
            m.bits == opts.bits && m.block == opts.effective_block(m.cols),
            "{tensor}: options do not match the matrix"
        );
        let layout = LinearLayout::new(m.rows, m.cols, opts, bias.is_some())?;
        if let Some(b) = bias {
            ensure!(b.len() == m.rows, "{tensor}: bias of {} values for {} outputs", b.len(), m.rows);
        }
        let offset = self.offset;
        self.put(&linear_header(m.rows, m.cols, m.bits))?;
        self.put(&m.packed())?;
        self.put(&m.alpha_bytes(opts.alpha_fp16))?;
        if let Some(b) = bias {
            self.put(&b.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
        }
        debug_assert_eq!(self.offset - offset, layout.total_len());
        Ok(LinearRecord { op_name: op_name.into(), tensor: tensor.into(), offset, layout })
    }

    /// Writes an RMSNorm's gamma and a zero beta.
    pub fn push_norm(&mut self, op_name: &str, tensor: &str, gamma: &[f32]) -> Result<NormRecord> {
        let offset = self.offset;
        let mut bytes: Vec<u8> = gamma.iter().flat_map(|v| v.to_le_bytes()).collect();
        bytes.resize(8 * gamma.len(), 0);
        self.put(&bytes)?;
        Ok(NormRecord { op_name: op_name.into(), tensor: tensor.into(), offset, len: gamma.len() })
    }

    pub fn finish(mut self) -> Result<W> {
        self.out.flush().context("writing llm.mnn.weight")?;
        Ok(self.out)
    }
}

/// The decoder's shapes, as far as the weight file is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoderShape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    /// Per-head q/k RMSNorm (MiniMind-3): `self_attn.{q,k}_norm.weight` of `head_dim`.
    pub qk_norm: bool,
    pub tied: bool,
}

impl DecoderShape {
    /// A dense MiniMind config (MoE is refused: the MNN graph has no expert routing yet).
    pub fn from_config(cfg: &MiniMindConfig) -> Result<Self> {
        if cfg.use_moe {
            bail!("MNN export of MoE checkpoints is not supported (dense MiniMind only)");
        }
        Ok(Self {
            hidden: cfg.hidden_size,
            layers: cfg.num_hidden_layers,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim(),
            intermediate: cfg.intermediate_size,
            vocab: cfg.vocab_size,
            qk_norm: false,
            tied: cfg.tie_word_embeddings,
        })
    }
}

/// Options for the whole decoder: llmexport quantizes lm_head with `--lm_quant_bit` /
/// `--lm_quant_block` (by default the same as the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecoderQuant {
    pub linear: QuantOptions,
    pub lm_head: QuantOptions,
}

impl DecoderQuant {
    pub fn uniform(opts: QuantOptions) -> Self {
        Self { linear: opts, lm_head: opts }
    }
}

/// One record of the weight file, in file order.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Norm(NormRecord),
    Linear(LinearRecord),
}

impl Record {
    pub fn offset(&self) -> u64 {
        match self {
            Record::Norm(r) => r.offset,
            Record::Linear(r) => r.offset,
        }
    }

    pub fn op_name(&self) -> &str {
        match self {
            Record::Norm(r) => &r.op_name,
            Record::Linear(r) => &r.op_name,
        }
    }

    /// The op's `external` array.
    pub fn external(&self) -> Vec<i64> {
        match self {
            Record::Norm(r) => r.external().to_vec(),
            Record::Linear(r) => r.external().to_vec(),
        }
    }
}

/// The records of one decoder layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRecords {
    pub input_norm: NormRecord,
    pub q: LinearRecord,
    pub q_norm: Option<NormRecord>,
    pub k: LinearRecord,
    pub k_norm: Option<NormRecord>,
    pub v: LinearRecord,
    pub o: LinearRecord,
    pub post_norm: NormRecord,
    pub gate: LinearRecord,
    pub up: LinearRecord,
    pub down: LinearRecord,
}

/// Every record of the decoder's weight file: what the graph writer points its ops at.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderWeights {
    pub layers: Vec<LayerRecords>,
    pub final_norm: NormRecord,
    pub lm_head: LinearRecord,
    pub tied: bool,
    /// Size of `llm.mnn.weight`.
    pub file_bytes: u64,
}

impl DecoderWeights {
    /// `llm_config.tie_embeddings` (tied models only; untied ones ship embeddings_bf16.bin).
    pub fn tie_embeddings(&self) -> Option<TieEmbeddings> {
        self.tied.then(|| self.lm_head.tie_embeddings())
    }

    /// All records in file order (= graph order).
    pub fn records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for l in &self.layers {
            out.push(Record::Norm(l.input_norm.clone()));
            out.push(Record::Linear(l.q.clone()));
            if let Some(n) = &l.q_norm {
                out.push(Record::Norm(n.clone()));
            }
            out.push(Record::Linear(l.k.clone()));
            if let Some(n) = &l.k_norm {
                out.push(Record::Norm(n.clone()));
            }
            for r in [&l.v, &l.o] {
                out.push(Record::Linear(r.clone()));
            }
            out.push(Record::Norm(l.post_norm.clone()));
            for r in [&l.gate, &l.up, &l.down] {
                out.push(Record::Linear(r.clone()));
            }
        }
        out.push(Record::Norm(self.final_norm.clone()));
        out.push(Record::Linear(self.lm_head.clone()));
        out
    }

    /// Quantized bits per Linear weight, alpha included (a summary figure).
    pub fn bits_per_weight(&self) -> f64 {
        let (mut bytes, mut n) = (0u64, 0u64);
        for r in self.records() {
            if let Record::Linear(l) = r {
                bytes += l.layout.packed_len + l.layout.alpha_len;
                n += (l.layout.oc * l.layout.ic) as u64;
            }
        }
        8.0 * bytes as f64 / n.max(1) as f64
    }
}

/// What goes into the file, in order.
#[derive(Debug, Clone)]
enum Spec {
    Norm { op: String, tensor: String, len: usize },
    Linear { op: String, tensor: String, oc: usize, ic: usize, lm_head: bool },
}

/// llmexport's op name of a layer tensor: its module path with `/` for `.` (`model.layers.0.self_attn.q_proj.weight`
/// → `/layers.0/self_attn/q_proj/Linear`).
fn op_name(canonical: &str, op: &str) -> String {
    let module = canonical.strip_prefix("model.").unwrap_or(canonical);
    let module = module.strip_suffix(".weight").unwrap_or(module);
    let (layer, path) = module.split_at(module.match_indices('.').nth(1).map_or(module.len(), |(i, _)| i));
    format!("/{layer}/{}/{op}", path.trim_start_matches('.').replace('.', "/"))
}

/// The order of a layer's weights in the file: the order the graph uses them.
const LAYER_ORDER: [Kind; 9] =
    [Kind::AttnNorm, Kind::AttnQ, Kind::AttnK, Kind::AttnV, Kind::AttnOut, Kind::FfnNorm, Kind::FfnGate, Kind::FfnUp, Kind::FfnDown];

fn specs(shape: &DecoderShape) -> Vec<Spec> {
    let (h, kv, ffn, d) = (shape.hidden, shape.kv_heads * shape.head_dim, shape.intermediate, shape.head_dim);
    let q_out = shape.heads * shape.head_dim;
    let mut out = Vec::new();
    for i in 0..shape.layers {
        for kind in LAYER_ORDER {
            let tensor = naming::name(kind, i, 0);
            let (oc, ic) = match kind {
                Kind::AttnQ => (q_out, h),
                Kind::AttnK | Kind::AttnV => (kv, h),
                Kind::AttnOut => (h, q_out),
                Kind::FfnGate | Kind::FfnUp => (ffn, h),
                Kind::FfnDown => (h, ffn),
                _ => {
                    out.push(Spec::Norm { op: op_name(&tensor, "RMSNorm"), tensor, len: h });
                    continue;
                }
            };
            out.push(Spec::Linear { op: op_name(&tensor, "Linear"), tensor, oc, ic, lm_head: false });
            // MiniMind-3's per-head q/k norms follow their projections.
            if shape.qk_norm && matches!(kind, Kind::AttnQ | Kind::AttnK) {
                let which = if kind == Kind::AttnQ { "q_norm" } else { "k_norm" };
                out.push(Spec::Norm {
                    op: format!("/layers.{i}/self_attn/{which}/RMSNorm"),
                    tensor: format!("model.layers.{i}.self_attn.{which}.weight"),
                    len: d,
                });
            }
        }
    }
    out.push(Spec::Norm { op: "/norm/RMSNorm".into(), tensor: FINAL_NORM.into(), len: h });
    let head = if shape.tied { EMBED } else { mm_converters::naming::LM_HEAD };
    out.push(Spec::Linear {
        op: "/lm/lm_head/Linear".into(),
        tensor: head.into(),
        oc: shape.vocab,
        ic: h,
        lm_head: true,
    });
    out
}

fn assemble(shape: &DecoderShape, records: Vec<Record>, file_bytes: u64) -> Result<DecoderWeights> {
    let mut recs: std::collections::VecDeque<Record> = records.into();
    fn take_norm(recs: &mut std::collections::VecDeque<Record>) -> Result<NormRecord> {
        match recs.pop_front() {
            Some(Record::Norm(n)) => Ok(n),
            _ => bail!("weight records out of order"),
        }
    }
    fn take_linear(recs: &mut std::collections::VecDeque<Record>) -> Result<LinearRecord> {
        match recs.pop_front() {
            Some(Record::Linear(l)) => Ok(l),
            _ => bail!("weight records out of order"),
        }
    }
    let mut layers = Vec::with_capacity(shape.layers);
    for _ in 0..shape.layers {
        let input_norm = take_norm(&mut recs)?;
        let q = take_linear(&mut recs)?;
        let q_norm = if shape.qk_norm { Some(take_norm(&mut recs)?) } else { None };
        let k = take_linear(&mut recs)?;
        let k_norm = if shape.qk_norm { Some(take_norm(&mut recs)?) } else { None };
        let v = take_linear(&mut recs)?;
        let o = take_linear(&mut recs)?;
        let post_norm = take_norm(&mut recs)?;
        let gate = take_linear(&mut recs)?;
        let up = take_linear(&mut recs)?;
        let down = take_linear(&mut recs)?;
        layers.push(LayerRecords { input_norm, q, q_norm, k, k_norm, v, o, post_norm, gate, up, down });
    }
    let final_norm = take_norm(&mut recs)?;
    let lm_head = take_linear(&mut recs)?;
    ensure!(recs.is_empty(), "unexpected trailing weight records");
    Ok(DecoderWeights { layers, final_norm, lm_head, tied: shape.tied, file_bytes })
}

/// The records' offsets and sizes for `shape` without any weights (they depend on shapes
/// and options only).
pub fn plan_decoder(shape: &DecoderShape, quant: &DecoderQuant) -> Result<DecoderWeights> {
    let mut offset = 0u64;
    let mut records = Vec::new();
    for spec in specs(shape) {
        match spec {
            Spec::Norm { op, tensor, len } => {
                let r = NormRecord { op_name: op, tensor, offset, len };
                offset += r.total_len();
                records.push(Record::Norm(r));
            }
            Spec::Linear { op, tensor, oc, ic, lm_head } => {
                let opts = if lm_head { &quant.lm_head } else { &quant.linear };
                let layout = LinearLayout::new(oc, ic, opts, false)?;
                let r = LinearRecord { op_name: op, tensor, offset, layout };
                offset += layout.total_len();
                records.push(Record::Linear(r));
            }
        }
    }
    assemble(shape, records, offset)
}

/// Writes the decoder's weight file. `source(tensor)` returns a tensor's values (row-major
/// f32) by canonical name — for a tied model lm_head is read as `model.embed_tokens.weight`;
/// `progress(done, total, tensor)` runs after each record.
pub fn write_decoder<W: Write>(
    shape: &DecoderShape,
    quant: &DecoderQuant,
    source: &mut dyn FnMut(&str) -> Result<Vec<f32>>,
    out: W,
    progress: &dyn Fn(usize, usize, &str),
) -> Result<(DecoderWeights, W)> {
    quant.linear.validate()?;
    quant.lm_head.validate()?;
    let specs = specs(shape);
    let total = specs.len();
    let mut writer = WeightFileWriter::new(out);
    let mut records = Vec::with_capacity(total);
    for (i, spec) in specs.into_iter().enumerate() {
        match spec {
            Spec::Norm { op, tensor, len } => {
                let gamma = source(&tensor)?;
                ensure!(gamma.len() == len, "{tensor}: {} values, expected {len}", gamma.len());
                records.push(Record::Norm(writer.push_norm(&op, &tensor, &gamma)?));
                progress(i + 1, total, &tensor);
            }
            Spec::Linear { op, tensor, oc, ic, lm_head } => {
                let opts = if lm_head { &quant.lm_head } else { &quant.linear };
                let w = source(&tensor)?;
                ensure!(w.len() == oc * ic, "{tensor}: {} values, expected {oc}×{ic}", w.len());
                let m = quantize(&w, oc, ic, opts).with_context(|| format!("quantizing {tensor}"))?;
                records.push(Record::Linear(writer.push_linear(&op, &tensor, &m, opts, None)?));
                progress(i + 1, total, &tensor);
            }
        }
    }
    let file_bytes = writer.offset();
    let out = writer.finish()?;
    Ok((assemble(shape, records, file_bytes)?, out))
}

/// A checkpoint tensor as row-major f32 (the values llmexport quantizes: the stored
/// values widened, no rounding through another type).
pub fn tensor_f32(ckpt: &Checkpoint, name: &str) -> Result<Vec<f32>> {
    let t = ckpt.get(name).with_context(|| format!("the checkpoint has no tensor `{name}`"))?;
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Writes the weight file of a dense checkpoint (see [`write_decoder`]).
pub fn write_checkpoint_weights<W: Write>(
    ckpt: &Checkpoint,
    quant: &DecoderQuant,
    out: W,
    progress: &dyn Fn(usize, usize, &str),
) -> Result<(DecoderWeights, W)> {
    let shape = DecoderShape::from_config(&ckpt.config)?;
    let mut source = |name: &str| -> Result<Vec<f32>> {
        if name == mm_converters::naming::LM_HEAD {
            Ok(ckpt.output_matrix().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        } else {
            tensor_f32(ckpt, name)
        }
    };
    write_decoder(&shape, quant, &mut source, out, progress)
}

/// `embeddings_bf16.bin` for an untied model: the `[vocab, hidden]` embedding as raw
/// little-endian bf16 (round to nearest even, as torch's `.bfloat16()`), no header.
pub fn embeddings_bf16(embed: &[f32]) -> Vec<u8> {
    embed.iter().flat_map(|&v| f32_to_bf16_bits(v).to_le_bytes()).collect()
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::mnn::quantize::tests::randn;
    use crate::mnn::quantize::quantize;
    use mm_converters::quant::float::f16_bits_to_f32;

    #[test]
    fn header_layout() {
        let h = linear_header(512, 1664, 4);
        assert_eq!(h.len(), 22);
        assert_eq!(&h[..6], &[2, 0x00, 0x02, 0x80, 0x06, 16]);
        assert_eq!(h[6] as i8, -8);
        assert_eq!(h[21] as i8, 7);
        let h = linear_header(6400, 512, 8);
        assert_eq!(h.len(), 262);
        assert_eq!(h[5], 0);
        assert_eq!((h[6] as i8, h[261] as i8), (-128, 127));
        let h = linear_header(70000, 512, 4);
        assert_eq!(h.len(), 26);
        assert_eq!(&h[1..5], &70000i32.to_le_bytes());
        let l = LinearLayout::new(70000, 512, &QuantOptions::default(), false).unwrap();
        assert!(l.shape_int32);
        assert_eq!(l.header_len, 26);
    }

    #[test]
    fn record_bytes_and_offsets() {
        let w = randn(16 * 128, 9, 0.1);
        let opts = QuantOptions::default();
        let m = quantize(&w, 16, 128, &opts).unwrap();
        let mut wr = WeightFileWriter::new(Vec::new());
        let n = wr.push_norm("n", "norm", &[1.0, 2.0]).unwrap();
        let l = wr.push_linear("l", "lin", &m, &opts, None).unwrap();
        let bytes = wr.finish().unwrap();
        assert_eq!(n.external(), [0, 8, 8]);
        assert_eq!(&bytes[..16], &[0, 0, 0x80, 0x3f, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(l.offset, 16);
        assert_eq!(l.external(), [16, 22 + 1024, 16 * 2 * 2 * 2, 0, 0]); // 16 rows × 2 blocks × (zero, scale) × fp16
        assert_eq!(bytes.len() as u64, 16 + l.layout.total_len());
        let rec = &bytes[16..];
        assert_eq!(&rec[..22], linear_header(16, 128, 4).as_slice());
        assert_eq!(&rec[22..22 + 1024], m.packed().as_slice());
        assert_eq!(&rec[22 + 1024..], m.alpha_bytes(true).as_slice());
        let q = l.quan_parameter();
        assert_eq!((q.kind, q.a_max_or_bits, q.a_min, q.read_type), (1, 4, 1, 32));
        let tie = l.tie_embeddings();
        assert_eq!((tie.weight_offset, tie.alpha_offset, tie.alpha_size), (16 + 22, 16 + 22 + 1024, 128));
    }

    /// The runtime's tied-embedding reader (DiskEmbedding): row `t` is `hidden·bits/8` bytes
    /// at `weight_offset + t·hidden·bits/8`, its alpha pairs at `alpha_offset`; it subtracts
    /// `8·scale` from the zero and computes `q·scale + zero'`.
    fn disk_embedding_row(file: &[u8], tie: &TieEmbeddings, hidden: usize, t: usize) -> Vec<f32> {
        let row_bytes = hidden * tie.quant_bit as usize / 8;
        let vocab = (tie.alpha_offset - tie.weight_offset) as usize * 8 / tie.quant_bit as usize / hidden;
        assert!(t < vocab);
        let blocks = hidden / tie.quant_block;
        let q = &file[tie.weight_offset as usize + t * row_bytes..][..row_bytes];
        let a = &file[tie.alpha_offset as usize..][..tie.alpha_size as usize];
        (0..hidden)
            .map(|i| {
                let v = if i % 2 == 0 { q[i / 2] >> 4 } else { q[i / 2] & 15 } as f32;
                let k = 2 * (t * blocks + i / tie.quant_block);
                let h = |j: usize| f16_bits_to_f32(u16::from_le_bytes([a[2 * j], a[2 * j + 1]]));
                let (zero, scale) = (h(k), h(k + 1));
                v * scale + (zero - 8.0 * scale)
            })
            .collect()
    }

    #[test]
    fn decoder_file_matches_plan_and_embedding_reader() {
        let shape = DecoderShape {
            hidden: 128,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 32,
            intermediate: 320,
            vocab: 300,
            qk_norm: true,
            tied: true,
        };
        let quant = DecoderQuant::uniform(QuantOptions { hqq: true, ..Default::default() });
        let mut tensors: std::collections::HashMap<String, Vec<f32>> = Default::default();
        let mut source = |name: &str| -> Result<Vec<f32>> {
            let n = tensors.len() as u64;
            Ok(tensors.entry(name.to_string()).or_insert_with(|| randn(200_000, n + 1, 0.05)).clone())
        };
        // Sizes differ per tensor: cut the random pool to what the spec asks for.
        let mut sized = |name: &str| -> Result<Vec<f32>> {
            let mut v = source(name)?;
            let len = specs(&shape)
                .iter()
                .find_map(|s| match s {
                    Spec::Norm { tensor, len, .. } if tensor == name => Some(*len),
                    Spec::Linear { tensor, oc, ic, .. } if tensor == name => Some(oc * ic),
                    _ => None,
                })
                .unwrap();
            v.truncate(len);
            Ok(v)
        };
        let calls = std::cell::Cell::new(0);
        let (written, bytes) = write_decoder(&shape, &quant, &mut sized, Vec::new(), &|done, total, _| {
            calls.set(calls.get() + 1);
            assert!(done <= total);
        })
        .unwrap();
        assert_eq!(calls.get(), written.records().len());
        assert_eq!(written, plan_decoder(&shape, &quant).unwrap());
        assert_eq!(bytes.len() as u64, written.file_bytes);
        assert_eq!(written.records().len(), 2 * 11 + 2);

        // Norm records hold gamma then zeros.
        let n = &written.layers[1].q_norm.as_ref().unwrap();
        let gamma = sized(&n.tensor).unwrap();
        let at = n.offset as usize;
        let got: Vec<f32> =
            bytes[at..at + 4 * n.len].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(got, gamma);
        assert!(bytes[at + 4 * n.len..at + 8 * n.len].iter().all(|&b| b == 0));

        // Embedding rows through tie_embeddings equal lm_head's dequantization.
        let tie = written.tie_embeddings().unwrap();
        let embed = sized(EMBED).unwrap();
        let m = quantize(&embed, shape.vocab, shape.hidden, &quant.lm_head).unwrap();
        let deq = m.dequantize(true);
        for t in [0, 1, 150, 299] {
            let row = disk_embedding_row(&bytes, &tie, shape.hidden, t);
            for (i, (&a, &b)) in row.iter().zip(&deq[t * shape.hidden..]).enumerate() {
                assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "row {t} [{i}]: {a} vs {b}");
            }
        }
    }

    #[test]
    fn minimind2_sizes() {
        // MiniMind2 (768 wide, 16 layers, kv 2×96, ffn 2048, vocab 6400, tied), 4-bit block 64.
        let cfg = MiniMindConfig::with_hidden(768, 16);
        let shape = DecoderShape::from_config(&cfg).unwrap();
        let plan = plan_decoder(&shape, &DecoderQuant::default()).unwrap();
        let linear: u64 = plan
            .records()
            .iter()
            .filter_map(|r| if let Record::Linear(l) = r { Some((l.layout.oc * l.layout.ic) as u64) } else { None })
            .sum();
        // 4 bits + two fp16 per 64 weights = 4.5 bits per weight.
        assert!((plan.bits_per_weight() - 4.5).abs() < 1e-9);
        let norms = (16 * 2 + 1) * 768 * 8;
        let headers = (16 * 7 + 1) * 22;
        assert_eq!(plan.file_bytes, linear * 9 / 16 + norms + headers);
        let tie = plan.tie_embeddings().unwrap();
        assert_eq!(tie.alpha_size, 6400 * 12 * 4);
        assert_eq!(tie.alpha_offset - tie.weight_offset, 6400 * 768 / 2);
        assert!(DecoderShape::from_config(&MiniMindConfig::preset("moe").unwrap()).is_err());
    }
}
