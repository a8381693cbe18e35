//! A reward model as an HF `LlamaForSequenceClassification` directory: config.json is the
//! trunk's Llama config (`converters::config::to_llama_json`) with `architectures:
//! ["LlamaForSequenceClassification"]`, `num_labels: 1`, `id2label`/`label2id` and
//! `pad_token_id` (transformers pools at the last token that is not it); `model.safetensors`
//! holds the trunk under its Llama names (`model.*`, which for dense MiniMind are upstream's
//! names: MiniMind and HF Llama share the rotate-half RoPE, so no Q/K permutation) plus
//! `score.weight` [1, hidden] and no `lm_head`; the tokenizer files carry the chat template.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use mm_converters::atomic::{write_file_atomically, write_output_dir};
use mm_converters::checkpoint::hf_dtype_name;
use mm_converters::hf::{is_hf_output_file, read_tokenizer_files, write_tokenizer_files, DEFAULT_MAX_SHARD_BYTES};
use mm_converters::naming::LM_HEAD;
use mm_converters::output_guard::FileKind;
use mm_converters::{limits, safetensors_file, Checkpoint, MiniMindConfig, Provenance};

/// The architecture name transformers and vLLM dispatch on.
pub const ARCHITECTURE: &str = "LlamaForSequenceClassification";
/// The score head's tensor name.
pub const SCORE: &str = "score.weight";

/// A reward model's parts as stored: the trunk (tied, no head of its own), the score head
/// [1, hidden] and the pad id of the pooling rule.
pub struct RewardCheckpoint {
    pub trunk: Checkpoint,
    pub score: Tensor,
    pub pad_id: u32,
}

/// Whether `path` is a directory whose config.json names [`ARCHITECTURE`].
pub fn is_reward_model_dir(path: &Path) -> bool {
    let config = path.join("config.json");
    if !path.is_dir() || !config.is_file() {
        return false;
    }
    let Ok(text) = limits::read_to_string(&config, limits::MAX_CONFIG_BYTES, "config") else { return false };
    let Ok(json) = serde_json::from_str::<Value>(&text) else { return false };
    let found = architectures(&json).any(|a| a == ARCHITECTURE);
    found
}

fn architectures(json: &Value) -> impl Iterator<Item = &str> {
    json.get("architectures").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
}

/// The config.json of a reward model over `cfg`.
pub fn config_json(cfg: &MiniMindConfig, dtype: DType, pad_id: u32) -> Result<Value> {
    let mut tied = cfg.clone();
    // The classification model has no LM head; the trunk's embedding is its only token matrix.
    tied.tie_word_embeddings = true;
    let mut config = tied.to_llama_json(hf_dtype_name(dtype)).context("a reward model needs a dense (Llama-shaped) trunk")?;
    let obj = config.as_object_mut().context("the Llama config is not an object")?;
    obj.insert("architectures".into(), json!([ARCHITECTURE]));
    obj.insert("num_labels".into(), json!(1));
    obj.insert("id2label".into(), json!({"0": "LABEL_0"}));
    obj.insert("label2id".into(), json!({"LABEL_0": 0}));
    obj.insert("pad_token_id".into(), json!(pad_id));
    Ok(config)
}

/// Writes the directory atomically through mm's output guard (an existing directory is
/// replaced only if it is an earlier HF output, or with `--force`). Tensors are written in
/// `dtype`.
pub fn write(rm: &RewardCheckpoint, dir: &Path, dtype: DType) -> Result<()> {
    let h = rm.trunk.config.hidden_size;
    ensure!(rm.score.dims() == [1, h], "the score head has shape {:?}, expected [1, {h}]", rm.score.dims());
    ensure!((rm.pad_id as usize) < rm.trunk.config.vocab_size, "pad id {} is outside the vocabulary", rm.pad_id);
    let config = config_json(&rm.trunk.config, dtype, rm.pad_id)?;
    let mut tensors = Vec::with_capacity(rm.trunk.tensors().len() + 1);
    for (name, t) in rm.trunk.tensors() {
        if name != LM_HEAD {
            tensors.push((name.clone(), t.to_device(&Device::Cpu)?.to_dtype(dtype)?));
        }
    }
    tensors.push((SCORE.to_string(), rm.score.to_device(&Device::Cpu)?.to_dtype(dtype)?));
    write_output_dir(dir, &is_hf_output_file, |tmp| {
        let text = serde_json::to_string_pretty(&config)?;
        write_file_atomically(&tmp.join("config.json"), FileKind::Json, |w| Ok(w.write_all(text.as_bytes())?))?;
        safetensors_file::write_dir(tmp, &tensors, DEFAULT_MAX_SHARD_BYTES)?;
        write_tokenizer_files(&rm.trunk.tokenizer, tmp)
    })
}

/// Reads a directory [`write`] wrote (or any `LlamaForSequenceClassification` with one label
/// over a MiniMind-shaped Llama trunk).
pub fn read(dir: &Path) -> Result<RewardCheckpoint> {
    let config_path = dir.join("config.json");
    let text = limits::read_to_string(&config_path, limits::MAX_CONFIG_BYTES, "config")?;
    let json: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", config_path.display()))?;
    if !architectures(&json).any(|a| a == ARCHITECTURE) {
        bail!("{}: not a reward model (architectures must name {ARCHITECTURE})", config_path.display());
    }
    let labels = match (json.get("num_labels").and_then(Value::as_u64), json.get("id2label").and_then(Value::as_object)) {
        (Some(n), _) => n,
        (None, Some(map)) => map.len() as u64,
        (None, None) => 2, // transformers' default
    };
    ensure!(labels == 1, "{}: {labels} labels; a reward model has one score (num_labels 1)", config_path.display());
    let pad_id = json
        .get("pad_token_id")
        .and_then(Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
        .with_context(|| format!("{}: no pad_token_id (the score is read at the last token that is not the pad)", config_path.display()))?;
    let mut config = MiniMindConfig::from_json(&json).with_context(|| format!("{}: unusable config", config_path.display()))?;
    config.tie_word_embeddings = true;
    ensure!((pad_id as usize) < config.vocab_size, "{}: pad_token_id {pad_id} is outside the vocabulary of {}", config_path.display(), config.vocab_size);
    let mut tensors = safetensors_file::read_dir(dir)?;
    let at = tensors.iter().position(|(n, _)| n == SCORE).with_context(|| format!("{}: no `{SCORE}` tensor", dir.display()))?;
    let (_, score) = tensors.remove(at);
    let h = config.hidden_size;
    ensure!(score.dims() == [1, h], "{}: `{SCORE}` has shape {:?}, expected [1, {h}]", dir.display(), score.dims());
    let tokenizer = read_tokenizer_files(dir)?;
    let trunk = Checkpoint::new(config, tensors, tokenizer, Provenance::new("hf-reward-model", dir)).with_context(|| format!("{}", dir.display()))?;
    Ok(RewardCheckpoint { trunk, score: score.to_dtype(DType::F32)?, pad_id })
}
