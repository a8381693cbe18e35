//! The graph in MNN's JSON form: what `MNNConvert -f MNN --JsonFile` dumps and `-f JSON`
//! turns back into an `llm.mnn` (the FlatBuffer schema's field names, enums as names, a
//! union as `main_type` followed by `main`). Not needed at run time; `--emit-json` writes it
//! as `llm.mnn.json` for reading, diffing, or rebuilding the graph with MNN's converter.
//!
//! Every field MNN's dump prints for these ops is written, in the dump's order, so the file
//! reads like the dump of `llm.mnn` (floats excepted: the dump prints six decimals, this
//! file the shortest text that reads back to the same f32).

use anyhow::{ensure, Result};
use serde_json::{json, Map, Number, Value};

use super::graph::{BlobData, Graph, OpParam};

/// The file name `--emit-json` writes (llmexport leaves the same name behind).
pub const JSON_FILE: &str = "llm.mnn.json";

/// An f32 as the shortest decimal that reads back to it (`1e-5`, not `1.0000000474974513e-5`).
fn f32_value(x: f32) -> Value {
    let shortest: f64 = format!("{x}").parse().unwrap_or(x as f64);
    Number::from_f64(shortest).map_or(Value::Null, Value::Number)
}

fn f32_list(xs: &[f32]) -> Value {
    Value::Array(xs.iter().map(|&x| f32_value(x)).collect())
}

/// `main` of one op (`None` for an op without a parameter).
fn param_json(param: &OpParam) -> Result<Value> {
    Ok(match param {
        OpParam::Input { dims, dtype } => json!({"dims": dims, "dtype": dtype.name(), "dformat": "NCHW"}),
        OpParam::Const { dims, data } => {
            let mut m = Map::new();
            m.insert("dims".into(), json!(dims));
            m.insert("dataFormat".into(), json!("NCHW"));
            m.insert("dataType".into(), json!(data.data_type().name()));
            match data {
                BlobData::Int32(v) => m.insert("int32s".into(), json!(v)),
                BlobData::Float(v) => m.insert("float32s".into(), f32_list(v)),
            };
            Value::Object(m)
        }
        OpParam::Reshape { dims } => json!({"dims": dims, "dimType": "NCHW"}),
        OpParam::Cast { src, dst } => json!({"srcT": src.name(), "dstT": dst.name()}),
        OpParam::Binary(k) => json!({"opType": k.name(), "T": "DT_FLOAT", "activationType": 0}),
        OpParam::Unary(k) => json!({"opType": k.name(), "T": "DT_FLOAT"}),
        OpParam::Concat { axis } => json!({"axis": axis}),
        OpParam::Slice => json!({
            "Index": "DT_INVALID", "T": "DT_INVALID", "beginMask": 0, "endMask": 0, "ellipsisMask": 0,
            "newAxisMask": 0, "shrinkAxisMask": 0, "fromType": 1,
        }),
        OpParam::LayerNorm(n) => json!({
            "axis": n.axis, "epsilon": f32_value(n.epsilon), "group": n.group, "external": n.external,
            "useRMSNorm": n.use_rms_norm,
        }),
        OpParam::ConvertTensor { source, dest } => json!({"source": source.name(), "dest": dest.name()}),
        OpParam::Convolution(c) => {
            // IDSTQuan's fields in schema order (the dump's), not llmexport's dict order.
            let q = &c.quan;
            let quan = json!({
                "type": q.kind, "useInt32": false, "quantScale": f32_value(q.quant_scale), "scaleIn": 0.0,
                "scaleOut": 0.0, "aMaxOrBits": q.a_max_or_bits, "aMin": q.a_min, "readType": q.read_type,
                "has_scaleInt": false, "shapeInt32": q.shape_int32, "weightSize": 0,
                "scaleStorage": if q.scale_fp16 { "FP16" } else { "FP32" },
            });
            json!({
                "common": {
                    "padX": 0, "padY": 0, "kernelX": 1, "kernelY": 1, "strideX": 1, "strideY": 1,
                    "dilateX": 1, "dilateY": 1, "padMode": "CAFFE", "group": 1,
                    "outputCount": c.output_count, "inputCount": c.input_count,
                    "relu": false, "relu6": false, "hasOutputShape": false,
                },
                "quanParameter": quan,
                "external": c.external,
            })
        }
        OpParam::Attention { layer_index } => json!({
            "kv_cache": true, "layer_index": layer_index, "kv_shared_layer_index": -1, "output_c4": false,
            "attnScale": 0.0,
        }),
        OpParam::Opaque { op_type, .. } => {
            anyhow::bail!("op type {op_type} was read from another file and cannot be written")
        }
    })
}

/// The graph as MNN JSON (`Net` with `oplists`, `tensorName`, `outputName`, …).
pub fn to_json(graph: &Graph) -> Result<Value> {
    graph.validate(false)?;
    let mut ops = Vec::with_capacity(graph.ops.len());
    for op in &graph.ops {
        let kind = op.param.kind().expect("validated: no opaque ops");
        let mut o = Map::new();
        if !op.inputs.is_empty() {
            o.insert("inputIndexes".into(), json!(op.inputs));
        }
        o.insert("main_type".into(), json!(kind.param_name));
        o.insert("main".into(), param_json(&op.param)?);
        o.insert("name".into(), json!(op.name));
        o.insert("outputIndexes".into(), json!(op.outputs));
        o.insert("type".into(), json!(kind.type_name));
        o.insert("defaultDimentionFormat".into(), json!("NHWC"));
        ops.push(Value::Object(o));
    }
    ensure!(!graph.uuid.is_empty(), "the graph has no mnn_uuid");
    Ok(json!({
        "bizCode": graph.biz_code,
        "extraInfo": {"version": graph.version},
        "oplists": ops,
        "outputName": graph.outputs,
        "preferForwardType": "CPU",
        "sourceType": "ONNX",
        "tensorName": graph.tensors,
        "tensorNumber": 0,
        "usage": "INFERENCE",
        "mnn_uuid": graph.uuid,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mnn::decoder_graph::{decoder_graph, DecoderGraphSpec};
    use crate::mnn::weights::{plan_decoder, DecoderQuant};
    use mm_converters::MiniMindConfig;

    #[test]
    fn json_form_of_a_two_layer_model() {
        let cfg =
            MiniMindConfig { num_attention_heads: 4, num_key_value_heads: 2, ..MiniMindConfig::with_hidden(128, 2) };
        let spec = DecoderGraphSpec::from_config(&cfg).unwrap();
        let weights = plan_decoder(&spec.shape, &DecoderQuant::default()).unwrap();
        let graph = decoder_graph(&spec, &weights).unwrap();
        let j = to_json(&graph).unwrap();
        let ops = j["oplists"].as_array().unwrap();
        assert_eq!(ops.len(), graph.ops.len());
        assert_eq!(j["tensorName"].as_array().unwrap().len(), graph.tensors.len());
        assert_eq!(j["outputName"], json!(["logits"]));
        let count = |ty: &str| ops.iter().filter(|o| o["type"] == ty).count();
        assert_eq!(count("Convolution"), 15);
        assert_eq!(count("Attention"), 2);
        // The same shapes MNN's own dump shows (shared/fixtures/mnn/minimind3-llmexport).
        assert_eq!(
            ops[0],
            json!({
                "main_type": "Input", "main": {"dims": [-1, 1, 128], "dtype": "DT_FLOAT", "dformat": "NCHW"},
                "name": "input_ids", "outputIndexes": [0], "type": "Input", "defaultDimentionFormat": "NHWC"
            })
        );
        let conv = ops.iter().find(|o| o["name"] == "/layers.0/self_attn/q_proj/Linear").unwrap();
        assert_eq!(conv["main_type"], "Convolution2D");
        assert_eq!(conv["main"]["common"]["inputCount"], 128);
        assert_eq!(conv["main"]["quanParameter"]["aMin"], 1);
        assert_eq!(conv["main"]["quanParameter"]["scaleStorage"], "FP16");
        assert_eq!(conv["main"]["external"][0], weights.layers[0].q.offset);
        let norm = ops.iter().find(|o| o["type"] == "LayerNorm").unwrap();
        assert_eq!(norm["main"]["epsilon"].as_f64().unwrap(), 1e-5);
        assert_eq!(norm["main"]["useRMSNorm"], true);
        let attn = ops.iter().find(|o| o["type"] == "Attention").unwrap();
        assert_eq!(attn["main"]["kv_cache"], true);
        assert_eq!(attn["main"]["layer_index"], 0);
        assert_eq!(attn["inputIndexes"].as_array().unwrap().len(), 4);
        let inv = ops.iter().find(|o| o["name"] == "/rotary/inv_freq").unwrap();
        let values = inv["main"]["float32s"].as_array().unwrap();
        assert_eq!(values.len(), 16);
        // Floats read back to the same f32.
        for (v, f) in values.iter().zip(&spec.inv_freq) {
            assert_eq!(v.as_f64().unwrap() as f32, *f);
        }
    }
}
