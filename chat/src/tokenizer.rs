//! The HF tokenizer (`tokenizer.json` + `tokenizer_config.json`) and streaming detokenization.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use mm_converters::limits;
use serde_json::Value as Json;
use tokenizers::AddedToken;

use super::template::token_content;

/// Names of the special tokens a tokenizer_config.json declares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub unk: Option<String>,
}

/// A HF tokenizer as transformers' `PreTrainedTokenizerFast` loads it.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
    config: Option<Json>,
    /// tokenizer_config.json `clean_up_tokenization_spaces` (false for MiniMind).
    clean_up_spaces: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab_size", &self.vocab_size()).field("special", &self.special).finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` and, when present, `tokenizer_config.json` from a directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let json = limits::read_to_string(&path, limits::MAX_TOKENIZER_BYTES, "tokenizer.json")?;
        let config_path = dir.join("tokenizer_config.json");
        let config: Option<Json> = if config_path.is_file() {
            let text = limits::read_to_string(&config_path, limits::MAX_CONFIG_BYTES, "tokenizer_config.json")?;
            Some(serde_json::from_str(&text).with_context(|| format!("parsing {}", config_path.display()))?)
        } else {
            None
        };
        Self::from_strings(&json, config.as_ref()).with_context(|| format!("loading tokenizer from {}", dir.display()))
    }

    /// Builds the tokenizer from the text of tokenizer.json and an optional parsed
    /// tokenizer_config.json. Tokens the config's `added_tokens_decoder` lists but
    /// tokenizer.json lacks are added, as transformers does.
    pub fn from_strings(tokenizer_json: &str, tokenizer_config: Option<&Json>) -> Result<Self> {
        let mut inner = mm_export::tokenizer_json::parse(tokenizer_json).map_err(|e| anyhow!("parsing tokenizer.json: {e}"))?;
        let mut special = SpecialTokens::default();
        let mut clean_up_spaces = false;
        if let Some(config) = tokenizer_config {
            if !config.is_object() {
                anyhow::bail!("tokenizer_config.json must be a JSON object");
            }
            let name = |key: &str| config.get(key).and_then(token_content).map(str::to_string);
            special =
                SpecialTokens { bos: name("bos_token"), eos: name("eos_token"), pad: name("pad_token"), unk: name("unk_token") };
            add_missing_tokens(&mut inner, config)?;
            clean_up_spaces = config.get("clean_up_tokenization_spaces").and_then(Json::as_bool).unwrap_or(false);
        }
        Ok(Self { inner, special, config: tokenizer_config.cloned(), clean_up_spaces })
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) are matched
    /// as single tokens. `add_special_tokens` runs the post-processor (BOS/EOS templates);
    /// transformers' chat path tokenizes rendered prompts with it off.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, add_special_tokens).map_err(|e| anyhow!("encoding text: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`; `skip_special_tokens` drops tokens marked special (in minimind3,
    /// `<think>` and `<tool_call>` are not special and survive).
    /// transformers' `clean_up_tokenization` runs too when the config asks for it.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self.inner.decode(ids, skip_special_tokens).map_err(|e| anyhow!("decoding ids: {e}"))?;
        Ok(if self.clean_up_spaces { clean_up_tokenization(&text) } else { text })
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `id` is an added token marked special.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.get_added_tokens_decoder().get(&id).is_some_and(|t| t.special)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.special.bos.as_deref().and_then(|t| self.token_id(t))
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.special.eos.as_deref().and_then(|t| self.token_id(t))
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.special.pad.as_deref().and_then(|t| self.token_id(t))
    }

    pub fn unk_id(&self) -> Option<u32> {
        self.special.unk.as_deref().and_then(|t| self.token_id(t))
    }

    /// The tokenizer_config.json value it was loaded with.
    pub fn config(&self) -> Option<&Json> {
        self.config.as_ref()
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// transformers' `clean_up_tokenization`: drops the space before punctuation and contractions.
fn clean_up_tokenization(text: &str) -> String {
    const RULES: [(&str, &str); 10] = [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ];
    RULES.iter().fold(text.to_string(), |s, (from, to)| s.replace(from, to))
}

/// Adds the config's `added_tokens_decoder` entries (and the named special tokens) that the
/// tokenizer does not know yet.
fn add_missing_tokens(inner: &mut tokenizers::Tokenizer, config: &Json) -> Result<()> {
    let mut entries: Vec<(u64, AddedToken)> = Vec::new();
    if let Some(Json::Object(decoder)) = config.get("added_tokens_decoder") {
        for (id, tok) in decoder {
            let Some(content) = tok.get("content").and_then(Json::as_str) else { continue };
            let flag = |k: &str, default: bool| tok.get(k).and_then(Json::as_bool).unwrap_or(default);
            let special = flag("special", false);
            let token = AddedToken::from(content, special)
                .single_word(flag("single_word", false))
                .lstrip(flag("lstrip", false))
                .rstrip(flag("rstrip", false))
                .normalized(flag("normalized", !special));
            entries.push((id.parse().unwrap_or(u64::MAX), token));
        }
    }
    entries.sort_by_key(|(id, _)| *id);
    let mut missing: Vec<AddedToken> =
        entries.into_iter().map(|(_, t)| t).filter(|t| inner.token_to_id(&t.content).is_none()).collect();
    for key in ["bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"] {
        if let Some(content) = config.get(key).and_then(token_content) {
            if inner.token_to_id(content).is_none() && !missing.iter().any(|t| t.content == content) {
                missing.push(AddedToken::from(content, true));
            }
        }
    }
    for token in missing {
        let added = if token.special { inner.add_special_tokens([token]) } else { inner.add_tokens([token]) };
        added.map_err(|e| anyhow!("adding tokens from tokenizer_config.json: {e}"))?;
    }
    Ok(())
}

/// Turns generated ids into text one id at a time without ever emitting a broken character.
///
/// Byte-level BPE pieces can end in the middle of a multi-byte UTF-8 character; such text is
/// held back until a later id completes it. Each call decodes a short window (the last emitted
/// piece plus what is pending) so decoders that look at neighbouring tokens stay correct, and
/// the concatenation of everything returned equals `decode(all ids)`.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    /// Start of the context window (the last emitted piece begins here).
    prefix_offset: usize,
    /// Ids before this have been emitted.
    read_offset: usize,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder that skips special tokens, like `decode(ids, true)`.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self { tokenizer, skip_special_tokens: true, ids: Vec::new(), prefix_offset: 0, read_offset: 0 }
    }

    pub fn with_skip_special_tokens(mut self, skip: bool) -> Self {
        self.skip_special_tokens = skip;
        self
    }

    /// Adds one id; returns the text it completes (often empty while a character is split).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        self.step(false)
    }

    /// Returns whatever is still held back (an unfinished character becomes U+FFFD).
    pub fn finish(&mut self) -> Result<String> {
        self.step(true)
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    fn step(&mut self, flush: bool) -> Result<String> {
        if self.read_offset == self.ids.len() {
            return Ok(String::new());
        }
        let skip = self.skip_special_tokens;
        let prefix = self.tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let full = self.tokenizer.decode(&self.ids[self.prefix_offset..], skip)?;
        if !flush && (full.len() <= prefix.len() || full.ends_with('\u{FFFD}')) {
            return Ok(String::new());
        }
        let start = if full.starts_with(&prefix) {
            prefix.len()
        } else {
            // Only a context-sensitive decoder can rewrite earlier text; emit what differs.
            let common = full.char_indices().zip(prefix.chars()).take_while(|((_, a), b)| a == b).count();
            full.char_indices().nth(common).map_or(full.len(), |(i, _)| i)
        };
        let new = full.get(start..).unwrap_or_default().to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// GPT-2's byte-to-character table used by byte-level BPE.
    fn byte_chars() -> Vec<char> {
        let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let mut extra = 0;
        (0u32..256)
            .map(|b| {
                if printable(b) {
                    char::from_u32(b).unwrap()
                } else {
                    extra += 1;
                    char::from_u32(255 + extra).unwrap()
                }
            })
            .collect()
    }

    /// A byte-level BPE with one token per byte (no merges), so every multi-byte character is
    /// split across tokens, plus two merged tokens and a special end token.
    fn byte_tokenizer() -> Tokenizer {
        let chars = byte_chars();
        let mut vocab = serde_json::Map::new();
        for (i, c) in chars.iter().enumerate() {
            vocab.insert(c.to_string(), json!(i));
        }
        // "你" is E4 BD A0: merge its first two bytes, leaving the character split 2 + 1.
        let (e4, bd) = (chars[0xe4], chars[0xbd]);
        vocab.insert(format!("{e4}{bd}"), json!(256));
        let tok = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": 257, "content": "<|end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": [[e4.to_string(), bd.to_string()]]}
        });
        let config = json!({"eos_token": "<|end|>", "bos_token": {"content": "<|start|>", "special": true}});
        Tokenizer::from_strings(&tok.to_string(), Some(&config)).unwrap()
    }

    #[test]
    fn clean_up_spaces_when_configured() {
        assert_eq!(clean_up_tokenization("a , b . I 'm sure it 's fine isn't it ?"), "a, b. I'm sure it's fine isn't it?");
    }

    #[test]
    fn config_tokens_are_added_and_named() {
        let t = byte_tokenizer();
        assert_eq!(t.eos_id(), Some(257));
        // "<|start|>" is only in the config: it is added as a special token.
        assert_eq!(t.bos_id(), Some(258));
        assert!(t.is_special(258));
        assert_eq!(t.encode("a<|start|>b", false).unwrap(), vec![b'a' as u32, 258, b'b' as u32]);
        assert_eq!(t.vocab_size(), 259);
    }

    #[test]
    fn stream_decoder_holds_back_split_characters() {
        let t = byte_tokenizer();
        let text = "你好，世界！MiniMind 😀 ok";
        let mut ids = t.encode(text, false).unwrap();
        assert_eq!(ids[0], 256, "first two bytes of 你 merged");
        assert!(ids.len() > text.chars().count(), "characters are split across tokens");
        ids.push(257);
        for skip in [true, false] {
            let mut decoder = StreamDecoder::new(&t).with_skip_special_tokens(skip);
            let mut pieces = Vec::new();
            for &id in &ids {
                pieces.push(decoder.push(id).unwrap());
            }
            pieces.push(decoder.finish().unwrap());
            assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
            // Nothing comes out until a character is complete.
            assert_eq!(pieces[0], "");
            assert_eq!(pieces[1], "你");
            let expected = if skip { text.to_string() } else { format!("{text}<|end|>") };
            assert_eq!(pieces.concat(), expected);
            assert_eq!(pieces.concat(), t.decode(&ids, skip).unwrap());
        }
    }

    #[test]
    fn stream_decoder_flushes_an_unfinished_character() {
        let t = byte_tokenizer();
        let ids = t.encode("a你", false).unwrap(); // a, [E4 BD], A0
        let mut decoder = StreamDecoder::new(&t);
        assert_eq!(decoder.push(ids[0]).unwrap(), "a");
        assert_eq!(decoder.push(ids[1]).unwrap(), "");
        assert_eq!(decoder.finish().unwrap(), "\u{FFFD}");
        assert_eq!(decoder.finish().unwrap(), "");
    }
}
