//! Training's text encoder: mm-chat's [`ChatEncoder`] built strictly from a checkpoint's
//! tokenizer files.

use anyhow::Result;

pub use mm_chat::ChatEncoder;
use mm_converters::TokenizerFiles;

/// The encoder of a checkpoint's tokenizer files (the upstream datasets need bos/eos/pad
/// tokens and a chat template).
pub fn chat_encoder(files: &TokenizerFiles) -> Result<ChatEncoder> {
    let (tokenizer, template) = mm_model::loaded::tokenizer_and_template(files)?;
    ChatEncoder::strict(tokenizer, template)
}
