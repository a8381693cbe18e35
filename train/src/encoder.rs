//! mm's tokenizer and chat template behind the dataset crate's [`TextEncoder`].

use anyhow::{Context, Result};
use serde_json::Value;

use mm_chat::{ChatTemplate, Tokenizer};
use mm_converters::TokenizerFiles;
use mm_dataset::TextEncoder;

pub struct ChatEncoder {
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    bos: String,
    eos: String,
    pad: u32,
}

impl ChatEncoder {
    /// From a checkpoint's tokenizer files (the upstream datasets need bos/eos/pad tokens and
    /// a chat template).
    pub fn new(files: &TokenizerFiles) -> Result<Self> {
        let (tokenizer, template) = mm_model::loaded::tokenizer_and_template(files)?;
        let special = tokenizer.special_tokens().clone();
        Ok(Self {
            template: template.context("the tokenizer has no chat template (SFT/DPO data needs one)")?,
            bos: special.bos.context("the tokenizer has no bos_token")?,
            eos: special.eos.context("the tokenizer has no eos_token")?,
            pad: tokenizer.pad_id().context("the tokenizer has no pad_token")?,
            tokenizer,
        })
    }
}

impl TextEncoder for ChatEncoder {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, add_special_tokens)
    }

    fn render_chat(&self, messages: &Value, tools: Option<&Value>, add_generation_prompt: bool) -> Result<String> {
        self.template.render_messages(messages, tools, add_generation_prompt)
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
