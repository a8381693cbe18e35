//! The MiniMind decoder as an MNN graph: the plain graph of docs/mnn.md §4 (elementwise
//! RoPE, one fused `Attention` per layer owning its KV cache, every Linear a 1×1 quantized
//! `Convolution` pointing into `llm.mnn.weight`), with the runtime's I/O contract (§2d):
//!
//! * inputs `input_ids` (the embeddings, `[S,1,H]` f32 — the runtime looks the rows up
//!   itself), `attention_mask` (f32; the CPU backend passes a scalar and `Attention` masks
//!   causally), `position_ids` (`[1,S]` i32), `logits_index` (`[1]` i32: −1 = last row only,
//!   0 = all rows);
//! * output `logits` `[1,n,V]`; the final norm's output is named `hidden_states` (what the
//!   runtime asks for when a config sets `hidden_states`).
//!
//! RoPE is mm's (src/model/rope.rs, upstream's `precompute_freqs_cis`): rotate-half with the
//! cos/sin halves duplicated, `inv_freq[i] = 1/θ^(2i/D)` in f32, rescaled YaRN-style when the
//! config carries `rope_scaling` — the rescaling only changes these constants, so it is
//! exported exactly, and the angle `position·inv_freq` is rounded to f32 as mm rounds it.

use anyhow::{bail, ensure, Context, Result};

use mm_converters::config::rope_inverse_frequencies;
use mm_converters::MiniMindConfig;

use super::graph::{
    BinaryKind, BlobData, Convolution, DataFormat, DataType, Graph, GraphBuilder, LayerNorm, OpParam, UnaryKind,
};
use super::weights::{DecoderShape, DecoderWeights, LinearRecord, NormRecord};

/// The MNN version whose schema and runtime the graph is written for.
pub const MNN_VERSION: &str = "3.6.1";
/// `bizCode` of the graphs mm writes.
pub const BIZ_CODE: &str = "mm";
/// Graph input and output names the runtime binds by name.
pub const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";
pub const POSITION_IDS: &str = "position_ids";
pub const LOGITS_INDEX: &str = "logits_index";
pub const LOGITS: &str = "logits";
pub const HIDDEN_STATES: &str = "hidden_states";
/// "To the end" for a slice end (what llmexport's graphs use).
const SLICE_END: i32 = 1 << 30;

/// What the graph needs beyond the weight records.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderGraphSpec {
    pub shape: DecoderShape,
    pub rms_norm_eps: f32,
    /// Rotary inverse frequencies, `head_dim / 2` of them.
    pub inv_freq: Vec<f32>,
}

impl DecoderGraphSpec {
    /// The spec of a dense MiniMind config (MoE is refused by [`DecoderShape::from_config`]).
    pub fn from_config(cfg: &MiniMindConfig) -> Result<Self> {
        cfg.validate().context("the checkpoint's config cannot be exported to MNN")?;
        let shape = DecoderShape::from_config(cfg)?;
        let inv_freq = rope_inverse_frequencies(
            shape.head_dim,
            cfg.max_position_embeddings,
            cfg.rope_theta,
            cfg.rope_scaling.as_ref(),
        );
        Ok(Self { shape, rms_norm_eps: cfg.rms_norm_eps as f32, inv_freq })
    }
}

/// Checks a Linear record has the shape the graph wires it with.
fn expect_linear(r: &LinearRecord, oc: usize, ic: usize) -> Result<()> {
    let l = &r.layout;
    ensure!(
        (l.oc, l.ic) == (oc, ic),
        "{} ({}): the weight record is {}×{}, the config implies {oc}×{ic}",
        r.op_name,
        r.tensor,
        l.oc,
        l.ic
    );
    Ok(())
}

fn expect_norm(r: &NormRecord, len: usize) -> Result<()> {
    ensure!(r.len == len, "{} ({}): {} gamma values, the config implies {len}", r.op_name, r.tensor, r.len);
    Ok(())
}

/// Rejects specs and records the graph cannot be wired from, naming the mismatch.
fn check(spec: &DecoderGraphSpec, w: &DecoderWeights) -> Result<()> {
    let s = &spec.shape;
    ensure!(s.hidden > 0 && s.layers > 0 && s.heads > 0 && s.kv_heads > 0 && s.vocab > 0, "empty decoder shape {s:?}");
    ensure!(
        s.head_dim > 0 && s.head_dim.is_multiple_of(2),
        "head_dim {} must be even for rotary embeddings",
        s.head_dim
    );
    ensure!(
        s.heads.is_multiple_of(s.kv_heads),
        "{} attention heads are not a multiple of {} KV heads",
        s.heads,
        s.kv_heads
    );
    ensure!(
        spec.inv_freq.len() == s.head_dim / 2,
        "{} rotary frequencies for head_dim {}",
        spec.inv_freq.len(),
        s.head_dim
    );
    ensure!(spec.inv_freq.iter().all(|f| f.is_finite()), "non-finite rotary frequency");
    ensure!(
        spec.rms_norm_eps.is_finite() && spec.rms_norm_eps > 0.0,
        "rms_norm_eps {} is not positive",
        spec.rms_norm_eps
    );
    let limit = i32::MAX as usize;
    ensure!(
        [s.hidden, s.vocab, s.intermediate, s.heads * s.head_dim].iter().all(|&v| v < limit),
        "dimensions beyond i32"
    );
    ensure!(w.layers.len() == s.layers, "{} layers of weight records for {} layers", w.layers.len(), s.layers);
    ensure!(w.tied == s.tied, "weight records and config disagree on tied embeddings");
    let (q_out, kv_out) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    for l in &w.layers {
        expect_norm(&l.input_norm, s.hidden)?;
        expect_linear(&l.q, q_out, s.hidden)?;
        expect_linear(&l.k, kv_out, s.hidden)?;
        expect_linear(&l.v, kv_out, s.hidden)?;
        expect_linear(&l.o, s.hidden, q_out)?;
        expect_norm(&l.post_norm, s.hidden)?;
        expect_linear(&l.gate, s.intermediate, s.hidden)?;
        expect_linear(&l.up, s.intermediate, s.hidden)?;
        expect_linear(&l.down, s.hidden, s.intermediate)?;
        match (&l.q_norm, &l.k_norm, s.qk_norm) {
            (Some(q), Some(k), true) => {
                expect_norm(q, s.head_dim)?;
                expect_norm(k, s.head_dim)?;
            }
            (None, None, false) => {}
            _ => bail!("{}: q/k norm records do not match the config (qk_norm {})", l.q.op_name, s.qk_norm),
        }
    }
    expect_norm(&w.final_norm, s.hidden)?;
    expect_linear(&w.lm_head, s.vocab, s.hidden)
}

/// Builds ops on a [`GraphBuilder`] with the constants every layer shares.
struct Decoder<'a> {
    b: GraphBuilder,
    spec: &'a DecoderGraphSpec,
    /// Int32 constants for slices: `[0]`, `[1]`, `[D/2]`, `[2^30]`, axis `[3]` (head_dim of
    /// `[1,S,heads,D]`) and axis `[1]` (the sequence).
    zero: usize,
    one: usize,
    half: usize,
    end: usize,
    head_axis: usize,
    seq_axis: usize,
    /// The `attention_mask` input and the `[1,S,1,D]` rotary tables.
    mask: usize,
    cos: usize,
    sin: usize,
}

impl Decoder<'_> {
    fn norm(&mut self, r: &NormRecord, x: usize, name: Option<&str>) -> usize {
        let param = OpParam::LayerNorm(LayerNorm {
            axis: vec![-1],
            epsilon: self.spec.rms_norm_eps,
            group: 1,
            use_rms_norm: true,
            external: r.external().to_vec(),
        });
        self.b.op(name.unwrap_or(&r.op_name), param, &[x])
    }

    /// Linears reading the same input share its reshape to `[-1,ic,1,1]` and its conversion
    /// to NC4HW4 (as llmexport's graphs do); each then converts back and reshapes to
    /// `[1,-1,oc]`. `last_name` renames the final reshape of the last record.
    fn linears(&mut self, x: usize, records: &[&LinearRecord], last_name: Option<&str>) -> Vec<usize> {
        let first = records[0];
        let ic = first.layout.ic as i32;
        let pre =
            self.b.op(format!("{}/pre_reshape", first.op_name), OpParam::Reshape { dims: vec![-1, ic, 1, 1] }, &[x]);
        let c4 = self.b.op(
            format!("{}/pre_convert", first.op_name),
            OpParam::ConvertTensor { source: DataFormat::Nchw, dest: DataFormat::Nc4hw4 },
            &[pre],
        );
        let mut outs = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            debug_assert_eq!(r.layout.ic as i32, ic);
            let conv = OpParam::Convolution(Convolution {
                input_count: ic,
                output_count: r.layout.oc as i32,
                quan: r.quan_parameter(),
                external: r.external().to_vec(),
            });
            let y = self.b.op(r.op_name.clone(), conv, &[c4]);
            let back = self.b.op(
                format!("{}/post_convert", r.op_name),
                OpParam::ConvertTensor { source: DataFormat::Nc4hw4, dest: DataFormat::Nchw },
                &[y],
            );
            let name = match last_name {
                Some(n) if i + 1 == records.len() => n.to_string(),
                _ => format!("{}/post_reshape", r.op_name),
            };
            outs.push(self.b.op(name, OpParam::Reshape { dims: vec![1, -1, r.layout.oc as i32] }, &[back]));
        }
        outs
    }

    /// `[1,S,heads·D]` → `[1,S,heads,D]`, the optional per-head RMSNorm, then
    /// `x·cos + rotate_half(x)·sin` with `rotate_half(x) = concat(−x[D/2:], x[:D/2])`.
    fn heads_with_rope(&mut self, prefix: &str, x: usize, heads: usize, norm: Option<&NormRecord>) -> usize {
        let d = self.spec.shape.head_dim as i32;
        let mut x = self.b.op(format!("{prefix}/heads"), OpParam::Reshape { dims: vec![1, -1, heads as i32, d] }, &[x]);
        if let Some(n) = norm {
            x = self.norm(n, x, None);
        }
        let (zero, one, half, end, axis) = (self.zero, self.one, self.half, self.end, self.head_axis);
        let x_cos = self.b.op(format!("{prefix}/rope_cos"), OpParam::Binary(BinaryKind::Mul), &[x, self.cos]);
        let second = self.b.op(format!("{prefix}/rope_second_half"), OpParam::Slice, &[x, half, end, axis, one]);
        let first = self.b.op(format!("{prefix}/rope_first_half"), OpParam::Slice, &[x, zero, half, axis, one]);
        let neg = self.b.op(format!("{prefix}/rope_neg"), OpParam::Unary(UnaryKind::Neg), &[second]);
        let rotated = self.b.op(format!("{prefix}/rope_rotate_half"), OpParam::Concat { axis: -1 }, &[neg, first]);
        let x_sin = self.b.op(format!("{prefix}/rope_sin"), OpParam::Binary(BinaryKind::Mul), &[rotated, self.sin]);
        self.b.op(format!("{prefix}/rope"), OpParam::Binary(BinaryKind::Add), &[x_cos, x_sin])
    }

    fn layer(&mut self, i: usize, w: &super::weights::LayerRecords, x: usize) -> usize {
        let s = &self.spec.shape;
        let p = format!("/layers.{i}");
        let xn = self.norm(&w.input_norm, x, None);
        let qkv = self.linears(xn, &[&w.q, &w.k, &w.v], None);
        let q = self.heads_with_rope(&format!("{p}/self_attn/q"), qkv[0], s.heads, w.q_norm.as_ref());
        let k = self.heads_with_rope(&format!("{p}/self_attn/k"), qkv[1], s.kv_heads, w.k_norm.as_ref());
        let v = self.b.op(
            format!("{p}/self_attn/v/heads"),
            OpParam::Reshape { dims: vec![1, -1, s.kv_heads as i32, s.head_dim as i32] },
            &[qkv[2]],
        );
        let attn = self.b.op(
            format!("{p}/self_attn/Attention"),
            OpParam::Attention { layer_index: i as i32 },
            &[q, k, v, self.mask],
        );
        let o = self.linears(attn, &[&w.o], None)[0];
        let x = self.b.op(format!("{p}/attn_residual"), OpParam::Binary(BinaryKind::Add), &[x, o]);
        let xn = self.norm(&w.post_norm, x, None);
        let gate_up = self.linears(xn, &[&w.gate, &w.up], None);
        let act = self.b.op(format!("{p}/mlp/act"), OpParam::Unary(UnaryKind::Silu), &[gate_up[0]]);
        let prod = self.b.op(format!("{p}/mlp/act_mul_up"), OpParam::Binary(BinaryKind::Mul), &[act, gate_up[1]]);
        let down = self.linears(prod, &[&w.down], None)[0];
        self.b.op(format!("{p}/mlp_residual"), OpParam::Binary(BinaryKind::Add), &[x, down])
    }
}

/// The decoder graph for `weights` (from [`super::weights::write_decoder`] or
/// [`super::weights::plan_decoder`]).
pub fn decoder_graph(spec: &DecoderGraphSpec, weights: &DecoderWeights) -> Result<Graph> {
    check(spec, weights)?;
    let s = &spec.shape;
    let (h, d) = (s.hidden as i32, s.head_dim as i32);
    let mut b = GraphBuilder::new(BIZ_CODE, MNN_VERSION);
    let input_ids = b.op(INPUT_IDS, OpParam::Input { dims: vec![-1, 1, h], dtype: DataType::Float }, &[]);
    let mask = b.op(ATTENTION_MASK, OpParam::Input { dims: vec![1, 1, -1, -1], dtype: DataType::Float }, &[]);
    let positions = b.op(POSITION_IDS, OpParam::Input { dims: vec![1, -1], dtype: DataType::Int32 }, &[]);
    let logits_index = b.op(LOGITS_INDEX, OpParam::Input { dims: vec![1], dtype: DataType::Int32 }, &[]);
    let zero = b.int_const("/const/zero", &[0]);
    let one = b.int_const("/const/one", &[1]);
    let half = b.int_const("/const/half_head_dim", &[d / 2]);
    let end = b.int_const("/const/slice_end", &[SLICE_END]);
    let head_axis = b.int_const("/const/head_dim_axis", &[3]);
    let seq_axis = b.int_const("/const/sequence_axis", &[1]);

    // Rotary tables for this call's positions: [S,1]·[D/2] → cos/sin, halves duplicated,
    // shaped [1,S,1,D] to broadcast over heads.
    let pos = b.op("/rotary/position", OpParam::Cast { src: DataType::Int32, dst: DataType::Float }, &[positions]);
    let pos = b.op("/rotary/position_column", OpParam::Reshape { dims: vec![-1, 1] }, &[pos]);
    let inv = b.op(
        "/rotary/inv_freq",
        OpParam::Const { dims: vec![d / 2], data: BlobData::Float(spec.inv_freq.clone()) },
        &[],
    );
    let angle = b.op("/rotary/angle", OpParam::Binary(BinaryKind::Mul), &[pos, inv]);
    let table = |b: &mut GraphBuilder, kind: UnaryKind, name: &str| {
        let half_table = b.op(format!("/rotary/{name}_half"), OpParam::Unary(kind), &[angle]);
        let full = b.op(format!("/rotary/{name}_full"), OpParam::Concat { axis: -1 }, &[half_table, half_table]);
        b.op(format!("/rotary/{name}"), OpParam::Reshape { dims: vec![1, -1, 1, d] }, &[full])
    };
    let cos = table(&mut b, UnaryKind::Cos, "cos");
    let sin = table(&mut b, UnaryKind::Sin, "sin");

    let mut dec = Decoder { b, spec, zero, one, half, end, head_axis, seq_axis, mask, cos, sin };
    let mut x = dec.b.op("/embed/reshape", OpParam::Reshape { dims: vec![1, -1, h] }, &[input_ids]);
    for (i, layer) in weights.layers.iter().enumerate() {
        x = dec.layer(i, layer, x);
    }
    // Rows from logits_index on (−1: the last; 0: all), then the final norm and the head.
    let (end, seq_axis, one) = (dec.end, dec.seq_axis, dec.one);
    let rows = dec.b.op("/lm/rows", OpParam::Slice, &[x, logits_index, end, seq_axis, one]);
    let hidden = dec.norm(&weights.final_norm, rows, Some(HIDDEN_STATES));
    dec.linears(hidden, &[&weights.lm_head], Some(LOGITS));
    let mut graph = dec.b.finish(&[LOGITS])?;
    graph.uuid = graph.content_uuid();
    Ok(graph)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mnn::graph::OpParam;
    use crate::mnn::weights::{plan_decoder, DecoderQuant};

    fn spec(layers: usize, qk_norm: bool) -> (DecoderGraphSpec, DecoderWeights) {
        let cfg = MiniMindConfig {
            num_attention_heads: 4,
            num_key_value_heads: 2,
            ..MiniMindConfig::with_hidden(128, layers)
        };
        let mut spec = DecoderGraphSpec::from_config(&cfg).unwrap();
        spec.shape.qk_norm = qk_norm;
        let weights = plan_decoder(&spec.shape, &DecoderQuant::default()).unwrap();
        (spec, weights)
    }

    #[test]
    fn op_counts_of_a_two_layer_model() {
        let (spec, weights) = spec(2, false);
        let g = decoder_graph(&spec, &weights).unwrap();
        let c = g.op_counts();
        let get = |k: &str| c.get(k).copied().unwrap_or(0);
        // 7 Linears per layer + lm_head; q/k/v and gate/up share their input conversion.
        assert_eq!(get("Convolution"), 2 * 7 + 1);
        assert_eq!(get("ConvertTensor"), 2 * (4 + 7) + 2);
        // Per layer: 4 shared-input reshapes + 7 output reshapes + q/k/v head reshapes;
        // embed, rotary position column and cos/sin.
        assert_eq!(get("Reshape"), 2 * (4 + 7 + 3) + 2 + 2 + 2);
        assert_eq!(get("LayerNorm"), 2 * 2 + 1);
        assert_eq!(get("Attention"), 2);
        assert_eq!(get("Input"), 4);
        assert_eq!(get("Const"), 7);
        assert_eq!(get("Cast"), 1);
        // RoPE: 2 slices per q/k; the final row slice.
        assert_eq!(get("StridedSlice"), 2 * 4 + 1);
        // Per layer: NEG ×2, SILU; COS and SIN once.
        assert_eq!(get("UnaryOp"), 2 * 3 + 2);
        // Per layer: 3 per RoPE ×2, 2 residuals, SwiGLU product; the angle once.
        assert_eq!(get("BinaryOp"), 2 * 9 + 1);
        assert_eq!(get("Concat"), 2 * 2 + 2);
        assert_eq!(g.ops.len(), c.values().sum::<usize>());
        assert_eq!(g.outputs, vec!["logits"]);
        let names: Vec<_> = g.inputs().iter().map(|i| i.0).collect();
        assert_eq!(names, [INPUT_IDS, ATTENTION_MASK, POSITION_IDS, LOGITS_INDEX]);
        assert_eq!(g.tensors.last().unwrap(), LOGITS);
        assert!(g.tensors.iter().any(|t| t == HIDDEN_STATES));
        // Every record is referenced once, with its own external offsets.
        let externals: Vec<Vec<i64>> = g
            .ops
            .iter()
            .filter_map(|op| match &op.param {
                OpParam::Convolution(c) => Some(c.external.clone()),
                OpParam::LayerNorm(n) => Some(n.external.clone()),
                _ => None,
            })
            .collect();
        let records: Vec<Vec<i64>> = weights.records().iter().map(|r| r.external()).collect();
        assert_eq!(externals, records);
        // Deterministic.
        assert_eq!(decoder_graph(&spec, &weights).unwrap(), g);
        assert_eq!(g.uuid.len(), 36);
    }

    #[test]
    fn qk_norm_adds_per_head_norms() {
        let (spec, weights) = spec(2, true);
        let g = decoder_graph(&spec, &weights).unwrap();
        assert_eq!(g.op_counts()["LayerNorm"], 2 * 4 + 1);
    }

    #[test]
    fn mismatched_records_are_refused() {
        let (spec, weights) = spec(2, false);
        let mut w = weights.clone();
        w.layers[1].k.layout.oc = 96;
        let e = decoder_graph(&spec, &w).unwrap_err().to_string();
        assert!(e.contains("/layers.1/self_attn/k_proj/Linear") && e.contains("96×128"), "{e}");
        let mut w = weights.clone();
        w.layers.pop();
        assert!(decoder_graph(&spec, &w).unwrap_err().to_string().contains("1 layers of weight records for 2"));
        let (qk, _) = self::spec(2, true);
        assert!(decoder_graph(&qk, &weights).unwrap_err().to_string().contains("q/k norm records"));
        let mut odd = spec.clone();
        odd.inv_freq.pop();
        assert!(decoder_graph(&odd, &weights).unwrap_err().to_string().contains("rotary frequencies"));
    }

    #[test]
    fn moe_is_refused_with_the_reason() {
        let e = DecoderGraphSpec::from_config(&MiniMindConfig::preset("moe").unwrap()).unwrap_err();
        assert!(e.to_string().contains("MoE"), "{e}");
    }
}
