//! The graph as a FlatBuffer `MNN.Net` — the `llm.mnn` MNN's runtime loads — written with the
//! `flatbuffers` crate's builder and read back with [`FbTable`]. No generated code: the field
//! slots below are the positions of the fields in MNN 3.6.1's schema (docs/mnn.md §6;
//! a union takes two slots, `<name>_type` then `<name>`). Every field the graph sets is
//! written explicitly, defaults included, as MNN's own converter does.
//!
//! Reading decodes the ops the IR models ([`OpParam`]) and keeps any other op (or a modelled
//! op with settings the IR does not cover) as [`OpParam::Opaque`], so `mm inspect` can also
//! read llmexport's graphs.

use anyhow::{bail, ensure, Context, Result};
use flatbuffers::{FlatBufferBuilder, TableFinishedWIPOffset, WIPOffset};

use super::flatbuffer_reader::FbTable;
use super::graph::{
    BinaryKind, BlobData, Convolution, DataFormat, DataType, Graph, LayerNorm, Op, OpKind, OpParam, UnaryKind,
};
use super::weights::QuanParameter;

/// Field slots per table (slot id = position of the field in the schema).
mod slot {
    pub mod net {
        pub const BIZ_CODE: u16 = 0;
        pub const EXTRA_INFO: u16 = 2;
        pub const OPLISTS: u16 = 3;
        pub const OUTPUT_NAME: u16 = 4;
        pub const PREFER_FORWARD_TYPE: u16 = 5;
        pub const SOURCE_TYPE: u16 = 6;
        pub const TENSOR_NAME: u16 = 7;
        pub const TENSOR_NUMBER: u16 = 8;
        pub const USAGE: u16 = 9;
        pub const MNN_UUID: u16 = 11;
    }
    pub mod extra_info {
        pub const VERSION: u16 = 2;
    }
    pub mod op {
        pub const INPUT_INDEXES: u16 = 0;
        pub const MAIN_TYPE: u16 = 1;
        pub const MAIN: u16 = 2;
        pub const NAME: u16 = 3;
        pub const OUTPUT_INDEXES: u16 = 4;
        pub const TYPE: u16 = 5;
        pub const DEFAULT_DIMENTION_FORMAT: u16 = 6;
        pub const EXTERNAL_PATH: u16 = 7;
    }
    pub mod input {
        pub const DIMS: u16 = 0;
        pub const DTYPE: u16 = 1;
        pub const DFORMAT: u16 = 2;
    }
    pub mod blob {
        pub const DIMS: u16 = 0;
        pub const DATA_FORMAT: u16 = 1;
        pub const DATA_TYPE: u16 = 2;
        pub const UINT8S: u16 = 3;
        pub const INT8S: u16 = 4;
        pub const INT32S: u16 = 5;
        pub const INT64S: u16 = 6;
        pub const FLOAT32S: u16 = 7;
        pub const STRINGS: u16 = 8;
        pub const EXTERNAL: u16 = 9;
    }
    pub mod reshape {
        pub const DIMS: u16 = 0;
        pub const DIM_TYPE: u16 = 1;
    }
    pub mod cast {
        pub const SRC_T: u16 = 0;
        pub const DST_T: u16 = 1;
    }
    pub mod binary {
        pub const OP_TYPE: u16 = 0;
        pub const T: u16 = 1;
        pub const ACTIVATION_TYPE: u16 = 2;
    }
    pub mod unary {
        pub const OP_TYPE: u16 = 0;
        pub const T: u16 = 1;
        pub const TABLE_INT8: u16 = 2;
    }
    pub mod axis {
        pub const AXIS: u16 = 0;
    }
    pub mod strided_slice {
        /// Index, T, beginMask, endMask, ellipsisMask, newAxisMask, shrinkAxisMask: slots 0–6.
        pub const FIELDS_BEFORE_FROM_TYPE: u16 = 7;
        pub const FROM_TYPE: u16 = 7;
    }
    pub mod layer_norm {
        pub const AXIS: u16 = 0;
        pub const EPSILON: u16 = 1;
        pub const GAMMA: u16 = 2;
        pub const BETA: u16 = 3;
        pub const GROUP: u16 = 4;
        pub const EXTERNAL: u16 = 5;
        pub const USE_RMS_NORM: u16 = 6;
    }
    pub mod convert {
        pub const SOURCE: u16 = 0;
        pub const DEST: u16 = 1;
    }
    pub mod conv2d {
        pub const COMMON: u16 = 0;
        pub const WEIGHT: u16 = 1;
        pub const BIAS: u16 = 2;
        pub const QUAN_PARAMETER: u16 = 3;
        pub const SYMMETRIC_QUAN: u16 = 4;
        pub const SPARSE_PARAMETER: u16 = 5;
        pub const EXTERNAL: u16 = 6;
    }
    pub mod common {
        /// padX, padY, kernelX, kernelY, strideX, strideY, dilateX, dilateY: slots 0–7.
        pub const PAD_MODE: u16 = 8;
        pub const GROUP: u16 = 9;
        pub const OUTPUT_COUNT: u16 = 10;
        pub const INPUT_COUNT: u16 = 11;
        pub const RELU: u16 = 12;
        pub const RELU6: u16 = 13;
        pub const PADS: u16 = 14;
        pub const OUT_PADS: u16 = 15;
        pub const HAS_OUTPUT_SHAPE: u16 = 16;
    }
    pub mod quan {
        pub const BUFFER: u16 = 0;
        pub const ALPHA: u16 = 1;
        pub const TYPE: u16 = 2;
        pub const USE_INT32: u16 = 3;
        pub const QUANT_SCALE: u16 = 4;
        pub const SCALE_IN: u16 = 5;
        pub const SCALE_OUT: u16 = 6;
        pub const A_MAX_OR_BITS: u16 = 7;
        pub const A_MIN: u16 = 8;
        pub const READ_TYPE: u16 = 9;
        pub const HAS_SCALE_INT: u16 = 10;
        pub const SHAPE_INT32: u16 = 11;
        pub const WEIGHT_SIZE: u16 = 12;
        pub const INDEX: u16 = 13;
        pub const ALPHA_FP16: u16 = 14;
        pub const SCALE_STORAGE: u16 = 15;
    }
    pub mod attention {
        pub const KV_CACHE: u16 = 0;
        pub const KV_SHARED_LAYER: u16 = 1;
        pub const LAYER_INDEX: u16 = 2;
        pub const KV_SHARED_LAYER_INDEX: u16 = 3;
        pub const MHQ_QUANT: u16 = 4;
        pub const OUTPUT_C4: u16 = 5;
        pub const ATTN_SCALE: u16 = 6;
    }

    /// Byte offset of slot `id` inside a vtable.
    pub const fn voffset(id: u16) -> u16 {
        4 + 2 * id
    }
}

use slot::voffset;

/// `NetSource::ONNX`, `ForwardType::CPU`, `Usage::INFERENCE`: what llmexport's graphs carry.
const SOURCE_ONNX: u8 = 3;
const FORWARD_CPU: u8 = 0;
const USAGE_INFERENCE: u8 = 0;
/// `PadMode::CAFFE`, `QuantizeScaleStorage` FP32 / FP16.
const PAD_CAFFE: u8 = 0;
const SCALE_FP32: u8 = 0;
const SCALE_FP16: u8 = 1;

type Table = WIPOffset<TableFinishedWIPOffset>;

/// Starts a table, lets `fill` push its fields, ends it.
fn table(fbb: &mut FlatBufferBuilder, fill: impl FnOnce(&mut FlatBufferBuilder)) -> Table {
    let start = fbb.start_table();
    fill(fbb);
    fbb.end_table(start)
}

fn push_i32(fbb: &mut FlatBufferBuilder, id: u16, v: i32) {
    fbb.push_slot_always::<i32>(voffset(id), v);
}

fn push_u8(fbb: &mut FlatBufferBuilder, id: u16, v: u8) {
    fbb.push_slot_always::<u8>(voffset(id), v);
}

fn push_bool(fbb: &mut FlatBufferBuilder, id: u16, v: bool) {
    fbb.push_slot_always::<bool>(voffset(id), v);
}

fn push_f32(fbb: &mut FlatBufferBuilder, id: u16, v: f32) {
    fbb.push_slot_always::<f32>(voffset(id), v);
}

fn push_ref<T>(fbb: &mut FlatBufferBuilder, id: u16, v: WIPOffset<T>) {
    fbb.push_slot_always(voffset(id), v);
}

fn quan_table(fbb: &mut FlatBufferBuilder, q: &QuanParameter) -> Table {
    use slot::quan::*;
    table(fbb, |f| {
        push_i32(f, TYPE, q.kind);
        push_bool(f, USE_INT32, false);
        push_f32(f, QUANT_SCALE, q.quant_scale);
        push_f32(f, SCALE_IN, 0.0);
        push_f32(f, SCALE_OUT, 0.0);
        push_i32(f, A_MAX_OR_BITS, q.a_max_or_bits);
        push_i32(f, A_MIN, q.a_min);
        push_i32(f, READ_TYPE, q.read_type);
        push_bool(f, HAS_SCALE_INT, false);
        push_bool(f, SHAPE_INT32, q.shape_int32);
        f.push_slot_always::<u32>(voffset(WEIGHT_SIZE), 0);
        push_u8(f, SCALE_STORAGE, if q.scale_fp16 { SCALE_FP16 } else { SCALE_FP32 });
    })
}

fn convolution_table(fbb: &mut FlatBufferBuilder, c: &Convolution) -> Table {
    let common = table(fbb, |f| {
        use slot::common::*;
        // padX, padY = 0; kernel, stride and dilation 1 in both directions.
        for (id, v) in [0, 0, 1, 1, 1, 1, 1, 1].into_iter().enumerate() {
            push_i32(f, id as u16, v);
        }
        push_u8(f, PAD_MODE, PAD_CAFFE);
        push_i32(f, GROUP, 1);
        push_i32(f, OUTPUT_COUNT, c.output_count);
        push_i32(f, INPUT_COUNT, c.input_count);
        push_bool(f, RELU, false);
        push_bool(f, RELU6, false);
        push_bool(f, HAS_OUTPUT_SHAPE, false);
    });
    let quan = quan_table(fbb, &c.quan);
    let external = fbb.create_vector(&c.external);
    table(fbb, |f| {
        use slot::conv2d::*;
        push_ref(f, COMMON, common);
        push_ref(f, QUAN_PARAMETER, quan);
        push_ref(f, EXTERNAL, external);
    })
}

/// The `main` table of one op.
fn param_table(fbb: &mut FlatBufferBuilder, param: &OpParam) -> Result<Table> {
    Ok(match param {
        OpParam::Input { dims, dtype } => {
            let dims = fbb.create_vector(dims);
            table(fbb, |f| {
                use slot::input::*;
                push_ref(f, DIMS, dims);
                push_i32(f, DTYPE, *dtype as i32);
                push_u8(f, DFORMAT, DataFormat::Nchw as u8);
            })
        }
        OpParam::Const { dims, data } => {
            let dims = fbb.create_vector(dims);
            let values = match data {
                BlobData::Int32(v) => (slot::blob::INT32S, fbb.create_vector(v).as_union_value()),
                BlobData::Float(v) => (slot::blob::FLOAT32S, fbb.create_vector(v).as_union_value()),
            };
            table(fbb, |f| {
                use slot::blob::*;
                push_ref(f, DIMS, dims);
                push_u8(f, DATA_FORMAT, DataFormat::Nchw as u8);
                push_i32(f, DATA_TYPE, data.data_type() as i32);
                push_ref(f, values.0, values.1);
            })
        }
        OpParam::Reshape { dims } => {
            let dims = fbb.create_vector(dims);
            table(fbb, |f| {
                push_ref(f, slot::reshape::DIMS, dims);
                push_u8(f, slot::reshape::DIM_TYPE, DataFormat::Nchw as u8);
            })
        }
        OpParam::Cast { src, dst } => table(fbb, |f| {
            push_i32(f, slot::cast::SRC_T, *src as i32);
            push_i32(f, slot::cast::DST_T, *dst as i32);
        }),
        OpParam::Binary(k) => table(fbb, |f| {
            push_i32(f, slot::binary::OP_TYPE, *k as i32);
            push_i32(f, slot::binary::T, DataType::Float as i32);
            push_i32(f, slot::binary::ACTIVATION_TYPE, 0);
        }),
        OpParam::Unary(k) => table(fbb, |f| {
            push_i32(f, slot::unary::OP_TYPE, *k as i32);
            push_i32(f, slot::unary::T, DataType::Float as i32);
        }),
        OpParam::Concat { axis } => table(fbb, |f| push_i32(f, slot::axis::AXIS, *axis)),
        OpParam::Slice => table(fbb, |f| {
            // Index and T DT_INVALID, all masks 0 (as llmexport's ONNX slices).
            for id in 0..slot::strided_slice::FIELDS_BEFORE_FROM_TYPE {
                push_i32(f, id, 0);
            }
            push_i32(f, slot::strided_slice::FROM_TYPE, 1);
        }),
        OpParam::LayerNorm(n) => {
            let axis = fbb.create_vector(&n.axis);
            let external = fbb.create_vector(&n.external);
            table(fbb, |f| {
                use slot::layer_norm::*;
                push_ref(f, AXIS, axis);
                push_f32(f, EPSILON, n.epsilon);
                push_i32(f, GROUP, n.group);
                push_ref(f, EXTERNAL, external);
                push_bool(f, USE_RMS_NORM, n.use_rms_norm);
            })
        }
        OpParam::ConvertTensor { source, dest } => table(fbb, |f| {
            push_u8(f, slot::convert::SOURCE, *source as u8);
            push_u8(f, slot::convert::DEST, *dest as u8);
        }),
        OpParam::Convolution(c) => convolution_table(fbb, c),
        OpParam::Attention { layer_index } => table(fbb, |f| {
            use slot::attention::*;
            push_bool(f, KV_CACHE, true);
            push_i32(f, LAYER_INDEX, *layer_index);
            push_i32(f, KV_SHARED_LAYER_INDEX, -1);
            push_bool(f, OUTPUT_C4, false);
            push_f32(f, ATTN_SCALE, 0.0);
        }),
        OpParam::Opaque { op_type, .. } => bail!("op type {op_type} was read from another file and cannot be written"),
    })
}

fn op_table(fbb: &mut FlatBufferBuilder, op: &Op) -> Result<Table> {
    let kind = op.param.kind().context("opaque op")?;
    let main = param_table(fbb, &op.param)?;
    let to_i32 = |v: &[usize]| v.iter().map(|&i| i as i32).collect::<Vec<i32>>();
    let inputs = (!op.inputs.is_empty()).then(|| fbb.create_vector(&to_i32(&op.inputs)));
    let outputs = fbb.create_vector(&to_i32(&op.outputs));
    let name = fbb.create_string(&op.name);
    Ok(table(fbb, |f| {
        use slot::op::*;
        if let Some(inputs) = inputs {
            push_ref(f, INPUT_INDEXES, inputs);
        }
        push_u8(f, MAIN_TYPE, kind.param_tag);
        push_ref(f, MAIN, main);
        push_ref(f, NAME, name);
        push_ref(f, OUTPUT_INDEXES, outputs);
        push_i32(f, TYPE, kind.op_type);
        push_u8(f, DEFAULT_DIMENTION_FORMAT, DataFormat::Nhwc as u8);
    }))
}

/// The bytes of `llm.mnn` for `graph`.
pub fn write_net(graph: &Graph) -> Result<Vec<u8>> {
    graph.validate(false)?;
    ensure!(graph.tensors.len() < i32::MAX as usize, "too many tensors");
    let mut fbb = FlatBufferBuilder::with_capacity(64 * 1024 + 256 * graph.ops.len());
    let ops = graph.ops.iter().map(|op| op_table(&mut fbb, op)).collect::<Result<Vec<_>>>()?;
    let oplists = fbb.create_vector(&ops);
    let names: Vec<_> = graph.tensors.iter().map(|t| fbb.create_string(t)).collect();
    let tensor_name = fbb.create_vector(&names);
    let outputs: Vec<_> = graph.outputs.iter().map(|t| fbb.create_string(t)).collect();
    let output_name = fbb.create_vector(&outputs);
    let version = fbb.create_string(&graph.version);
    let extra_info = table(&mut fbb, |f| push_ref(f, slot::extra_info::VERSION, version));
    let biz_code = fbb.create_string(&graph.biz_code);
    let uuid = fbb.create_string(&graph.uuid);
    let root = table(&mut fbb, |f| {
        use slot::net::*;
        push_ref(f, BIZ_CODE, biz_code);
        push_ref(f, EXTRA_INFO, extra_info);
        push_ref(f, OPLISTS, oplists);
        push_ref(f, OUTPUT_NAME, output_name);
        push_u8(f, PREFER_FORWARD_TYPE, FORWARD_CPU);
        push_u8(f, SOURCE_TYPE, SOURCE_ONNX);
        push_ref(f, TENSOR_NAME, tensor_name);
        push_i32(f, TENSOR_NUMBER, 0);
        push_u8(f, USAGE, USAGE_INFERENCE);
        push_ref(f, MNN_UUID, uuid);
    });
    fbb.finish_minimal(root);
    Ok(fbb.finished_data().to_vec())
}

// ---- reading ----
//
// Absent fields take the schema's defaults (MNN's converter writes them all anyway).

fn data_type(v: i32) -> Option<DataType> {
    DataType::from_i32(v).ok()
}

fn data_format(v: u8) -> Option<DataFormat> {
    DataFormat::from_u8(v).ok()
}

fn read_quan(t: &FbTable) -> Result<Option<QuanParameter>> {
    use slot::quan::*;
    // Inline quantized weights or tables are not the external layout the IR models.
    if t.has(BUFFER)? || t.has(ALPHA)? || t.has(INDEX)? || t.has(ALPHA_FP16)? {
        return Ok(None);
    }
    if t.bool(USE_INT32, false)? || t.bool(HAS_SCALE_INT, false)? || t.u32(WEIGHT_SIZE, 0)? != 0 {
        return Ok(None);
    }
    if t.f32(SCALE_IN, 0.0)? != 0.0 || t.f32(SCALE_OUT, 0.0)? != 0.0 {
        return Ok(None);
    }
    let scale_fp16 = match t.u8(SCALE_STORAGE, SCALE_FP32)? {
        SCALE_FP16 => true,
        SCALE_FP32 => false,
        _ => return Ok(None),
    };
    Ok(Some(QuanParameter {
        kind: t.i32(TYPE, 0)?,
        a_max_or_bits: t.i32(A_MAX_OR_BITS, 0)?,
        a_min: t.i32(A_MIN, 0)?,
        read_type: t.i32(READ_TYPE, 0)?,
        quant_scale: t.f32(QUANT_SCALE, 0.0)?,
        shape_int32: t.bool(SHAPE_INT32, false)?,
        scale_fp16,
    }))
}

fn read_convolution(t: &FbTable) -> Result<Option<Convolution>> {
    use slot::conv2d::*;
    if t.has(WEIGHT)? || t.has(BIAS)? || t.has(SYMMETRIC_QUAN)? || t.has(SPARSE_PARAMETER)? {
        return Ok(None);
    }
    let (Some(common), Some(quan)) = (t.table(COMMON)?, t.table(QUAN_PARAMETER)?) else { return Ok(None) };
    {
        use slot::common::*;
        let defaults = [0, 0, 1, 1, 1, 1, 1, 1];
        for (id, want) in defaults.into_iter().enumerate() {
            if common.i32(id as u16, want)? != want {
                return Ok(None);
            }
        }
        if common.u8(PAD_MODE, PAD_CAFFE)? != PAD_CAFFE
            || common.i32(GROUP, 1)? != 1
            || common.bool(RELU, false)?
            || common.bool(RELU6, false)?
            || common.bool(HAS_OUTPUT_SHAPE, false)?
            || common.has(PADS)?
            || common.has(OUT_PADS)?
        {
            return Ok(None);
        }
    }
    let Some(quan) = read_quan(&quan)? else { return Ok(None) };
    Ok(Some(Convolution {
        input_count: common.i32(slot::common::INPUT_COUNT, 0)?,
        output_count: common.i32(slot::common::OUTPUT_COUNT, 0)?,
        quan,
        external: t.i64s(EXTERNAL)?,
    }))
}

/// The typed parameter of a modelled op, or `None` when its settings fall outside the IR.
fn read_param(kind: OpKind, main: Option<FbTable>) -> Result<Option<OpParam>> {
    let Some(t) = main else { return Ok(None) };
    Ok(match kind.op_type {
        34 => {
            use slot::input::*;
            match (data_type(t.i32(DTYPE, DataType::Float as i32)?), t.u8(DFORMAT, DataFormat::Nc4hw4 as u8)?) {
                (Some(dtype), 0) => Some(OpParam::Input { dims: t.i32s(DIMS)?, dtype }),
                _ => None,
            }
        }
        11 => {
            use slot::blob::*;
            let others = [UINT8S, INT8S, INT64S, STRINGS, EXTERNAL];
            let has_other = others.iter().map(|&s| t.has(s)).collect::<Result<Vec<_>>>()?.into_iter().any(|h| h);
            let data = match data_type(t.i32(DATA_TYPE, DataType::Float as i32)?) {
                Some(DataType::Int32) => Some(BlobData::Int32(t.i32s(INT32S)?)),
                Some(DataType::Float) => Some(BlobData::Float(t.f32s(FLOAT32S)?)),
                _ => None,
            };
            match data {
                Some(data) if !has_other && t.u8(DATA_FORMAT, 0)? == 0 => {
                    Some(OpParam::Const { dims: t.i32s(DIMS)?, data })
                }
                _ => None,
            }
        }
        73 => (t.u8(slot::reshape::DIM_TYPE, 0)? == 0 && t.has(slot::reshape::DIMS)?)
            .then(|| t.i32s(slot::reshape::DIMS).map(|dims| OpParam::Reshape { dims }))
            .transpose()?,
        9 => match (data_type(t.i32(slot::cast::SRC_T, 0)?), data_type(t.i32(slot::cast::DST_T, 0)?)) {
            (Some(src), Some(dst)) => Some(OpParam::Cast { src, dst }),
            _ => None,
        },
        7 => {
            let k = BinaryKind::from_i32(t.i32(slot::binary::OP_TYPE, 0)?);
            let plain = t.i32(slot::binary::T, 1)? == 1 && t.i32(slot::binary::ACTIVATION_TYPE, 0)? == 0;
            k.filter(|_| plain).map(OpParam::Binary)
        }
        101 => {
            let k = UnaryKind::from_i32(t.i32(slot::unary::OP_TYPE, 0)?);
            let plain = t.i32(slot::unary::T, 0)? == 1 && !t.has(slot::unary::TABLE_INT8)?;
            k.filter(|_| plain).map(OpParam::Unary)
        }
        10 => Some(OpParam::Concat { axis: t.i32(slot::axis::AXIS, 0)? }),
        91 => {
            let masks_zero =
                (0..slot::strided_slice::FIELDS_BEFORE_FROM_TYPE).map(|s| t.i32(s, 0)).collect::<Result<Vec<_>>>()?;
            (masks_zero.iter().all(|&v| v == 0) && t.i32(slot::strided_slice::FROM_TYPE, 0)? == 1)
                .then_some(OpParam::Slice)
        }
        603 => {
            use slot::layer_norm::*;
            let inline = t.vector_len(GAMMA, 4)? > 0 || t.vector_len(BETA, 4)? > 0;
            (!inline)
                .then(|| -> Result<OpParam> {
                    Ok(OpParam::LayerNorm(LayerNorm {
                        axis: t.i32s(AXIS)?,
                        epsilon: t.f32(EPSILON, 0.0)?,
                        group: t.i32(GROUP, 1)?,
                        use_rms_norm: t.bool(USE_RMS_NORM, false)?,
                        external: t.i64s(EXTERNAL)?,
                    }))
                })
                .transpose()?
        }
        129 => match (data_format(t.u8(slot::convert::SOURCE, 0)?), data_format(t.u8(slot::convert::DEST, 0)?)) {
            (Some(source), Some(dest)) => Some(OpParam::ConvertTensor { source, dest }),
            _ => None,
        },
        12 => read_convolution(&t)?.map(OpParam::Convolution),
        299 => {
            use slot::attention::*;
            let plain = t.bool(KV_CACHE, true)?
                && !t.has(KV_SHARED_LAYER)?
                && !t.has(MHQ_QUANT)?
                && t.i32(KV_SHARED_LAYER_INDEX, -1)? == -1
                && !t.bool(OUTPUT_C4, false)?
                && t.f32(ATTN_SCALE, 0.0)? == 0.0;
            plain.then(|| t.i32(LAYER_INDEX, -1)).transpose()?.map(|layer_index| OpParam::Attention { layer_index })
        }
        _ => None,
    })
}

fn indexes(v: Vec<i32>, what: &str) -> Result<Vec<usize>> {
    v.into_iter()
        .map(|i| usize::try_from(i).map_err(|_| anyhow::anyhow!("negative tensor index {i} in {what}")))
        .collect()
}

fn read_op(t: &FbTable) -> Result<Op> {
    use slot::op::*;
    let name = t.string(NAME)?.unwrap_or_default().to_string();
    let op_type = t.i32(TYPE, 0)?;
    let param_tag = t.u8(MAIN_TYPE, 0)?;
    let kind = OpParam::Opaque { op_type, param_tag };
    let modelled = [
        super::graph::INPUT,
        super::graph::CONST,
        super::graph::RESHAPE,
        super::graph::CAST,
        super::graph::BINARY,
        super::graph::UNARY,
        super::graph::CONCAT,
        super::graph::STRIDED_SLICE,
        super::graph::LAYER_NORM,
        super::graph::CONVERT_TENSOR,
        super::graph::CONVOLUTION,
        super::graph::ATTENTION,
    ];
    let default_format_nhwc = t.u8(DEFAULT_DIMENTION_FORMAT, DataFormat::Nhwc as u8)? == DataFormat::Nhwc as u8;
    let param = match modelled.iter().find(|k| k.op_type == op_type && k.param_tag == param_tag) {
        Some(k) if default_format_nhwc && !t.has(EXTERNAL_PATH)? => {
            let main = if param_tag == 0 { None } else { t.table(MAIN)? };
            read_param(*k, main).with_context(|| format!("{} `{name}`", k.param_name))?.unwrap_or(kind)
        }
        _ => kind,
    };
    Ok(Op {
        inputs: indexes(t.i32s(INPUT_INDEXES)?, &name)?,
        outputs: indexes(t.i32s(OUTPUT_INDEXES)?, &name)?,
        name,
        param,
    })
}

/// Reads an `MNN.Net` (any origin) into the IR; ops outside it become [`OpParam::Opaque`].
pub fn read_net(bytes: &[u8]) -> Result<Graph> {
    use slot::net::*;
    let root = FbTable::root(bytes)?;
    let ops = root
        .tables(OPLISTS)?
        .iter()
        .enumerate()
        .map(|(i, t)| read_op(t).with_context(|| format!("op {i}")))
        .collect::<Result<Vec<_>>>()?;
    let strings = |slot| -> Result<Vec<String>> { Ok(root.strings(slot)?.into_iter().map(String::from).collect()) };
    let version = match root.table(EXTRA_INFO)? {
        Some(info) => info.string(slot::extra_info::VERSION)?.unwrap_or_default().to_string(),
        None => String::new(),
    };
    let graph = Graph {
        tensors: strings(TENSOR_NAME)?,
        ops,
        outputs: strings(OUTPUT_NAME)?,
        biz_code: root.string(BIZ_CODE)?.unwrap_or_default().to_string(),
        version,
        uuid: root.string(MNN_UUID)?.unwrap_or_default().to_string(),
    };
    graph.validate(true)?;
    Ok(graph)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mnn::decoder_graph::{decoder_graph, DecoderGraphSpec};
    use crate::mnn::weights::{plan_decoder, DecoderQuant, QuantOptions};
    use mm_converters::MiniMindConfig;

    fn graph(qk_norm: bool, quant: QuantOptions) -> Graph {
        let cfg =
            MiniMindConfig { num_attention_heads: 4, num_key_value_heads: 2, ..MiniMindConfig::with_hidden(128, 2) };
        let mut spec = DecoderGraphSpec::from_config(&cfg).unwrap();
        spec.shape.qk_norm = qk_norm;
        decoder_graph(&spec, &plan_decoder(&spec.shape, &DecoderQuant::uniform(quant)).unwrap()).unwrap()
    }

    #[test]
    fn flatbuffer_parses_back_to_the_same_graph() {
        for (qk, quant) in [
            (false, QuantOptions::default()),
            (true, QuantOptions { bits: 8, alpha_fp16: false, ..Default::default() }),
        ] {
            let g = graph(qk, quant);
            let bytes = write_net(&g).unwrap();
            let back = read_net(&bytes).unwrap();
            assert_eq!(back, g);
            back.validate(false).unwrap();
            // Deterministic bytes.
            assert_eq!(write_net(&back).unwrap(), bytes);
        }
    }

    #[test]
    fn malformed_bytes_are_errors() {
        let bytes = write_net(&graph(false, QuantOptions::default())).unwrap();
        for cut in [0, 4, 7, 100, bytes.len() / 2, bytes.len() - 1] {
            assert!(read_net(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_net(&flipped).is_err());
        // Bit flips anywhere: an error or some graph, never a panic.
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            let _ = read_net(&b);
        }
    }

    #[test]
    fn opaque_ops_are_not_written() {
        let mut g = graph(false, QuantOptions::default());
        g.ops[5].param = OpParam::Opaque { op_type: 80, param_tag: 0 };
        assert!(write_net(&g).is_err());
    }
}
