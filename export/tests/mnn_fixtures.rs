//! The MNN directory parts against files MNN 3.6.1's own `llmexport.py` wrote
//! (`shared/fixtures/mnn/`, see its README): `tokenizer.mtok` byte for byte, `config.json`
//! and `llm_config.json` byte for byte, and every weight record's `external` offsets in the
//! llmexport graph of the MiniMind-3-shaped fixture model.
//!
//! The fixtures live outside the repository: `MM_SHARED`, else `<workspace>/../shared`.
//! Tests print a skip notice when they are absent, and fail instead under `MM_REQUIRE_SHARED`.

#[path = "../../tests/common/skip.rs"]
mod skip;

use std::path::{Path, PathBuf};

use serde_json::Value;

use mm_converters::hf::read_tokenizer_files;
use mm_export::mnn::config::{config_json, json_bytes, llm_config_json, LlmFacts};
use mm_export::mnn::tokenizer_mtok::{read_mtok, write_mtok, MtokOptions};
use mm_export::mnn::weights::{plan_decoder, DecoderQuant, DecoderShape, QuantOptions, Record};

fn shared_or_skip(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("MM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    if dir.join("fixtures/mnn/README.md").exists() {
        return Some(dir);
    }
    if std::env::var_os("MM_REQUIRE_SHARED").is_some() {
        panic!("{test}: MM_REQUIRE_SHARED is set but the shared MNN fixtures are missing at {}", dir.display());
    }
    skip::skipped(test, "shared fixtures not found (set MM_SHARED)");
    None
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    let i = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    format!("lengths {} vs {}, first difference at byte {i}", a.len(), b.len())
}

fn check_mtok(shared: &Path, tokenizer: &str, fixture: &str) {
    let files = read_tokenizer_files(&shared.join("reference").join(tokenizer)).unwrap();
    // The fixture was exported with a generation_config.json of eos 2 (the tokenizer's own).
    let options = MtokOptions { generation_eos_ids: vec![2] };
    let ours = write_mtok(&files, &options).unwrap();
    let theirs = std::fs::read(shared.join("fixtures/mnn").join(fixture).join("tokenizer.mtok")).unwrap();
    assert!(ours == theirs, "{tokenizer}: {}", first_difference(&ours, &theirs));
    // The reader `mm inspect` uses takes llmexport's file whole, with nothing unchecked.
    let read = read_mtok(&theirs).unwrap();
    let tj: Value = serde_json::from_str(files.tokenizer_json.as_deref().unwrap()).unwrap();
    assert_eq!(read.vocab, tj["model"]["vocab"].as_object().unwrap().len(), "{tokenizer}");
    assert_eq!(read.added_tokens, tj["added_tokens"].as_array().unwrap().len(), "{tokenizer}");
    assert!(read.unchecked.is_none() && read.chat_template_bytes.is_some(), "{tokenizer}: {read:?}");
}

#[test]
fn mtok_minimind2_is_byte_identical() {
    let Some(shared) = shared_or_skip("mtok_minimind2_is_byte_identical") else { return };
    check_mtok(&shared, "minimind2", "minimind2");
}

#[test]
fn mtok_minimind3_is_byte_identical() {
    let Some(shared) = shared_or_skip("mtok_minimind3_is_byte_identical") else { return };
    check_mtok(&shared, "minimind3", "minimind3-llmexport");
}

#[test]
fn config_json_is_byte_identical() {
    let Some(shared) = shared_or_skip("config_json_is_byte_identical") else { return };
    let theirs = std::fs::read(shared.join("fixtures/mnn/minimind3-llmexport/config.json")).unwrap();
    let ours = json_bytes(&config_json()).unwrap();
    assert!(ours == theirs, "{}", first_difference(&ours, &theirs));
}

/// The fixture model: MiniMind-3 shape (hidden 512, 2 layers, 8 heads, 4 kv heads,
/// head_dim 64, ffn 1664, vocab 6400, q/k norms, tied), exported `--hqq`, 4-bit, block 64.
fn fixture_shape(shared: &Path) -> DecoderShape {
    let text = std::fs::read_to_string(shared.join("fixtures/mnn/minimind3-llmexport/source_config.json")).unwrap();
    let c: Value = serde_json::from_str(&text).unwrap();
    let get = |k: &str| c[k].as_u64().unwrap() as usize;
    DecoderShape {
        hidden: get("hidden_size"),
        layers: get("num_hidden_layers"),
        heads: get("num_attention_heads"),
        kv_heads: get("num_key_value_heads"),
        head_dim: get("head_dim"),
        intermediate: get("intermediate_size"),
        vocab: get("vocab_size"),
        qk_norm: true,
        tied: true,
    }
}

fn fixture_quant() -> DecoderQuant {
    DecoderQuant::uniform(QuantOptions { bits: 4, block: 64, hqq: true, alpha_fp16: true })
}

#[test]
fn llm_config_json_is_byte_identical() {
    let Some(shared) = shared_or_skip("llm_config_json_is_byte_identical") else { return };
    let shape = fixture_shape(&shared);
    let plan = plan_decoder(&shape, &fixture_quant()).unwrap();
    let tokenizer = read_tokenizer_files(&shared.join("reference/minimind3")).unwrap();
    let facts = LlmFacts { model_type: "minimind".into(), hidden_size: shape.hidden, layer_nums: shape.layers };
    let ours = json_bytes(&llm_config_json(&facts, &tokenizer, plan.tie_embeddings().as_ref())).unwrap();
    let theirs = std::fs::read(shared.join("fixtures/mnn/minimind3-llmexport/llm_config.json")).unwrap();
    assert!(ours == theirs, "{}", first_difference(&ours, &theirs));
}

#[test]
fn weight_records_match_llmexport_graph() {
    let Some(shared) = shared_or_skip("weight_records_match_llmexport_graph") else { return };
    let text = std::fs::read_to_string(shared.join("fixtures/mnn/minimind3-llmexport/llm.mnn.json")).unwrap();
    let graph: Value = serde_json::from_str(&text).unwrap();
    // Ops that point into llm.mnn.weight, in graph order.
    let ops: Vec<&Value> =
        graph["oplists"].as_array().unwrap().iter().filter(|op| op["main"].get("external").is_some()).collect();
    let plan = plan_decoder(&fixture_shape(&shared), &fixture_quant()).unwrap();
    let records = plan.records();
    assert_eq!(ops.len(), records.len(), "record count");
    for (op, rec) in ops.iter().zip(&records) {
        let external: Vec<i64> =
            op["main"]["external"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(external, rec.external(), "{} vs {}", op["name"], rec.op_name());
        match rec {
            Record::Linear(l) => {
                assert_eq!(op["type"], "Convolution", "{}", l.op_name);
                assert_eq!(op["name"].as_str().unwrap(), l.op_name, "llmexport's Linear op names");
                let common = &op["main"]["common"];
                assert_eq!(common["inputCount"].as_u64().unwrap() as usize, l.layout.ic);
                assert_eq!(common["outputCount"].as_u64().unwrap() as usize, l.layout.oc);
                // Same fields and values (MNN's dump reorders keys; compare as maps).
                let theirs: serde_json::Map<String, Value> = op["main"]["quanParameter"].as_object().unwrap().clone();
                let ours = l.quan_parameter().to_json();
                let ours = ours.as_object().unwrap();
                assert_eq!(theirs.len(), ours.len(), "{}: quanParameter fields", l.op_name);
                for (k, v) in ours {
                    assert_eq!(theirs.get(k), Some(v), "{}: quanParameter.{k}", l.op_name);
                }
            }
            Record::Norm(n) => {
                assert_eq!(op["type"], "LayerNorm", "{}", n.op_name);
                assert_eq!(op["main"]["useRMSNorm"], true);
            }
        }
    }
    let last = records.last().unwrap();
    let Record::Linear(lm) = last else { panic!("lm_head last") };
    assert_eq!(plan.file_bytes, lm.offset + lm.layout.total_len());
}
