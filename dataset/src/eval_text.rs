//! Texts as an evaluation scores them (`mm eval --task ppl`): each line of a pretrain file
//! (`{"text": …}`) or an SFT file (`{"conversations": […]}`) as its whole token sequence, not
//! cut to a training length, and which of its tokens count: every non-pad token after the
//! first for pretrain text, the tokens upstream's SFT loss trains on (the assistant replies)
//! for conversations.

use std::path::Path;

use anyhow::{bail, Result};
use serde_json::Value;

use crate::encoder::{AssistantMarkers, TextEncoder};
use crate::formats::sft_tools;
use crate::jsonl::{JsonlIndex, LineError};
use crate::mask::{assistant_loss_mask, non_pad_mask};
use crate::records;

/// Which of the two formats a file holds (from its first good line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFormat {
    Pretrain,
    Sft,
}

/// One line's tokens and, per position, whether the token there is scored. Position 0 is
/// never scored: nothing precedes it.
#[derive(Debug, Clone)]
pub struct ScoredText {
    pub ids: Vec<u32>,
    pub scored: Vec<bool>,
    /// The file line it came from.
    pub line: u64,
}

impl ScoredText {
    pub fn scored_count(&self) -> usize {
        self.scored.iter().filter(|&&s| s).count()
    }
}

/// The lines of a pretrain or SFT jsonl file, read one at a time.
pub struct EvalTexts<E> {
    index: JsonlIndex,
    encoder: E,
    format: TextFormat,
    markers: Option<AssistantMarkers>,
}

fn validate_either(v: &Value) -> Result<(), String> {
    if v.get("conversations").is_some() {
        records::validate_sft(v)
    } else {
        records::validate_pretrain(v)
    }
}

impl<E: TextEncoder> EvalTexts<E> {
    /// Indexes `path` (every line checked; the first bad one is the error). All lines must be
    /// of one format.
    pub fn open(path: &Path, encoder: E) -> Result<Self> {
        let index = JsonlIndex::build(path, false, validate_either)?;
        if index.is_empty() {
            bail!("{}: no lines to evaluate", path.display());
        }
        let format = if index.read_json(0)?.get("conversations").is_some() { TextFormat::Sft } else { TextFormat::Pretrain };
        let markers = match format {
            TextFormat::Sft => {
                if encoder.bos_token().is_empty() || encoder.eos_token().is_empty() {
                    bail!("{}: conversations are scored on the assistant turns, which the tokenizer's bos_token and eos_token mark; it lacks one", path.display());
                }
                Some(AssistantMarkers::from_encoder(&encoder)?)
            }
            TextFormat::Pretrain => None,
        };
        Ok(Self { index, encoder, format, markers })
    }

    pub fn format(&self) -> TextFormat {
        self.format
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Line `i` tokenized as training tokenizes it (pretrain: `tokenizer(text)`; SFT: the chat
    /// rendered with its tools, special tokens on), with its scored positions.
    pub fn text(&self, i: usize) -> Result<ScoredText, LineError> {
        let v = self.index.read_json(i)?;
        let line = self.index.line_number(i);
        let err = |e: anyhow::Error| self.index.error(i, format!("{e:#}"));
        let (ids, mask) = match (self.format, &self.markers) {
            (TextFormat::Sft, Some(markers)) => {
                records::sft(&v).map_err(|m| self.index.error(i, m))?;
                let prompt = self.encoder.render_chat(&v["conversations"], sft_tools(&v["conversations"]), false).map_err(err)?;
                let ids = self.encoder.encode(&prompt, true).map_err(err)?;
                let mask = assistant_loss_mask(&ids, &markers.bos_id, &markers.eos_id, ids.len());
                (ids, mask)
            }
            _ => {
                if v.get("conversations").is_some() {
                    return Err(self.index.error(i, "a conversations line in a pretrain (text) file"));
                }
                let text = records::pretrain_text(&v).map_err(|m| self.index.error(i, m))?;
                let ids = self.encoder.encode(text, true).map_err(err)?;
                let mask = non_pad_mask(&ids, self.encoder.pad_id());
                (ids, mask)
            }
        };
        let scored = mask.iter().enumerate().map(|(p, &m)| p > 0 && m == 1).collect();
        Ok(ScoredText { ids, scored, line })
    }
}
