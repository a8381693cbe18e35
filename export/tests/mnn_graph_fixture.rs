//! mm's FlatBuffer reader on the `llm.mnn` MNN 3.6.1's own llmexport wrote
//! (`shared/fixtures/mnn/minimind3-llmexport`, with MNN's JSON dump of it beside), and mm's
//! decoder graph for the same model shape against it: the Linear (Convolution), RMSNorm
//! (LayerNorm) and Attention ops carry the same parameters, and the rotary constants agree.
//! This pins the slot tables and enum values on a file mm did not write.

#[path = "../../tests/common/skip.rs"]
mod skip;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use mm_converters::config::rope_inverse_frequencies;
use mm_export::mnn::decoder_graph::{decoder_graph, DecoderGraphSpec};
use mm_export::mnn::graph::{BlobData, OpParam};
use mm_export::mnn::net_flatbuffer::read_net;
use mm_export::mnn::weights::{plan_decoder, DecoderQuant, DecoderShape, QuantOptions};

fn fixture_or_skip(test: &str) -> Option<PathBuf> {
    let shared = std::env::var_os("MM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    let dir = shared.join("fixtures/mnn/minimind3-llmexport");
    if dir.join("llm.mnn").exists() {
        return Some(dir);
    }
    if std::env::var_os("MM_REQUIRE_SHARED").is_some() {
        panic!("{test}: MM_REQUIRE_SHARED is set but {} is missing", dir.display());
    }
    skip::skipped(test, "shared fixtures not found (set MM_SHARED)");
    None
}

#[test]
fn reads_llmexports_graph_like_mnns_dump() {
    let Some(dir) = fixture_or_skip("reads_llmexports_graph_like_mnns_dump") else { return };
    let graph = read_net(&std::fs::read(dir.join("llm.mnn")).unwrap()).unwrap();
    let dump: Value = serde_json::from_slice(&std::fs::read(dir.join("llm.mnn.json")).unwrap()).unwrap();
    let ops = dump["oplists"].as_array().unwrap();
    assert_eq!(graph.ops.len(), ops.len());
    let mut dump_counts: BTreeMap<String, usize> = BTreeMap::new();
    for (op, j) in graph.ops.iter().zip(ops) {
        *dump_counts.entry(j["type"].as_str().unwrap().to_string()).or_insert(0) += 1;
        assert_eq!(op.name, j["name"].as_str().unwrap());
        let idx =
            |k: &str| j[k].as_array().map_or(vec![], |a| a.iter().map(|v| v.as_u64().unwrap() as usize).collect());
        assert_eq!(op.inputs, idx("inputIndexes"), "{}", op.name);
        assert_eq!(op.outputs, idx("outputIndexes"), "{}", op.name);
    }
    assert_eq!(graph.op_counts(), dump_counts);
    assert_eq!(graph.tensors.len(), dump["tensorName"].as_array().unwrap().len());
    assert_eq!(graph.outputs, ["logits", "hidden_states"]);
    assert_eq!(graph.version, "3.6.1");
    let inputs: Vec<_> = graph.inputs().iter().map(|i| i.0).collect();
    assert_eq!(inputs, ["input_ids", "attention_mask", "position_ids", "logits_index"]);
}

#[test]
fn our_graph_has_llmexports_linear_norm_and_attention_ops() {
    let Some(dir) = fixture_or_skip("our_graph_has_llmexports_linear_norm_and_attention_ops") else { return };
    let theirs = read_net(&std::fs::read(dir.join("llm.mnn")).unwrap()).unwrap();
    // The fixture model: hidden 512, 2 layers, 8 heads / 4 KV of 64, ffn 1664, q/k norms,
    // eps 1e-6, θ 1e6, tied; `--hqq`, 4-bit, block 64.
    let shape = DecoderShape {
        hidden: 512,
        layers: 2,
        heads: 8,
        kv_heads: 4,
        head_dim: 64,
        intermediate: 1664,
        vocab: 6400,
        qk_norm: true,
        tied: true,
    };
    let spec = DecoderGraphSpec {
        shape: shape.clone(),
        rms_norm_eps: 1e-6,
        inv_freq: rope_inverse_frequencies(64, 32768, 1e6, None),
    };
    let quant = DecoderQuant::uniform(QuantOptions { hqq: true, ..Default::default() });
    let ours = decoder_graph(&spec, &plan_decoder(&shape, &quant).unwrap()).unwrap();

    let pick = |g: &mm_export::mnn::graph::Graph, want: &str| -> Vec<OpParam> {
        g.ops.iter().filter(|op| op.param.type_name() == want).map(|op| op.param.clone()).collect()
    };
    // Same Convolutions (by name and parameters), in the same order.
    let convs = |g: &mm_export::mnn::graph::Graph| -> Vec<(String, OpParam)> {
        g.ops
            .iter()
            .filter(|op| matches!(op.param, OpParam::Convolution(_)))
            .map(|op| (op.name.clone(), op.param.clone()))
            .collect()
    };
    assert_eq!(convs(&ours), convs(&theirs));
    // Same RMSNorms (llmexport names them after the traced ops, so compare parameters).
    let mut norms_ours = pick(&ours, "LayerNorm");
    let mut norms_theirs = pick(&theirs, "LayerNorm");
    let key = |p: &OpParam| if let OpParam::LayerNorm(n) = p { n.external[0] } else { -1 };
    norms_ours.sort_by_key(key);
    norms_theirs.sort_by_key(key);
    assert_eq!(norms_ours.len(), 9);
    assert_eq!(norms_ours, norms_theirs);
    assert_eq!(pick(&ours, "Attention"), pick(&theirs, "Attention"));
    // The graph inputs: the same names and types (llmexport traced input_ids as [1,1,512]).
    let io = |g: &mm_export::mnn::graph::Graph| -> Vec<(String, String)> {
        g.inputs().iter().map(|(n, _, t)| (n.to_string(), t.name().to_string())).collect()
    };
    assert_eq!(io(&ours), io(&theirs));

    // The rotary inverse frequencies: llmexport's file went through MNN's JSON dump, which
    // prints six decimals, so compare to that precision.
    let inv_theirs = theirs
        .ops
        .iter()
        .find_map(|op| match &op.param {
            OpParam::Const { data: BlobData::Float(v), .. } if op.name.starts_with("/rotary/") => Some(v.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(inv_theirs.len(), spec.inv_freq.len());
    let worst = inv_theirs.iter().zip(&spec.inv_freq).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("rotary inv_freq: max |Δ| vs llmexport's {worst:.2e}");
    assert!(worst <= 5e-7, "{worst}");
}
