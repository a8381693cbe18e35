//! A loaded model's tokenizer and chat template behind the dataset crate's [`TextEncoder`],
//! for scoring pretrain and SFT lines as training reads them. Unlike training's encoder it
//! needs a chat template and bos/eos tokens only when a conversation is scored.

use anyhow::{Context, Result};
use serde_json::Value;

use mm_chat::{ChatTemplate, Tokenizer};
use mm_dataset::TextEncoder;

pub struct EvalEncoder<'a> {
    tokenizer: &'a Tokenizer,
    template: Option<&'a ChatTemplate>,
    bos: String,
    eos: String,
    pad: u32,
}

impl<'a> EvalEncoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer, template: Option<&'a ChatTemplate>) -> Self {
        let special = tokenizer.special_tokens();
        Self {
            tokenizer,
            template,
            bos: special.bos.clone().unwrap_or_default(),
            eos: special.eos.clone().unwrap_or_default(),
            // Pretrain's mask drops pad tokens; without a pad token nothing is dropped.
            pad: tokenizer.pad_id().unwrap_or(u32::MAX),
        }
    }
}

impl TextEncoder for EvalEncoder<'_> {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, add_special_tokens)
    }

    fn render_chat(&self, messages: &Value, tools: Option<&Value>, add_generation_prompt: bool) -> Result<String> {
        let template = self.template.context("the model has no chat template (conversations need one)")?;
        template.render_messages(messages, tools, add_generation_prompt)
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
