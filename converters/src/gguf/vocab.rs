//! The tokenizer as GGUF metadata (`tokenizer.ggml.*`), from and back to HF tokenizer files.
//!
//! The rules are those of llama.cpp's converter for byte-level BPE (`_set_vocab_gpt2`,
//! docs/gguf.md §3): tokens in id order in their byte-level spelling, token types from the added
//! tokens, merges as "left right", special ids from `tokenizer_config.json`.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Map, Value};

use crate::checkpoint::TokenizerFiles;
use crate::gguf::file::{MetaValue, Metadata};
use crate::gguf::keys::{general, tokenizer};

/// `llama_token_type`.
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_UNUSED: i32 = 5;

/// Everything llama.cpp's tokenizer reads from a GGUF.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufVocab {
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: bool,
    pub chat_template: Option<String>,
}

/// Names that llama.cpp's converter treats as control tokens even when not marked special.
fn looks_special(token: &str) -> bool {
    let delimited = |open: &str, close: &str| token.starts_with(open) && token.ends_with(close) && token.len() > 2;
    delimited("<|", "|>")
        || delimited("<｜", "｜>")
        || matches!(token, "<pad>" | "<mask>" | "<unk>" | "<s>" | "</s>")
        || token.starts_with("<unused")
}

fn parse_json(text: &str, what: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| format!("{what} is not valid JSON"))
}

impl GgufVocab {
    /// Builds the GGUF vocabulary from HF files, padded to `vocab_size` (the embedding rows)
    /// with `[PAD{i}]` unused tokens as the converter does.
    pub fn from_tokenizer(files: &TokenizerFiles, vocab_size: usize) -> Result<Self> {
        let text = files.tokenizer_json.as_deref().context("the checkpoint has no tokenizer.json")?;
        let tok = parse_json(text, "tokenizer.json")?;
        let model = tok.get("model").context("tokenizer.json has no \"model\"")?;
        let kind = model.get("type").and_then(Value::as_str).unwrap_or("");
        ensure!(kind == "BPE", "tokenizer.json model type is {kind:?}; GGUF export supports byte-level BPE only");
        let pre = tok.get("pre_tokenizer").cloned().unwrap_or(Value::Null);
        let byte_level = pre.get("type").and_then(Value::as_str) == Some("ByteLevel")
            && pre.get("use_regex").and_then(Value::as_bool).unwrap_or(true);
        ensure!(
            byte_level,
            "tokenizer.json pre_tokenizer {pre} is not ByteLevel with the GPT-2 regex; llama.cpp's 'gpt-2' \
             pre-tokenizer would split text differently"
        );
        let add_space_prefix = pre.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(false);

        let vocab = model.get("vocab").and_then(Value::as_object).context("tokenizer.json model has no vocab")?;
        let mut by_id: Vec<Option<String>> = vec![None; vocab_size];
        let mut place = |token: &str, id: u64| -> Result<()> {
            let slot = by_id
                .get_mut(id as usize)
                .with_context(|| format!("token {token:?} has id {id}, beyond the model's vocab_size {vocab_size}"))?;
            *slot = Some(token.to_string());
            Ok(())
        };
        for (token, id) in vocab {
            place(token, id.as_u64().with_context(|| format!("vocab id of {token:?} is not an integer"))?)?;
        }
        let mut added: HashMap<u64, bool> = HashMap::new();
        for entry in tok.get("added_tokens").and_then(Value::as_array).into_iter().flatten() {
            let id = entry.get("id").and_then(Value::as_u64).context("an added token has no id")?;
            let content = entry.get("content").and_then(Value::as_str).context("an added token has no content")?;
            place(content, id)?;
            added.insert(id, entry.get("special").and_then(Value::as_bool).unwrap_or(false));
        }
        let mut tokens = Vec::with_capacity(vocab_size);
        let mut token_types = Vec::with_capacity(vocab_size);
        for (id, token) in by_id.into_iter().enumerate() {
            match token {
                None => {
                    tokens.push(format!("[PAD{id}]"));
                    token_types.push(TOKEN_UNUSED);
                }
                Some(token) => {
                    let ty = match added.get(&(id as u64)) {
                        None => TOKEN_NORMAL,
                        Some(true) => TOKEN_CONTROL,
                        Some(false) if looks_special(&token) => TOKEN_CONTROL,
                        Some(false) => TOKEN_USER_DEFINED,
                    };
                    tokens.push(token);
                    token_types.push(ty);
                }
            }
        }
        let mut seen = HashMap::new();
        for (id, t) in tokens.iter().enumerate() {
            if let Some(prev) = seen.insert(t.as_str(), id) {
                bail!("token {t:?} appears at ids {prev} and {id}; llama.cpp requires unique token strings");
            }
        }

        let merges = model
            .get("merges")
            .and_then(Value::as_array)
            .map(|list| list.iter().map(merge_string).collect::<Result<Vec<_>>>())
            .transpose()?
            .unwrap_or_default();

        let config = files.tokenizer_config.clone().unwrap_or(Value::Null);
        let id_of = |key: &str| -> Option<u32> {
            let v = config.get(key)?;
            let content = v.as_str().or_else(|| v.get("content").and_then(Value::as_str))?;
            tokens.iter().position(|t| t == content).map(|i| i as u32)
        };
        Ok(Self {
            bos: id_of("bos_token"),
            eos: id_of("eos_token"),
            unk: id_of("unk_token"),
            pad: id_of("pad_token"),
            add_bos: config.get("add_bos_token").and_then(Value::as_bool),
            add_eos: config.get("add_eos_token").and_then(Value::as_bool),
            add_space_prefix,
            chat_template: files.chat_template.clone(),
            tokens,
            token_types,
            merges,
        })
    }

    /// Appends the `tokenizer.*` keys in the order llama.cpp's converter writes them.
    pub fn write_metadata(&self, md: &mut Metadata) {
        md.set(tokenizer::ADD_SPACE_PREFIX, MetaValue::Bool(self.add_space_prefix));
        md.set(tokenizer::MODEL, MetaValue::String("gpt2".into()));
        md.set(tokenizer::PRE, MetaValue::String("gpt-2".into()));
        md.set(tokenizer::TOKENS, MetaValue::string_array(self.tokens.iter().cloned()));
        md.set(tokenizer::TOKEN_TYPE, MetaValue::i32_array(self.token_types.iter().copied()));
        md.set(tokenizer::MERGES, MetaValue::string_array(self.merges.iter().cloned()));
        for (key, id) in [
            (tokenizer::BOS_ID, self.bos),
            (tokenizer::EOS_ID, self.eos),
            (tokenizer::UNK_ID, self.unk),
            (tokenizer::PAD_ID, self.pad),
        ] {
            if let Some(id) = id {
                md.set(key, MetaValue::U32(id));
            }
        }
        for (key, flag) in [(tokenizer::ADD_BOS, self.add_bos), (tokenizer::ADD_EOS, self.add_eos)] {
            if let Some(flag) = flag {
                md.set(key, MetaValue::Bool(flag));
            }
        }
        if let Some(template) = &self.chat_template {
            md.set(tokenizer::CHAT_TEMPLATE, MetaValue::String(template.clone()));
        }
    }

    /// Reads the vocabulary back from GGUF metadata (`source` names the file in errors).
    pub fn from_metadata(md: &Metadata, source: &str) -> Result<Self> {
        let model = md.get(tokenizer::MODEL).and_then(MetaValue::as_str);
        ensure!(model == Some("gpt2"), "{source}: tokenizer.ggml.model is {model:?}; mm reads byte-level BPE ('gpt2') only");
        let strings = |key: &str| -> Result<Vec<String>> {
            let items = md.get(key).and_then(MetaValue::as_array).with_context(|| format!("{source}: {key} is missing"))?;
            items
                .iter()
                .map(|v| v.as_str().map(str::to_string).with_context(|| format!("{source}: {key} holds a non-string")))
                .collect()
        };
        let tokens = strings(tokenizer::TOKENS)?;
        ensure!(!tokens.is_empty(), "{source}: tokenizer.ggml.tokens is empty: the file has no vocabulary (vocab_size 0)");
        let merges = match md.get(tokenizer::MERGES) {
            Some(_) => strings(tokenizer::MERGES)?,
            None => Vec::new(),
        };
        let token_types = match md.get(tokenizer::TOKEN_TYPE).and_then(MetaValue::as_array) {
            Some(items) => items
                .iter()
                .map(|v| match v {
                    MetaValue::I32(t) => Ok(*t),
                    _ => bail!("{source}: tokenizer.ggml.token_type must be an INT32 array"),
                })
                .collect::<Result<Vec<_>>>()?,
            None => vec![TOKEN_NORMAL; tokens.len()],
        };
        ensure!(token_types.len() == tokens.len(), "{source}: {} token types for {} tokens", token_types.len(), tokens.len());
        let id = |key: &str| -> Result<Option<u32>> {
            match md.get(key) {
                None => Ok(None),
                Some(v) => {
                    let id = v.as_u64().with_context(|| format!("{source}: {key} is not an integer"))?;
                    ensure!((id as usize) < tokens.len(), "{source}: {key} = {id} is outside the vocabulary");
                    Ok(Some(id as u32))
                }
            }
        };
        Ok(Self {
            bos: id(tokenizer::BOS_ID)?,
            eos: id(tokenizer::EOS_ID)?,
            unk: id(tokenizer::UNK_ID)?,
            pad: id(tokenizer::PAD_ID)?,
            add_bos: md.get(tokenizer::ADD_BOS).and_then(MetaValue::as_bool),
            add_eos: md.get(tokenizer::ADD_EOS).and_then(MetaValue::as_bool),
            add_space_prefix: md.get(tokenizer::ADD_SPACE_PREFIX).and_then(MetaValue::as_bool).unwrap_or(false),
            chat_template: md.get(tokenizer::CHAT_TEMPLATE).and_then(MetaValue::as_str).map(str::to_string),
            tokens,
            token_types,
            merges,
        })
    }

    /// Checks the vocabulary against the embedding it indexes: `rows` of `token_embd.weight`,
    /// one per token, and `{arch}.vocab_size` where the file states it (llama.cpp sizes the
    /// embedding by it).
    pub fn check_against_embedding(&self, md: &Metadata, source: &str, rows: usize) -> Result<()> {
        ensure!(rows > 0, "{source}: token_embd.weight has 0 rows: the model has no vocabulary");
        ensure!(
            self.tokens.len() == rows,
            "{source}: tokenizer.ggml.tokens has {} tokens but token_embd.weight has {rows} rows (one per token)",
            self.tokens.len()
        );
        if let Some(arch) = md.get(general::ARCHITECTURE).and_then(MetaValue::as_str) {
            let key = format!("{arch}.vocab_size");
            if let Some(v) = md.get(&key) {
                let n = v.as_u64().with_context(|| format!("{source}: {key} is not an integer"))?;
                ensure!(n == rows as u64, "{source}: {key} is {n} but token_embd.weight has {rows} rows");
            }
        }
        Ok(())
    }

    /// HF `tokenizer.json` + `tokenizer_config.json` that tokenize exactly as this vocabulary
    /// does in llama.cpp: byte-level BPE with the GPT-2 regex, control and user-defined tokens
    /// as added tokens. Unused `[PAD{i}]` slots are left out of the vocab.
    pub fn to_tokenizer_files(&self) -> Result<TokenizerFiles> {
        let mut vocab = Map::new();
        let mut added = Vec::new();
        for (id, (token, ty)) in self.tokens.iter().zip(&self.token_types).enumerate() {
            if *ty == TOKEN_UNUSED {
                continue;
            }
            vocab.insert(token.clone(), json!(id));
            if *ty == TOKEN_CONTROL || *ty == TOKEN_USER_DEFINED {
                added.push(json!({
                    "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": *ty == TOKEN_CONTROL,
                }));
            }
        }
        let merges: Vec<Value> = self
            .merges
            .iter()
            .map(|m| {
                // llama.cpp splits at the first space at position >= 1.
                let cut = m.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(i, _)| i);
                let cut = cut.with_context(|| format!("merge {m:?} has no separating space"))?;
                Ok(json!([&m[..cut], &m[cut + 1..]]))
            })
            .collect::<Result<_>>()?;
        let byte_level = |prefix: bool| {
            json!({"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": true, "use_regex": true})
        };
        let tokenizer = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": byte_level(self.add_space_prefix),
            "post_processor": byte_level(true),
            "decoder": byte_level(true),
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            },
        });
        let name = |id: Option<u32>| id.map(|i| json!(self.tokens[i as usize])).unwrap_or(Value::Null);
        let mut config = Map::new();
        // Absent stays absent, so GGUF → HF → GGUF writes the same keys.
        if let Some(flag) = self.add_bos {
            config.insert("add_bos_token".into(), json!(flag));
        }
        if let Some(flag) = self.add_eos {
            config.insert("add_eos_token".into(), json!(flag));
        }
        config.insert("add_prefix_space".into(), json!(self.add_space_prefix));
        config.insert("bos_token".into(), name(self.bos));
        config.insert("eos_token".into(), name(self.eos));
        config.insert("unk_token".into(), name(self.unk));
        config.insert("pad_token".into(), name(self.pad));
        config.insert("clean_up_tokenization_spaces".into(), json!(false));
        config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        if let Some(t) = &self.chat_template {
            config.insert("chat_template".into(), json!(t));
        }
        Ok(TokenizerFiles {
            tokenizer_json: Some(serde_json::to_string_pretty(&tokenizer)?),
            tokenizer_config: Some(Value::Object(config)),
            chat_template: self.chat_template.clone(),
        })
    }
}

/// A merge as GGUF stores it: "left right" (HF writes either that string or a pair).
fn merge_string(merge: &Value) -> Result<String> {
    match merge {
        Value::String(s) => Ok(s.clone()),
        Value::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
            (Some(a), Some(b)) => Ok(format!("{a} {b}")),
            _ => bail!("tokenizer.json merge {merge} is not a pair of strings"),
        },
        other => bail!("tokenizer.json merge {other} is neither \"a b\" nor [a, b]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimind2_vocab_follows_the_converter_rules() {
        let files = TokenizerFiles::builtin_minimind2();
        let v = GgufVocab::from_tokenizer(&files, 6400).unwrap();
        assert_eq!(v.tokens.len(), 6400);
        assert_eq!(&v.tokens[..3], ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]);
        assert_eq!(&v.token_types[..4], [3, 3, 3, 1]);
        assert_eq!(v.merges.len(), 6141);
        assert_eq!(v.merges[0], "Ġ t");
        assert_eq!((v.bos, v.eos, v.unk, v.pad), (Some(1), Some(2), Some(0), Some(0)));
        assert_eq!((v.add_bos, v.add_eos), (Some(false), Some(false)));
        // A larger embedding than tokenizer pads with unused tokens.
        let padded = GgufVocab::from_tokenizer(&files, 6402).unwrap();
        assert_eq!(padded.tokens[6401], "[PAD6401]");
        assert_eq!(padded.token_types[6401], TOKEN_UNUSED);
        assert!(GgufVocab::from_tokenizer(&files, 100).is_err());
    }

    #[test]
    fn metadata_and_hf_files_round_trip() {
        let v = GgufVocab::from_tokenizer(&TokenizerFiles::builtin_minimind2(), 6401).unwrap();
        let mut md = Metadata::new();
        v.write_metadata(&mut md);
        let back = GgufVocab::from_metadata(&md, "test").unwrap();
        assert_eq!(back, v);
        let files = back.to_tokenizer_files().unwrap();
        let again = GgufVocab::from_tokenizer(&files, 6401).unwrap();
        assert_eq!(again, v);
    }

    #[test]
    fn looks_special_matches_the_converter() {
        assert!(looks_special("<|buffer1|>"));
        assert!(!looks_special("<think>"));
        assert!(!looks_special("<|"));
    }
}
