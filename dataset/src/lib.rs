//! Training data of upstream MiniMind (`dataset/lm_dataset.py` at jingyaogong/minimind
//! 5959396): streaming jsonl readers that give the same `X`, `Y` and `loss_mask` as upstream's
//! `PretrainDataset`, `SFTDataset` and `DPODataset`, and the `prompt`/`answer` pairs of
//! `RLAIFDataset`.
//!
//! * Formats, one JSON object a line: pretrain `{"text": …}`; SFT `{"conversations":
//!   [{role, content, …}]}` (tools in a first system message's `functions`); DPO
//!   `{"chosen": [...], "rejected": [...]}`; RLAIF `{"conversations": [...]}`.
//! * Files are never loaded whole: [`JsonlIndex`] checks every line in one streaming pass
//!   and keeps the byte range of each good one. A bad line (bad JSON, missing field, wrong
//!   type, blank line) is an error naming the file and line, or with `skip_bad_lines` is
//!   skipped and counted in a [`SkipReport`] (lines whose template or tokenizer call fails
//!   when read are handled the same way, by the loader).
//! * The tokenizer and chat template come in through [`TextEncoder`], which the root crate
//!   implements, so this crate does not depend on it.
//! * [`Loader`] walks epochs in a deterministic shuffled order (see [`loader`] for the RNG),
//!   makes fixed `[batch, max_length - 1]` batches, and saves a [`LoaderState`] (epoch, index
//!   into the epoch's order) to resume exactly.
//!
//! Upstream behaviour kept on purpose (see [`assistant_loss_mask`] for the mask's quirks):
//! * pretrain: HF truncation then right padding with the pad id; the mask is `ids != pad`, so
//!   a literal `<|endoftext|>` in the text is masked out as if it were padding;
//! * SFT: tokenized with special tokens on and cut *after* tokenizing (`input_ids[:max]`),
//!   whereas pretrain and DPO use the tokenizer's own truncation;
//! * DPO: rendered without tools, even when the first message has `functions`;
//! * RLAIF: roles are reassigned by position (user, assistant, user, …) whatever the file
//!   says, and the last turn is the answer.
//!
//! Not kept: upstream `str()`s a non-string `text`, and its template renders a non-string
//! `content` as empty text; both are bad lines here.

pub mod encoder;
pub mod eval_text;
pub mod formats;
pub mod jsonl;
pub mod loader;
pub mod mask;
pub mod prefetch;
mod records;

pub use encoder::{AssistantMarkers, TextEncoder};
pub use eval_text::{EvalTexts, ScoredText, TextFormat};
pub use formats::{
    check_micro_batch, dpo_example, dpo_side, pretrain_example, rlaif_example, sft_example, sft_ids, sft_tools, Dataset, DatasetOptions,
    DpoBatch, DpoDataset, DpoExample, LmBatch, PretrainDataset, MAX_BATCH_TOKENS, MAX_LENGTH, RlaifBatch, RlaifDataset, RlaifExample, SftDataset,
};
pub use jsonl::{JsonlIndex, LineError, SkipReport, MAX_LINE_BYTES};
pub use prefetch::Prefetch;
pub use loader::{epoch_order, shard_of, BatchInfo, Loader, LoaderOptions, LoaderState, Position, SplitMix64};
pub use mask::{assistant_loss_mask, non_pad_mask, LmExample};

#[cfg(test)]
mod tests;
