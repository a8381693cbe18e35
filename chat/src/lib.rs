//! Tokenizer, chat templates and output parsing.
//!
//! - [`Tokenizer`] / [`StreamDecoder`]: HF `tokenizer.json` + `tokenizer_config.json`, and
//!   streaming detokenization that never splits a character;
//! - [`ChatTemplate`] / [`RenderRequest`]: a tokenizer's Jinja chat template rendered exactly
//!   as HF transformers' `apply_chat_template` renders it;
//! - [`parse_output`]: the inverse, splitting model output into content, reasoning and tool calls;
//! - [`cli`]: pure helpers for `mm template render` and `mm tokenize`.

pub mod cli;
pub mod encoder;
pub mod output;
pub mod percent_format;
pub mod pyjson;
mod pymethods;
pub mod template;
pub mod tokenizer;
pub mod train_tokenizer;

pub use encoder::ChatEncoder;
pub use output::{parse_output, Delta, OutputStream, ParsedOutput, ToolCall, ToolCallError};
pub use template::{ChatTemplate, RenderRequest};
pub use tokenizer::{SpecialTokens, StreamDecoder, Tokenizer};
