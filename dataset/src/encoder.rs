//! What the loaders need from a tokenizer and chat template, without depending on them.
//!
//! The root crate implements [`TextEncoder`] with its HF tokenizer and Jinja chat template;
//! tests implement it with a toy encoder.

use std::sync::Arc;

use anyhow::{bail, Result};
use serde_json::Value;

/// A tokenizer plus chat template, as upstream's `lm_dataset.py` uses a transformers tokenizer.
pub trait TextEncoder {
    /// `tokenizer(text, add_special_tokens=…).input_ids`. With `add_special_tokens` the
    /// tokenizer's post-processor runs (BOS/EOS templates); MiniMind2's tokenizer has none, so
    /// for it both settings give the same ids.
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>>;

    /// `tokenizer(text, truncation=True, max_length=max_length).input_ids`: at most
    /// `max_length` ids. The default cuts [`encode`](Self::encode)'s output, which is what HF
    /// does when the post-processor adds no tokens. An encoder whose post-processor adds
    /// tokens should override this: HF truncates the text's ids so that the added tokens
    /// still fit, and keeps them.
    fn encode_truncated(&self, text: &str, add_special_tokens: bool, max_length: usize) -> Result<Vec<u32>> {
        let mut ids = self.encode(text, add_special_tokens)?;
        ids.truncate(max_length);
        Ok(ids)
    }

    /// `tokenizer.apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=add_generation_prompt, tools=tools)`.
    fn render_chat(&self, messages: &Value, tools: Option<&Value>, add_generation_prompt: bool) -> Result<String>;

    /// `tokenizer.pad_token_id`.
    fn pad_id(&self) -> u32;

    /// `tokenizer.bos_token` (MiniMind: `<|im_start|>`).
    fn bos_token(&self) -> &str;

    /// `tokenizer.eos_token` (MiniMind: `<|im_end|>`).
    fn eos_token(&self) -> &str;
}

impl<T: TextEncoder + ?Sized> TextEncoder for &T {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        (**self).encode(text, add_special_tokens)
    }
    fn encode_truncated(&self, text: &str, add_special_tokens: bool, max_length: usize) -> Result<Vec<u32>> {
        (**self).encode_truncated(text, add_special_tokens, max_length)
    }
    fn render_chat(&self, messages: &Value, tools: Option<&Value>, add_generation_prompt: bool) -> Result<String> {
        (**self).render_chat(messages, tools, add_generation_prompt)
    }
    fn pad_id(&self) -> u32 {
        (**self).pad_id()
    }
    fn bos_token(&self) -> &str {
        (**self).bos_token()
    }
    fn eos_token(&self) -> &str {
        (**self).eos_token()
    }
}

impl<T: TextEncoder + ?Sized> TextEncoder for Arc<T> {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        (**self).encode(text, add_special_tokens)
    }
    fn encode_truncated(&self, text: &str, add_special_tokens: bool, max_length: usize) -> Result<Vec<u32>> {
        (**self).encode_truncated(text, add_special_tokens, max_length)
    }
    fn render_chat(&self, messages: &Value, tools: Option<&Value>, add_generation_prompt: bool) -> Result<String> {
        (**self).render_chat(messages, tools, add_generation_prompt)
    }
    fn pad_id(&self) -> u32 {
        (**self).pad_id()
    }
    fn bos_token(&self) -> &str {
        (**self).bos_token()
    }
    fn eos_token(&self) -> &str {
        (**self).eos_token()
    }
}

/// The id sequences that delimit an assistant turn, as upstream's `SFTDataset`/`DPODataset`
/// compute them: `bos_id = tokenizer(f"{bos_token}assistant", add_special_tokens=False)` and
/// `eos_id = tokenizer(eos_token, add_special_tokens=False)`. MiniMind2: `[1, 1078, 538, 501]`
/// and `[2]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssistantMarkers {
    pub bos_id: Vec<u32>,
    pub eos_id: Vec<u32>,
}

impl AssistantMarkers {
    pub fn from_encoder<E: TextEncoder + ?Sized>(encoder: &E) -> Result<Self> {
        let bos_id = encoder.encode(&format!("{}assistant", encoder.bos_token()), false)?;
        let eos_id = encoder.encode(encoder.eos_token(), false)?;
        Self::new(bos_id, eos_id)
    }

    /// Both sequences must be non-empty: with an empty one upstream's mask loop never ends.
    pub fn new(bos_id: Vec<u32>, eos_id: Vec<u32>) -> Result<Self> {
        if bos_id.is_empty() {
            bail!("the assistant start marker (bos_token + \"assistant\") encodes to no ids");
        }
        if eos_id.is_empty() {
            bail!("the eos_token encodes to no ids");
        }
        Ok(Self { bos_id, eos_id })
    }
}
