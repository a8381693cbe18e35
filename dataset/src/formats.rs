//! The four upstream datasets (`PretrainDataset`, `SFTDataset`, `DPODataset`, `RLAIFDataset`
//! of `dataset/lm_dataset.py`), as pure functions of one record and as jsonl-backed datasets.

use std::path::Path;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::encoder::{AssistantMarkers, TextEncoder};
use crate::jsonl::{JsonlIndex, LineError, Validator};
use crate::mask::{assistant_loss_mask, non_pad_mask, pad_to, LmExample};
use crate::records;

// ---------------------------------------------------------------------------------------------
// One record

/// `PretrainDataset.__getitem__`: `tokenizer(text, max_length=max_length,
/// padding='max_length', truncation=True)`, mask = ids != pad, then shifted.
pub fn pretrain_example<E: TextEncoder + ?Sized>(encoder: &E, text: &str, max_length: usize) -> Result<LmExample> {
    check_max_length(max_length)?;
    let pad = encoder.pad_id();
    let mut ids = encoder.encode_truncated(text, true, max_length)?;
    pad_to(&mut ids, max_length, pad);
    let mask = non_pad_mask(&ids, pad);
    Ok(LmExample::from_ids(&ids, &mask))
}

/// SFT's full sequence before the shift: the chat rendered with `add_generation_prompt=False`
/// and `tools`, tokenized (special tokens on), cut to `max_length` *after* tokenizing
/// (`input_ids[:max_length]`), padded with the pad id.
pub fn sft_ids<E: TextEncoder + ?Sized>(
    encoder: &E,
    conversations: &Value,
    tools: Option<&Value>,
    max_length: usize,
) -> Result<Vec<u32>> {
    let prompt = encoder.render_chat(conversations, tools, false)?;
    let mut ids = encoder.encode(&prompt, true)?;
    ids.truncate(max_length);
    pad_to(&mut ids, max_length, encoder.pad_id());
    Ok(ids)
}

/// `SFTDataset.__getitem__` for one `conversations` list (tools as upstream picks them: the
/// first message's `functions` when it is a system message; see [`sft_tools`]).
pub fn sft_example<E: TextEncoder + ?Sized>(
    encoder: &E,
    markers: &AssistantMarkers,
    conversations: &Value,
    max_length: usize,
) -> Result<LmExample> {
    check_max_length(max_length)?;
    let tools = sft_tools(conversations);
    let ids = sft_ids(encoder, conversations, tools, max_length)?;
    let mask = assistant_loss_mask(&ids, &markers.bos_id, &markers.eos_id, max_length);
    Ok(LmExample::from_ids(&ids, &mask))
}

/// Upstream's tool rule: `cs[0]["functions"]` if the first message is a system message and
/// its `functions` is truthy, else none.
pub fn sft_tools(conversations: &Value) -> Option<&Value> {
    let first = conversations.as_array()?.first()?;
    if first.get("role").and_then(Value::as_str) != Some("system") {
        return None;
    }
    first.get("functions").filter(|f| records::truthy(f))
}

/// One side of a DPO pair: rendered without tools, `tokenizer(prompt, truncation=True,
/// max_length=max_length, padding='max_length')`, the assistant mask, shifted.
pub fn dpo_side<E: TextEncoder + ?Sized>(
    encoder: &E,
    markers: &AssistantMarkers,
    messages: &Value,
    max_length: usize,
) -> Result<LmExample> {
    check_max_length(max_length)?;
    let prompt = encoder.render_chat(messages, None, false)?;
    let mut ids = encoder.encode_truncated(&prompt, true, max_length)?;
    pad_to(&mut ids, max_length, encoder.pad_id());
    let mask = assistant_loss_mask(&ids, &markers.bos_id, &markers.eos_id, max_length);
    Ok(LmExample::from_ids(&ids, &mask))
}

/// `DPODataset.__getitem__`: `x_/y_/mask_chosen` and `x_/y_/mask_rejected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpoExample {
    pub chosen: LmExample,
    pub rejected: LmExample,
}

pub fn dpo_example<E: TextEncoder + ?Sized>(
    encoder: &E,
    markers: &AssistantMarkers,
    chosen: &Value,
    rejected: &Value,
    max_length: usize,
) -> Result<DpoExample> {
    Ok(DpoExample {
        chosen: dpo_side(encoder, markers, chosen, max_length)?,
        rejected: dpo_side(encoder, markers, rejected, max_length)?,
    })
}

/// `RLAIFDataset.__getitem__`: `{prompt, answer}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlaifExample {
    /// All turns but the last, as alternating user/assistant messages (the roles in the file
    /// are ignored: turn 0 is `user`, turn 1 `assistant`, …), rendered with
    /// `add_generation_prompt=True`.
    pub prompt: String,
    /// The last turn's content.
    pub answer: String,
}

pub fn rlaif_example<E: TextEncoder + ?Sized>(encoder: &E, contents: &[&str]) -> Result<RlaifExample> {
    let Some((answer, turns)) = contents.split_last() else { bail!("no turns") };
    let messages: Vec<Value> = turns
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": c}))
        .collect();
    let prompt = encoder.render_chat(&Value::Array(messages), None, true)?;
    Ok(RlaifExample { prompt, answer: answer.to_string() })
}

/// The longest `max_length` (`--max-seq-len`) a dataset takes: 2^17 tokens (MiniMind trains
/// at 512 to 1024 and has a 32768-position context).
pub const MAX_LENGTH: usize = 1 << 17;

/// The most tokens one micro-batch may hold, `batch_size × max_length`: 2^18 (upstream's
/// defaults use 16 384). The model's activations grow with it (the logits alone take
/// `tokens × vocab × 4` bytes), so a mistyped `--batch-size` is refused before training starts.
pub const MAX_BATCH_TOKENS: usize = 1 << 18;

fn no_reply_tokens(max_length: usize) -> String {
    format!(
        "no loss tokens: no assistant reply token within --max-seq-len {max_length} (the reply is cut off, or there is none)"
    )
}

fn check_max_length(max_length: usize) -> Result<()> {
    if max_length < 2 {
        bail!("max_length must be at least 2 (X and Y are ids[:-1] and ids[1:]), got {max_length}");
    }
    if max_length > MAX_LENGTH {
        bail!("max_length {max_length} exceeds the limit of {MAX_LENGTH} tokens a sample may have");
    }
    Ok(())
}

/// Checks a micro-batch of `batch_size` rows of `max_length` tokens against [`MAX_LENGTH`] and
/// [`MAX_BATCH_TOKENS`] before anything is allocated for it.
pub fn check_micro_batch(batch_size: usize, max_length: usize) -> Result<()> {
    if batch_size == 0 {
        bail!("the batch size must be at least 1");
    }
    check_max_length(max_length)?;
    match batch_size.checked_mul(max_length) {
        Some(tokens) if tokens <= MAX_BATCH_TOKENS => Ok(()),
        _ => bail!(
            "a batch of {batch_size} rows x {max_length} tokens exceeds the limit of {MAX_BATCH_TOKENS} tokens per \
             micro-batch (use a smaller batch size with --accumulation-steps for the same effective batch)"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Batches

/// `batch` rows of `X`, `Y` and `loss_mask`, row-major `[rows, seq_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LmBatch {
    pub rows: usize,
    /// `max_length - 1`.
    pub seq_len: usize,
    pub x: Vec<u32>,
    pub y: Vec<u32>,
    /// 0.0 or 1.0.
    pub loss_mask: Vec<f32>,
    /// The file line of each row.
    pub lines: Vec<u64>,
}

impl LmBatch {
    pub fn from_examples(examples: &[&LmExample], lines: Vec<u64>) -> Self {
        let seq_len = examples.first().map_or(0, |e| e.len());
        let mut b = Self {
            rows: examples.len(),
            seq_len,
            x: Vec::with_capacity(examples.len() * seq_len),
            y: Vec::with_capacity(examples.len() * seq_len),
            loss_mask: Vec::with_capacity(examples.len() * seq_len),
            lines,
        };
        for e in examples {
            assert_eq!(e.len(), seq_len, "examples of one batch differ in length");
            b.x.extend_from_slice(&e.x);
            b.y.extend_from_slice(&e.y);
            b.loss_mask.extend(e.loss_mask.iter().map(|&m| f32::from(m)));
        }
        b
    }

    /// Row `r` of X, Y and the mask.
    pub fn row(&self, r: usize) -> (&[u32], &[u32], &[f32]) {
        let s = r * self.seq_len..(r + 1) * self.seq_len;
        (&self.x[s.clone()], &self.y[s.clone()], &self.loss_mask[s])
    }
}

/// A DPO batch; [`concatenated`](Self::concatenated) gives `torch.cat([chosen, rejected])`
/// as `train_dpo.py` builds it.
#[derive(Debug, Clone, PartialEq)]
pub struct DpoBatch {
    pub chosen: LmBatch,
    pub rejected: LmBatch,
}

impl DpoBatch {
    /// `[2 * rows, seq_len]`: the chosen rows, then the rejected rows.
    pub fn concatenated(&self) -> LmBatch {
        let mut b = self.chosen.clone();
        b.rows += self.rejected.rows;
        b.x.extend_from_slice(&self.rejected.x);
        b.y.extend_from_slice(&self.rejected.y);
        b.loss_mask.extend_from_slice(&self.rejected.loss_mask);
        b.lines.extend_from_slice(&self.rejected.lines);
        b
    }
}

/// RLAIF prompts and answers (`batch['prompt']`, `batch['answer']`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlaifBatch {
    pub prompts: Vec<String>,
    pub answers: Vec<String>,
    pub lines: Vec<u64>,
}

// ---------------------------------------------------------------------------------------------
// Datasets over jsonl files

/// Options shared by the jsonl datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetOptions {
    /// Upstream `max_length` (`--max_seq_len`): rows are `max_length - 1` long. Not used by
    /// RLAIF.
    pub max_length: usize,
    /// Skip and count bad lines instead of failing on the first one.
    pub skip_bad_lines: bool,
}

impl DatasetOptions {
    pub fn new(max_length: usize) -> Self {
        Self { max_length, skip_bad_lines: false }
    }

    pub fn skip_bad_lines(mut self, yes: bool) -> Self {
        self.skip_bad_lines = yes;
        self
    }
}

/// A dataset the [`Loader`](crate::Loader) can batch: random access to examples by index.
pub trait Dataset: Sync {
    type Example: Send;
    type Batch;
    /// The file and its index.
    fn index(&self) -> &JsonlIndex;
    /// Example `i` (`0..len`), or the error with its file and line.
    fn example(&self, i: usize) -> Result<Self::Example, LineError>;
    /// Rows in order; `lines` are their file lines.
    fn collate(&self, examples: Vec<Self::Example>, lines: Vec<u64>) -> Self::Batch;
    fn skip_bad_lines(&self) -> bool;
    /// Why `example` has no token to train on, if it has none (its loss would be 0/0).
    fn without_loss_tokens(&self, _example: &Self::Example) -> Option<String> {
        None
    }

    fn len(&self) -> usize {
        self.index().len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn open_index(path: &Path, opts: &DatasetOptions, validate: Validator, needs_length: bool) -> Result<JsonlIndex> {
    if needs_length {
        check_max_length(opts.max_length)?;
    }
    JsonlIndex::build(path, opts.skip_bad_lines, validate)
}

/// Wraps an encoder/template error as a line error.
fn at(index: &JsonlIndex, i: usize) -> impl Fn(anyhow::Error) -> LineError + '_ {
    move |e| index.error(i, format!("{e:#}"))
}

/// Pretrain `{"text": …}` lines.
pub struct PretrainDataset<E> {
    index: JsonlIndex,
    encoder: E,
    opts: DatasetOptions,
}

impl<E: TextEncoder> PretrainDataset<E> {
    pub fn open(path: &Path, encoder: E, opts: DatasetOptions) -> Result<Self> {
        Ok(Self { index: open_index(path, &opts, records::validate_pretrain, true)?, encoder, opts })
    }

    pub fn encoder(&self) -> &E {
        &self.encoder
    }
}

impl<E: TextEncoder + Sync> Dataset for PretrainDataset<E> {
    type Example = LmExample;
    type Batch = LmBatch;

    fn index(&self) -> &JsonlIndex {
        &self.index
    }

    fn example(&self, i: usize) -> Result<LmExample, LineError> {
        let v = self.index.read_json(i)?;
        let text = records::pretrain_text(&v).map_err(|m| self.index.error(i, m))?;
        pretrain_example(&self.encoder, text, self.opts.max_length).map_err(at(&self.index, i))
    }

    fn collate(&self, examples: Vec<LmExample>, lines: Vec<u64>) -> LmBatch {
        LmBatch::from_examples(&examples.iter().collect::<Vec<_>>(), lines)
    }

    fn skip_bad_lines(&self) -> bool {
        self.opts.skip_bad_lines
    }

    fn without_loss_tokens(&self, e: &LmExample) -> Option<String> {
        (!e.has_loss_tokens()).then(|| "no loss tokens (the text encodes to fewer than 2 tokens)".into())
    }
}

/// SFT `{"conversations": [...]}` lines (tools in a first system message's `functions`).
pub struct SftDataset<E> {
    index: JsonlIndex,
    encoder: E,
    markers: AssistantMarkers,
    opts: DatasetOptions,
}

impl<E: TextEncoder> SftDataset<E> {
    pub fn open(path: &Path, encoder: E, opts: DatasetOptions) -> Result<Self> {
        let markers = AssistantMarkers::from_encoder(&encoder)?;
        Ok(Self { index: open_index(path, &opts, records::validate_sft, true)?, encoder, markers, opts })
    }

    pub fn markers(&self) -> &AssistantMarkers {
        &self.markers
    }
}

impl<E: TextEncoder + Sync> Dataset for SftDataset<E> {
    type Example = LmExample;
    type Batch = LmBatch;

    fn index(&self) -> &JsonlIndex {
        &self.index
    }

    fn example(&self, i: usize) -> Result<LmExample, LineError> {
        let v = self.index.read_json(i)?;
        records::sft(&v).map_err(|m| self.index.error(i, m))?;
        sft_example(&self.encoder, &self.markers, &v["conversations"], self.opts.max_length).map_err(at(&self.index, i))
    }

    fn collate(&self, examples: Vec<LmExample>, lines: Vec<u64>) -> LmBatch {
        LmBatch::from_examples(&examples.iter().collect::<Vec<_>>(), lines)
    }

    fn skip_bad_lines(&self) -> bool {
        self.opts.skip_bad_lines
    }

    fn without_loss_tokens(&self, e: &LmExample) -> Option<String> {
        (!e.has_loss_tokens()).then(|| no_reply_tokens(self.opts.max_length))
    }
}

/// DPO `{"chosen": [...], "rejected": [...]}` lines.
pub struct DpoDataset<E> {
    index: JsonlIndex,
    encoder: E,
    markers: AssistantMarkers,
    opts: DatasetOptions,
}

impl<E: TextEncoder> DpoDataset<E> {
    pub fn open(path: &Path, encoder: E, opts: DatasetOptions) -> Result<Self> {
        let markers = AssistantMarkers::from_encoder(&encoder)?;
        Ok(Self { index: open_index(path, &opts, records::validate_dpo, true)?, encoder, markers, opts })
    }

    pub fn markers(&self) -> &AssistantMarkers {
        &self.markers
    }
}

impl<E: TextEncoder + Sync> Dataset for DpoDataset<E> {
    type Example = DpoExample;
    type Batch = DpoBatch;

    fn index(&self) -> &JsonlIndex {
        &self.index
    }

    fn example(&self, i: usize) -> Result<DpoExample, LineError> {
        let v = self.index.read_json(i)?;
        records::dpo(&v).map_err(|m| self.index.error(i, m))?;
        dpo_example(&self.encoder, &self.markers, &v["chosen"], &v["rejected"], self.opts.max_length)
            .map_err(at(&self.index, i))
    }

    fn without_loss_tokens(&self, e: &DpoExample) -> Option<String> {
        match (e.chosen.has_loss_tokens(), e.rejected.has_loss_tokens()) {
            (true, true) => None,
            (false, _) => Some(format!("chosen: {}", no_reply_tokens(self.opts.max_length))),
            (_, false) => Some(format!("rejected: {}", no_reply_tokens(self.opts.max_length))),
        }
    }

    fn collate(&self, examples: Vec<DpoExample>, lines: Vec<u64>) -> DpoBatch {
        let chosen: Vec<&LmExample> = examples.iter().map(|e| &e.chosen).collect();
        let rejected: Vec<&LmExample> = examples.iter().map(|e| &e.rejected).collect();
        DpoBatch {
            chosen: LmBatch::from_examples(&chosen, lines.clone()),
            rejected: LmBatch::from_examples(&rejected, lines),
        }
    }

    fn skip_bad_lines(&self) -> bool {
        self.opts.skip_bad_lines
    }
}

/// RLAIF `{"conversations": [...]}` lines (the last turn is the answer).
pub struct RlaifDataset<E> {
    index: JsonlIndex,
    encoder: E,
    skip_bad_lines: bool,
}

impl<E: TextEncoder> RlaifDataset<E> {
    /// `opts.max_length` is not used (upstream stores it and never reads it).
    pub fn open(path: &Path, encoder: E, opts: DatasetOptions) -> Result<Self> {
        Ok(Self {
            index: open_index(path, &opts, records::validate_rlaif, false)?,
            encoder,
            skip_bad_lines: opts.skip_bad_lines,
        })
    }
}

impl<E: TextEncoder + Sync> Dataset for RlaifDataset<E> {
    type Example = RlaifExample;
    type Batch = RlaifBatch;

    fn index(&self) -> &JsonlIndex {
        &self.index
    }

    fn example(&self, i: usize) -> Result<RlaifExample, LineError> {
        let v = self.index.read_json(i)?;
        let contents = records::rlaif(&v).map_err(|m| self.index.error(i, m))?;
        rlaif_example(&self.encoder, &contents).map_err(at(&self.index, i))
    }

    fn collate(&self, examples: Vec<RlaifExample>, lines: Vec<u64>) -> RlaifBatch {
        let (prompts, answers) = examples.into_iter().map(|e| (e.prompt, e.answer)).unzip();
        RlaifBatch { prompts, answers, lines }
    }

    fn skip_bad_lines(&self) -> bool {
        self.skip_bad_lines
    }
}
