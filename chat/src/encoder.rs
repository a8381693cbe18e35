//! The tokenizer and chat template behind the dataset crate's [`TextEncoder`]: what the
//! upstream datasets need to tokenize a line as training does. Training builds it strictly
//! ([`ChatEncoder::strict`]: a template, bos, eos and pad tokens are required up front);
//! evaluation leniently ([`ChatEncoder::lenient`]: the template and bos/eos are needed only
//! when a conversation is scored, and without a pad token nothing counts as padding).

use anyhow::{Context, Result};
use serde_json::Value;

use mm_dataset::TextEncoder;

use crate::{ChatTemplate, Tokenizer};

pub struct ChatEncoder {
    pub tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    bos: String,
    eos: String,
    pad: u32,
}

impl ChatEncoder {
    /// For training: SFT/DPO data needs the template, the assistant markers need bos/eos, and
    /// padding needs the pad token.
    pub fn strict(tokenizer: Tokenizer, template: Option<ChatTemplate>) -> Result<Self> {
        let special = tokenizer.special_tokens().clone();
        Ok(Self {
            template: Some(template.context("the tokenizer has no chat template (SFT/DPO data needs one)")?),
            bos: special.bos.context("the tokenizer has no bos_token")?,
            eos: special.eos.context("the tokenizer has no eos_token")?,
            pad: tokenizer.pad_id().context("the tokenizer has no pad_token")?,
            tokenizer,
        })
    }

    /// For scoring text: whatever the tokenizer has.
    pub fn lenient(tokenizer: Tokenizer, template: Option<ChatTemplate>) -> Self {
        let special = tokenizer.special_tokens().clone();
        Self {
            template,
            bos: special.bos.unwrap_or_default(),
            eos: special.eos.unwrap_or_default(),
            pad: tokenizer.pad_id().unwrap_or(u32::MAX),
            tokenizer,
        }
    }

    pub fn template(&self) -> Result<&ChatTemplate> {
        self.template.as_ref().context("the model has no chat template (conversations need one)")
    }
}

impl TextEncoder for ChatEncoder {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, add_special_tokens)
    }

    fn render_chat(&self, messages: &Value, tools: Option<&Value>, add_generation_prompt: bool) -> Result<String> {
        self.template()?.render_messages(messages, tools, add_generation_prompt)
    }

    fn pad_id(&self) -> u32 {
        self.pad
    }

    fn bos_token(&self) -> &str {
        &self.bos
    }

    fn eos_token(&self) -> &str {
        &self.eos
    }
}
