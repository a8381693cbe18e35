//! `config.json` (runtime settings and file names) and `llm_config.json` (model facts), as
//! MNN 3.6.1's `llmexport.py` writes them (docs/mnn.md §2): the same keys in the same
//! order, serialised like Python's `json.dump(…, ensure_ascii=False, indent=4)`.

use anyhow::Result;
use serde_json::{json, Map, Value};

use mm_converters::TokenizerFiles;

use super::weights::TieEmbeddings;

/// File names inside the exported directory.
pub const CONFIG_FILE: &str = "config.json";
pub const LLM_CONFIG_FILE: &str = "llm_config.json";
pub const MODEL_FILE: &str = "llm.mnn";
pub const WEIGHT_FILE: &str = "llm.mnn.weight";
pub const TOKENIZER_FILE: &str = "tokenizer.mtok";
/// The untied embedding table (the runtime's default `embedding_file`).
pub const EMBEDDINGS_BF16_FILE: &str = "embeddings_bf16.bin";

/// `config.json`: llmexport's runtime and sampler defaults plus `tokenizer_file` (the
/// runtime's own default is `tokenizer.txt`, so the key must be there).
pub fn config_json() -> Value {
    json!({
        "llm_model": MODEL_FILE,
        "llm_weight": WEIGHT_FILE,
        "backend_type": "cpu",
        "thread_num": 4,
        "precision": "low",
        "memory": "low",
        "sampler_type": "mixed",
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0.05,
        "tfs_z": 1.0,
        "typical": 0.95,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "penalty_window": 0,
        "n_gram": 8,
        "ngram_factor": 1.0,
        "tokenizer_file": TOKENIZER_FILE,
    })
}

/// The model facts `llm_config.json` holds.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmFacts {
    /// `"minimind"` (informational for a plain LLM).
    pub model_type: String,
    pub hidden_size: usize,
    pub layer_nums: usize,
}

/// `llm_config.json`: model type, hidden size, layer count, the float mask and full
/// attention, no M-RoPE, the chat template in `jinja` (with the tokenizer's bos/eos strings
/// when set) and, for a tied model, where the embedding rows live inside lm_head's record.
pub fn llm_config_json(facts: &LlmFacts, tokenizer: &TokenizerFiles, tie: Option<&TieEmbeddings>) -> Value {
    let mut c = Map::new();
    c.insert("model_type".into(), json!(facts.model_type));
    c.insert("hidden_size".into(), json!(facts.hidden_size));
    c.insert("layer_nums".into(), json!(facts.layer_nums));
    c.insert("attention_mask".into(), json!("float"));
    c.insert("attention_type".into(), json!("full"));
    c.insert("is_mrope".into(), json!(false));
    if let Some(template) = &tokenizer.chat_template {
        let mut jinja = Map::new();
        jinja.insert("chat_template".into(), json!(template));
        let token = |key: &str| -> Option<String> {
            let v = tokenizer.tokenizer_config.as_ref()?.get(key)?;
            let s = match v {
                Value::String(s) => s.as_str(),
                Value::Object(o) => o.get("content")?.as_str()?,
                _ => return None,
            };
            (!s.is_empty()).then(|| s.to_string())
        };
        if let Some(bos) = token("bos_token") {
            jinja.insert("bos".into(), json!(bos));
        }
        if let Some(eos) = token("eos_token") {
            jinja.insert("eos".into(), json!(eos));
        }
        c.insert("jinja".into(), Value::Object(jinja));
    }
    if let Some(tie) = tie {
        c.insert("tie_embeddings".into(), tie.to_json());
    }
    Value::Object(c)
}

/// Python's `json.dump(value, f, ensure_ascii=False, indent=4)`: 4-space indent, `": "`
/// between key and value, raw UTF-8, no trailing newline.
pub fn json_bytes(value: &Value) -> Result<Vec<u8>> {
    use serde::Serialize;
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    value.serialize(&mut ser)?;
    Ok(out)
}
