//! HF model directories in the MiniMind layout (`MiniMindForCausalLM`, what upstream
//! `convert_torch2transformers_minimind` writes) and the Llama layout (`LlamaForCausalLM`,
//! tied, what `convert_torch2transformers_llama` writes). Dense models use the same tensor
//! names in both; only config.json differs. MoE models also have the exact Qwen2-MoE layout
//! (`Qwen2MoeForCausalLM`, see [`crate::qwen2_moe`]).

use std::borrow::Cow;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::atomic::{write_file_atomically, write_output_dir};
use crate::output_guard::FileKind;
use crate::checkpoint::{hf_dtype_name, Checkpoint, Provenance, TokenizerFiles};
use crate::config::{ConfigFlavor, MiniMindConfig};
use crate::limits;
use crate::{qwen2_moe, safetensors_file};

/// HF writes single files up to this size before it shards (transformers' default 5 GB;
/// MiniMind models never reach it, but users may ask for smaller shards).
pub const DEFAULT_MAX_SHARD_BYTES: usize = 5_000_000_000;

/// Reads an HF directory of either layout.
pub fn read(dir: &Path) -> Result<Checkpoint> {
    let config_path = dir.join("config.json");
    let text = limits::read_to_string(&config_path, limits::MAX_CONFIG_BYTES, "config")?;
    let json: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", config_path.display()))?;
    let config = MiniMindConfig::from_json(&json).with_context(|| format!("{}: unusable config", config_path.display()))?;
    let flavor = MiniMindConfig::flavor_of_json(&json)?;
    let format = match flavor {
        ConfigFlavor::MiniMind => "hf-minimind",
        ConfigFlavor::Llama => "hf-llama",
        ConfigFlavor::Qwen2Moe => "hf-qwen2-moe",
    };
    let tensors = safetensors_file::read_dir(dir)?;
    let tokenizer = read_tokenizer_files(dir)?;
    let mut provenance = Provenance::new(format, dir);
    if tokenizer.is_empty() {
        provenance.notes.push("no tokenizer.json in the directory".into());
    }
    let ckpt = match flavor {
        ConfigFlavor::Qwen2Moe => qwen2_moe::checkpoint_from_hf(config, tensors, tokenizer, provenance),
        _ => Checkpoint::new(config, tensors, tokenizer, provenance),
    };
    ckpt.with_context(|| format!("{}", dir.display()))
}

/// Tokenizer files of a model directory; the chat template may live in
/// `chat_template.jinja` (transformers 5) or inside `tokenizer_config.json` (4.x).
pub fn read_tokenizer_files(dir: &Path) -> Result<TokenizerFiles> {
    read_tokenizer_files_prefixed(dir, "")
}

/// The tokenizer files named `<prefix>tokenizer.json`, `<prefix>tokenizer_config.json` and
/// `<prefix>chat_template.jinja` in `dir` (the `.pth` sidecars use the prefix `<stem>.`).
pub fn read_tokenizer_files_prefixed(dir: &Path, prefix: &str) -> Result<TokenizerFiles> {
    let read_opt = |name: &str, max_bytes: u64| -> Result<Option<String>> {
        let name = format!("{prefix}{name}");
        let name = name.as_str();
        let p = dir.join(name);
        if p.exists() {
            Ok(Some(limits::read_to_string(&p, max_bytes, name)?))
        } else {
            Ok(None)
        }
    };
    let tokenizer_json = read_opt("tokenizer.json", limits::MAX_TOKENIZER_BYTES)?;
    let tokenizer_config = match read_opt("tokenizer_config.json", limits::MAX_CONFIG_BYTES)? {
        Some(text) => Some(
            serde_json::from_str::<Value>(&text)
                .with_context(|| format!("{}: invalid JSON", dir.join(format!("{prefix}tokenizer_config.json")).display()))?,
        ),
        None => None,
    };
    let chat_template = match read_opt("chat_template.jinja", limits::MAX_TEMPLATE_BYTES)? {
        Some(t) => Some(t),
        None => tokenizer_config.as_ref().and_then(template_from_config),
    };
    Ok(TokenizerFiles { tokenizer_json, tokenizer_config, chat_template })
}

/// The `chat_template` of a tokenizer_config: a string, or the `default` of a named list.
fn template_from_config(config: &Value) -> Option<String> {
    match config.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|e| e.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|e| e.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

/// Which config.json an HF directory gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfLayout {
    MiniMind,
    Llama,
    /// `Qwen2MoeForCausalLM` (MoE only), the exact transform of [`qwen2_moe`].
    Qwen2Moe,
}

/// Writes an HF directory atomically: config.json, generation_config.json, safetensors,
/// and the tokenizer files (chat template inside tokenizer_config.json, which transformers
/// 4.x and 5.x both read).
pub fn write(ckpt: &Checkpoint, dir: &Path, layout: HfLayout, max_shard_bytes: usize) -> Result<()> {
    let dtype = hf_dtype_name(ckpt.uniform_dtype().unwrap_or(candle_core::DType::F32));
    let (config, tensors) = match layout {
        HfLayout::MiniMind => (ckpt.config.to_minimind_json(dtype), Cow::Borrowed(ckpt.tensors())),
        HfLayout::Llama => (ckpt.config.to_llama_json(dtype)?, Cow::Borrowed(ckpt.tensors())),
        HfLayout::Qwen2Moe => {
            (ckpt.config.to_qwen2_moe_json(dtype)?, Cow::Owned(qwen2_moe::to_hf_tensors(ckpt)?))
        }
    };
    write_output_dir(dir, &is_hf_output_file, |tmp| {
        write_json(&tmp.join("config.json"), &config)?;
        write_json(&tmp.join("generation_config.json"), &generation_config(ckpt))?;
        safetensors_file::write_dir(tmp, &tensors, max_shard_bytes)?;
        write_tokenizer_files(&ckpt.tokenizer, tmp)
    })
}

/// The files an HF directory mm writes can hold, in any configuration (single file or
/// sharded, with or without a chat template file).
pub fn is_hf_output_file(rel: &Path) -> bool {
    let Some(name) = rel.to_str() else { return false };
    let shard = name
        .strip_prefix("model-")
        .and_then(|r| r.strip_suffix(".safetensors"))
        .and_then(|r| r.split_once("-of-"))
        .is_some_and(|(i, n)| [i, n].iter().all(|d| d.len() == 5 && d.bytes().all(|b| b.is_ascii_digit())));
    shard
        || [
            "config.json",
            "generation_config.json",
            safetensors_file::SINGLE_FILE,
            safetensors_file::INDEX_FILE,
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
        ]
        .contains(&name)
}

/// `generation_config.json`: the model's bos/eos ids, plus the tokenizer's pad id when it
/// names one (vLLM and transformers' `generate` stop at `eos_token_id`).
pub fn generation_config(ckpt: &Checkpoint) -> Value {
    let mut generation = json!({
        "bos_token_id": ckpt.config.bos_token_id,
        "eos_token_id": ckpt.config.eos_token_id,
    });
    if let Some(pad) = special_token_id(&ckpt.tokenizer, "pad_token") {
        generation["pad_token_id"] = json!(pad);
    }
    generation
}

/// The id of a special token named in tokenizer_config.json (`"pad_token": "<|endoftext|>"`
/// or an AddedToken object), looked up in tokenizer.json's added tokens and vocabulary.
pub fn special_token_id(tok: &TokenizerFiles, key: &str) -> Option<u32> {
    let config = tok.tokenizer_config.as_ref()?;
    let content = match config.get(key)? {
        Value::String(s) => s.as_str(),
        Value::Object(o) => o.get("content")?.as_str()?,
        _ => return None,
    };
    let json: Value = serde_json::from_str(tok.tokenizer_json.as_deref()?).ok()?;
    let added = json.get("added_tokens").and_then(Value::as_array).into_iter().flatten();
    for t in added {
        if t.get("content").and_then(Value::as_str) == Some(content) {
            return t.get("id").and_then(Value::as_u64).map(|id| id as u32);
        }
    }
    json.pointer("/model/vocab")?.get(content)?.as_u64().map(|id| id as u32)
}

/// Writes tokenizer.json and tokenizer_config.json (with the chat template inside).
pub fn write_tokenizer_files(tok: &TokenizerFiles, dir: &Path) -> Result<()> {
    write_tokenizer_files_prefixed(tok, dir, "")
}

/// [`write_tokenizer_files`] with every file name prefixed (`<stem>.` beside a `.pth`).
pub fn write_tokenizer_files_prefixed(tok: &TokenizerFiles, dir: &Path, prefix: &str) -> Result<()> {
    if let Some(text) = &tok.tokenizer_json {
        write_file_atomically(&dir.join(format!("{prefix}tokenizer.json")), FileKind::Json, |w| Ok(w.write_all(text.as_bytes())?))?;
    }
    let mut config = tok.tokenizer_config.clone().unwrap_or_else(|| json!({}));
    if let (Some(obj), Some(template)) = (config.as_object_mut(), &tok.chat_template) {
        obj.insert("chat_template".into(), Value::String(template.clone()));
        // transformers 5's `TokenizersBackend` class is unknown to 4.x; the fast class loads in both.
        if obj.get("tokenizer_class").and_then(Value::as_str) == Some("TokenizersBackend") {
            obj.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        }
    }
    if let Some(obj) = config.as_object_mut() {
        // transformers 5 writes `extra_special_tokens` as a list, which 4.x cannot load ("'list'
        // object has no attribute 'keys'"); `additional_special_tokens` means the same to both.
        if let Some(Value::Array(list)) = obj.get("extra_special_tokens").cloned() {
            obj.remove("extra_special_tokens");
            if !list.is_empty() && !obj.contains_key("additional_special_tokens") {
                obj.insert("additional_special_tokens".into(), Value::Array(list));
            }
        }
    }
    if tok.tokenizer_config.is_some() || tok.chat_template.is_some() {
        write_json(&dir.join(format!("{prefix}tokenizer_config.json")), &config)?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    write_file_atomically(path, FileKind::Json, |w| Ok(w.write_all(serde_json::to_string_pretty(value)?.as_bytes())?))
}
