//! The graph IR: an in-memory `MNN.Net` — a tensor table, ops with typed parameters in
//! execution order, and the output names. [`super::decoder_graph`] builds it,
//! [`super::net_json`] and [`super::net_flatbuffer`] serialize it (and the latter reads it
//! back). Only the ops of the plain MiniMind graph are modelled (docs/mnn.md §4,
//! "minimal op set"); an op read from another file that falls outside them is kept as
//! [`OpParam::Opaque`] (type id and name only), which the writers refuse.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Result};

use super::weights::QuanParameter;

/// MNN's `DataType` (TensorFlow's numbering); only the values the graph uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Invalid = 0,
    Float = 1,
    Int32 = 3,
}

impl DataType {
    pub fn from_i32(v: i32) -> Result<Self> {
        Ok(match v {
            0 => Self::Invalid,
            1 => Self::Float,
            3 => Self::Int32,
            other => bail!("DataType {other} is not one the MiniMind graph uses"),
        })
    }

    /// The name MNN's JSON form uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Invalid => "DT_INVALID",
            Self::Float => "DT_FLOAT",
            Self::Int32 => "DT_INT32",
        }
    }
}

/// `MNN_DATA_FORMAT` (u8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    Nchw = 0,
    Nhwc = 1,
    Nc4hw4 = 2,
}

impl DataFormat {
    pub fn from_u8(v: u8) -> Result<Self> {
        Ok(match v {
            0 => Self::Nchw,
            1 => Self::Nhwc,
            2 => Self::Nc4hw4,
            other => bail!("MNN_DATA_FORMAT {other} is not one the MiniMind graph uses"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Nchw => "NCHW",
            Self::Nhwc => "NHWC",
            Self::Nc4hw4 => "NC4HW4",
        }
    }
}

/// `BinaryOpOperation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryKind {
    Add = 0,
    Sub = 1,
    Mul = 2,
}

impl BinaryKind {
    pub fn from_i32(v: i32) -> Option<Self> {
        [Self::Add, Self::Sub, Self::Mul].into_iter().find(|k| *k as i32 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Sub => "SUB",
            Self::Mul => "MUL",
        }
    }
}

/// `UnaryOpOperation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryKind {
    Neg = 1,
    Sin = 9,
    Cos = 10,
    Silu = 34,
}

impl UnaryKind {
    pub fn from_i32(v: i32) -> Option<Self> {
        [Self::Neg, Self::Sin, Self::Cos, Self::Silu].into_iter().find(|k| *k as i32 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Neg => "NEG",
            Self::Sin => "SIN",
            Self::Cos => "COS",
            Self::Silu => "SILU",
        }
    }
}

/// A constant's values (`Blob.int32s` / `Blob.float32s`).
#[derive(Debug, Clone, PartialEq)]
pub enum BlobData {
    Int32(Vec<i32>),
    Float(Vec<f32>),
}

impl BlobData {
    pub fn len(&self) -> usize {
        match self {
            Self::Int32(v) => v.len(),
            Self::Float(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn data_type(&self) -> DataType {
        match self {
            Self::Int32(_) => DataType::Int32,
            Self::Float(_) => DataType::Float,
        }
    }
}

/// A 1×1 quantized Convolution standing for a Linear, its weights external.
#[derive(Debug, Clone, PartialEq)]
pub struct Convolution {
    pub input_count: i32,
    pub output_count: i32,
    pub quan: QuanParameter,
    /// `[offset, weight_len, alpha_len, bias_len, 0]` into `llm.mnn.weight`.
    pub external: Vec<i64>,
}

/// A LayerNorm, its gamma/beta external (`[offset, gamma_bytes, beta_bytes]`).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm {
    pub axis: Vec<i32>,
    pub epsilon: f32,
    pub group: i32,
    pub use_rms_norm: bool,
    pub external: Vec<i64>,
}

/// What an op does, with its typed parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum OpParam {
    /// A graph input (`dformat` NCHW).
    Input {
        dims: Vec<i32>,
        dtype: DataType,
    },
    /// A constant (`dataFormat` NCHW).
    Const {
        dims: Vec<i32>,
        data: BlobData,
    },
    /// Static reshape (`dimType` NCHW), at most one `-1`.
    Reshape {
        dims: Vec<i32>,
    },
    Cast {
        src: DataType,
        dst: DataType,
    },
    /// Elementwise with broadcasting, `T: DT_FLOAT`.
    Binary(BinaryKind),
    /// `T: DT_FLOAT`.
    Unary(UnaryKind),
    Concat {
        axis: i32,
    },
    /// `StridedSlice{fromType: 1}`: ONNX Slice with inputs (data, starts, ends, axes, steps).
    Slice,
    LayerNorm(LayerNorm),
    ConvertTensor {
        source: DataFormat,
        dest: DataFormat,
    },
    Convolution(Convolution),
    /// Fused attention with the KV cache (`kv_cache: true`); inputs q, k, v, mask.
    Attention {
        layer_index: i32,
    },
    /// An op of another file that the IR does not model (reading only).
    Opaque {
        op_type: i32,
        param_tag: u8,
    },
}

/// An MNN `OpType` with the `OpParameter` union member its parameter is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpKind {
    pub op_type: i32,
    pub type_name: &'static str,
    pub param_tag: u8,
    pub param_name: &'static str,
}

const fn kind(op_type: i32, type_name: &'static str, param_tag: u8, param_name: &'static str) -> OpKind {
    OpKind { op_type, type_name, param_tag, param_name }
}

pub const INPUT: OpKind = kind(34, "Input", 21, "Input");
pub const CONST: OpKind = kind(11, "Const", 7, "Blob");
pub const RESHAPE: OpKind = kind(73, "Reshape", 55, "Reshape");
pub const CAST: OpKind = kind(9, "Cast", 8, "CastParam");
pub const BINARY: OpKind = kind(7, "BinaryOp", 6, "BinaryOp");
pub const UNARY: OpKind = kind(101, "UnaryOp", 70, "UnaryOp");
pub const CONCAT: OpKind = kind(10, "Concat", 4, "Axis");
pub const STRIDED_SLICE: OpKind = kind(91, "StridedSlice", 65, "StridedSliceParam");
pub const LAYER_NORM: OpKind = kind(603, "LayerNorm", 88, "LayerNorm");
pub const CONVERT_TENSOR: OpKind = kind(129, "ConvertTensor", 66, "TensorConvertInfo");
pub const CONVOLUTION: OpKind = kind(12, "Convolution", 9, "Convolution2D");
pub const ATTENTION: OpKind = kind(299, "Attention", 98, "AttentionParam");

/// Names of other `OpType`s seen in llmexport graphs, so `mm inspect` can name them.
const OTHER_OP_TYPES: &[(i32, &str)] =
    &[(31, "GatherV2"), (66, "Rank"), (80, "Shape"), (90, "Squeeze"), (107, "Unsqueeze"), (306, "RoPE")];

/// The name of an `OpType` id (`OpType#N` when unknown).
pub fn op_type_name(op_type: i32) -> String {
    let modelled = [
        INPUT,
        CONST,
        RESHAPE,
        CAST,
        BINARY,
        UNARY,
        CONCAT,
        STRIDED_SLICE,
        LAYER_NORM,
        CONVERT_TENSOR,
        CONVOLUTION,
        ATTENTION,
    ];
    modelled
        .iter()
        .find(|k| k.op_type == op_type)
        .map(|k| k.type_name.to_string())
        .or_else(|| OTHER_OP_TYPES.iter().find(|(id, _)| *id == op_type).map(|(_, n)| n.to_string()))
        .unwrap_or_else(|| format!("OpType#{op_type}"))
}

impl OpParam {
    /// The op type and union member; `None` for an opaque op.
    pub fn kind(&self) -> Option<OpKind> {
        Some(match self {
            Self::Input { .. } => INPUT,
            Self::Const { .. } => CONST,
            Self::Reshape { .. } => RESHAPE,
            Self::Cast { .. } => CAST,
            Self::Binary(_) => BINARY,
            Self::Unary(_) => UNARY,
            Self::Concat { .. } => CONCAT,
            Self::Slice => STRIDED_SLICE,
            Self::LayerNorm(_) => LAYER_NORM,
            Self::ConvertTensor { .. } => CONVERT_TENSOR,
            Self::Convolution(_) => CONVOLUTION,
            Self::Attention { .. } => ATTENTION,
            Self::Opaque { .. } => return None,
        })
    }

    pub fn op_type(&self) -> i32 {
        match self {
            Self::Opaque { op_type, .. } => *op_type,
            other => other.kind().map_or(0, |k| k.op_type),
        }
    }

    pub fn type_name(&self) -> String {
        op_type_name(self.op_type())
    }

    /// How many inputs the op takes (`None`: any number ≥ 1, or not checked).
    fn arity(&self) -> Option<usize> {
        match self {
            Self::Input { .. } | Self::Const { .. } => Some(0),
            Self::Reshape { .. }
            | Self::Cast { .. }
            | Self::Unary(_)
            | Self::LayerNorm(_)
            | Self::ConvertTensor { .. }
            | Self::Convolution(_) => Some(1),
            Self::Binary(_) => Some(2),
            Self::Slice => Some(5),
            Self::Attention { .. } => Some(4),
            Self::Concat { .. } | Self::Opaque { .. } => None,
        }
    }
}

/// One op: inputs and outputs are indices into [`Graph::tensors`].
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    pub name: String,
    pub param: OpParam,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
}

/// A whole `MNN.Net`.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    /// `tensorName`: the name of each tensor index.
    pub tensors: Vec<String>,
    /// `oplists`, in execution order.
    pub ops: Vec<Op>,
    /// `outputName`.
    pub outputs: Vec<String>,
    /// `bizCode`.
    pub biz_code: String,
    /// `extraInfo.version`: the MNN schema version the file is written against.
    pub version: String,
    /// `mnn_uuid`.
    pub uuid: String,
}

impl Graph {
    /// Checks the graph is well formed: indices in range, every tensor made by exactly one
    /// op before any op reads it, op arities, outputs that exist, no opaque ops. With
    /// `allow_opaque` (a graph read from another file) opaque ops, out-of-order ops and unused
    /// tensors pass.
    pub fn validate(&self, allow_opaque: bool) -> Result<()> {
        let n = self.tensors.len();
        let mut produced = vec![false; n];
        for (i, op) in self.ops.iter().enumerate() {
            let at = || format!("op {i} `{}` ({})", op.name, op.param.type_name());
            if let OpParam::Opaque { .. } = op.param {
                ensure!(allow_opaque, "{}: an op type the MiniMind graph does not use", at());
            }
            if let Some(arity) = op.param.arity() {
                ensure!(op.inputs.len() == arity, "{}: {} inputs, expected {arity}", at(), op.inputs.len());
            }
            ensure!(!op.outputs.is_empty(), "{}: no outputs", at());
            for &t in &op.inputs {
                ensure!(t < n, "{}: input tensor {t} out of range ({n} tensors)", at());
                // Foreign graphs (llmexport's) may list ops out of order; only ours must be topological.
                ensure!(
                    allow_opaque || produced[t],
                    "{}: reads tensor `{}` before any op makes it",
                    at(),
                    self.tensors[t]
                );
            }
            for &t in &op.outputs {
                ensure!(t < n, "{}: output tensor {t} out of range ({n} tensors)", at());
                ensure!(!produced[t], "{}: tensor `{}` is made twice", at(), self.tensors[t]);
                produced[t] = true;
            }
        }
        // Foreign graphs keep tensors their converter left unused; ours have none.
        if let Some(t) = produced.iter().position(|p| !p).filter(|_| !allow_opaque) {
            bail!("tensor {t} `{}` is made by no op", self.tensors[t]);
        }
        for name in &self.outputs {
            ensure!(self.tensors.contains(name), "output `{name}` is not a tensor of the graph");
        }
        Ok(())
    }

    /// Op counts by type name.
    pub fn op_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for op in &self.ops {
            *counts.entry(op.param.type_name()).or_insert(0) += 1;
        }
        counts
    }

    /// A deterministic `mnn_uuid` for this content (FNV-1a 128 over the graph without its
    /// uuid): the same export gives the same file.
    pub fn content_uuid(&self) -> String {
        let text = format!("{:?}", Graph { uuid: String::new(), ..self.clone() });
        let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
        for byte in text.bytes() {
            h ^= byte as u128;
            h = h.wrapping_mul(0x0000000001000000000000000000013B);
        }
        let x = format!("{h:032x}");
        format!("{}-{}-{}-{}-{}", &x[..8], &x[8..12], &x[12..16], &x[16..20], &x[20..])
    }

    /// The graph's Input ops as (tensor name, dims, dtype).
    pub fn inputs(&self) -> Vec<(&str, &[i32], DataType)> {
        self.ops
            .iter()
            .filter_map(|op| match &op.param {
                OpParam::Input { dims, dtype } => Some((self.tensors[op.outputs[0]].as_str(), dims.as_slice(), *dtype)),
                _ => None,
            })
            .collect()
    }
}

/// Appends ops with one output each, named like the op, to a growing graph.
pub struct GraphBuilder {
    graph: Graph,
}

impl GraphBuilder {
    pub fn new(biz_code: &str, version: &str) -> Self {
        Self {
            graph: Graph {
                tensors: Vec::new(),
                ops: Vec::new(),
                outputs: Vec::new(),
                biz_code: biz_code.into(),
                version: version.into(),
                uuid: String::new(),
            },
        }
    }

    /// Adds an op whose single output tensor is called `name`; returns that tensor.
    pub fn op(&mut self, name: impl Into<String>, param: OpParam, inputs: &[usize]) -> usize {
        let name = name.into();
        let out = self.graph.tensors.len();
        self.graph.tensors.push(name.clone());
        self.graph.ops.push(Op { name, param, inputs: inputs.to_vec(), outputs: vec![out] });
        out
    }

    pub fn int_const(&mut self, name: impl Into<String>, values: &[i32]) -> usize {
        let dims = vec![values.len() as i32];
        self.op(name, OpParam::Const { dims, data: BlobData::Int32(values.to_vec()) }, &[])
    }

    pub fn finish(mut self, outputs: &[&str]) -> Result<Graph> {
        self.graph.outputs = outputs.iter().map(|s| s.to_string()).collect();
        self.graph.validate(false)?;
        Ok(self.graph)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_validates() {
        let mut b = GraphBuilder::new("mm", "3.6.1");
        let x = b.op("x", OpParam::Input { dims: vec![-1], dtype: DataType::Float }, &[]);
        let y = b.op("y", OpParam::Unary(UnaryKind::Neg), &[x]);
        b.op("z", OpParam::Binary(BinaryKind::Add), &[x, y]);
        let g = b.finish(&["z"]).unwrap();
        assert_eq!(g.op_counts().get("UnaryOp"), Some(&1));
        assert_eq!(g.inputs(), vec![("x", &[-1][..], DataType::Float)]);

        let mut bad = g.clone();
        bad.ops[2].inputs = vec![0];
        assert!(bad.validate(false).unwrap_err().to_string().contains("1 inputs, expected 2"));
        let mut bad = g.clone();
        bad.ops.swap(1, 2);
        assert!(bad.validate(false).unwrap_err().to_string().contains("before any op makes it"));
        let mut bad = g.clone();
        bad.outputs = vec!["logits".into()];
        assert!(bad.validate(false).unwrap_err().to_string().contains("`logits` is not a tensor"));
        let mut bad = g;
        bad.ops[1].param = OpParam::Opaque { op_type: 80, param_tag: 0 };
        assert!(bad.validate(false).unwrap_err().to_string().contains("(Shape)"));
        bad.validate(true).unwrap();
    }
}
