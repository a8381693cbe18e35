//! The reward model: the MiniMind trunk (its final RMSNorm included, its LM head unused) and a
//! score head `score.weight` [1, hidden] without bias, read at each conversation's last non-pad
//! token. transformers' `LlamaForSequenceClassification.forward` computes
//! `score(hidden_states)` at every position and pools with
//! `last_non_pad_token = (arange(T) * (input_ids != pad_token_id)).argmax(-1)`: the rightmost
//! position holding a non-pad id (0 when every id is the pad). mm reads the same position.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use mm_chat::{ChatTemplate, RenderRequest, Tokenizer};
use mm_converters::Checkpoint;
use mm_model::model::{MiniMind, Mode};
use crate::rlaif::calculate_rewards::ChatMessage;

/// Rows scored in one forward pass when scoring many conversations.
const SCORE_CHUNK: usize = 8;

/// transformers' pooling position: the rightmost id that is not `pad` (0 if there is none).
pub fn last_non_pad(ids: &[u32], pad: u32) -> usize {
    ids.iter().rposition(|&id| id != pad).unwrap_or(0)
}

/// Scores [rows] (f32) of token rows of any lengths: right-padded with `pad` to the longest, run
/// through `trunk` (no attention mask is needed: causal attention keeps every position before a
/// row's pads unaffected by them, as with transformers' right-padded batches), the final hidden
/// state at each row's [`last_non_pad`] position times `score` [1, hidden]. In
/// [`Mode::Training`] the result keeps the graph back to the trunk and `score`.
pub fn pooled_scores(trunk: &MiniMind, score: &Tensor, rows: &[Vec<u32>], pad: u32, mode: Mode) -> Result<Tensor> {
    ensure!(!rows.is_empty(), "no conversation to score");
    let h = trunk.config.hidden_size;
    ensure!(score.dims() == [1, h], "the score head has shape {:?}, the trunk needs [1, {h}]", score.dims());
    let t = rows.iter().map(Vec::len).max().unwrap_or(0);
    ensure!(t > 0, "a conversation to score has no tokens");
    let b = rows.len();
    let mut flat = Vec::with_capacity(b * t);
    let mut picks = Vec::with_capacity(b);
    for (r, row) in rows.iter().enumerate() {
        let start = flat.len();
        flat.extend_from_slice(row);
        flat.resize(start + t, pad);
        picks.push((r * t + last_non_pad(&flat[start..], pad)) as u32);
    }
    let device = trunk.device();
    let ids = Tensor::from_vec(flat, (b, t), device)?;
    let (hidden, _aux) = trunk.forward_hidden(&ids, None, None, mode)?;
    let rows_h = hidden.reshape((b * t, h))?;
    let picked = rows_h.index_select(&Tensor::from_vec(picks, b, device)?, 0)?.to_dtype(DType::F32)?;
    Ok(picked.matmul(&score.to_dtype(DType::F32)?.t()?)?.squeeze(1)?)
}

/// A reward model ready to score conversations.
pub struct RewardModel {
    pub trunk: MiniMind,
    /// `score.weight` [1, hidden], f32.
    pub score: Tensor,
    /// `pad_token_id` of config.json: the pooling rule's pad.
    pub pad_id: u32,
    pub tokenizer: Tokenizer,
    /// The model's chat template, which renders the conversations it scores.
    pub template: ChatTemplate,
}

impl RewardModel {
    /// Builds the model from a trunk checkpoint (with its tokenizer and chat template) and the
    /// score head, in f32 on `device`.
    pub fn new(trunk: &Checkpoint, score: &Tensor, pad_id: u32, device: &Device) -> Result<Self> {
        let (tokenizer, template) = mm_model::loaded::tokenizer_and_template(&trunk.tokenizer)
            .with_context(|| format!("the tokenizer of {}", trunk.provenance.source.display()))?;
        let template = template.with_context(|| {
            format!("{}: the tokenizer has no chat template (the reward model renders conversations with it)", trunk.provenance.source.display())
        })?;
        let mut model = MiniMind::from_checkpoint(trunk, DType::F32, device)?;
        // The scoring forward reads hidden states through candle's path.
        model.set_cpu_engine(false);
        Ok(Self { trunk: model, score: score.to_dtype(DType::F32)?.to_device(device)?, pad_id, tokenizer, template })
    }

    /// Positions the model can read.
    pub fn context(&self) -> usize {
        self.trunk.config.max_position_embeddings
    }

    /// The ids the model scores for a conversation (see [`encode_conversation`]).
    pub fn encode(&self, messages: &Value, max_len: Option<usize>) -> Result<Vec<u32>> {
        encode_conversation(&self.tokenizer, &self.template, messages, max_len, self.context())
    }

    /// Scores of token rows (see [`pooled_scores`]), a few rows per forward pass.
    pub fn score_ids(&self, rows: &[Vec<u32>]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(SCORE_CHUNK) {
            out.extend(pooled_scores(&self.trunk, &self.score, chunk, self.pad_id, Mode::Inference)?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Scores of conversations given as JSON message lists.
    pub fn score_conversations(&self, conversations: &[Value]) -> Result<Vec<f32>> {
        let rows = conversations
            .iter()
            .enumerate()
            .map(|(i, c)| self.encode(c, None).with_context(|| format!("conversation {i}")))
            .collect::<Result<Vec<_>>>()?;
        self.score_ids(&rows)
    }

    /// Scores of conversations given as chat turns.
    pub fn score_chats(&self, chats: &[Vec<ChatMessage>]) -> Result<Vec<f32>> {
        let conversations: Vec<Value> = chats.iter().map(|c| messages_json(c)).collect();
        self.score_conversations(&conversations)
    }
}

/// The ids of a conversation (a JSON array of `{role, content}` messages) as a reward model
/// scores it: rendered by the chat template without a generation prompt, then tokenized
/// (`tokenizer(apply_chat_template(messages, tokenize=False))`). With `max_len` the ids are cut
/// to that many (the beginning kept, as the DPO loader cuts); without, a conversation longer
/// than `context` is an error.
pub fn encode_conversation(tokenizer: &Tokenizer, template: &ChatTemplate, messages: &Value, max_len: Option<usize>, context: usize) -> Result<Vec<u32>> {
    ensure!(messages.as_array().is_some_and(|m| !m.is_empty()), "a conversation must be a non-empty list of messages");
    let text = template.render(&RenderRequest::new(messages.clone())).context("the chat template failed")?;
    let mut ids = tokenizer.encode(&text, true)?;
    match max_len {
        Some(n) => ids.truncate(n),
        None if ids.len() > context => bail!("the conversation is {} tokens long, over the reward model's context of {context}", ids.len()),
        None => {}
    }
    ensure!(!ids.is_empty(), "the conversation renders to no tokens");
    Ok(ids)
}

/// Chat turns as the JSON message list templates and the `/pooling` API take.
pub fn messages_json(chat: &[ChatMessage]) -> Value {
    Value::Array(chat.iter().map(|m| json!({"role": m.role, "content": m.content})).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_position_is_the_rightmost_non_pad() {
        assert_eq!(last_non_pad(&[5, 6, 7, 0, 0], 0), 2);
        assert_eq!(last_non_pad(&[5, 0, 7, 0], 0), 2);
        assert_eq!(last_non_pad(&[5, 6, 7], 0), 2);
        // transformers' argmax over all-zero products picks position 0.
        assert_eq!(last_non_pad(&[0, 0, 0], 0), 0);
        assert_eq!(last_non_pad(&[], 0), 0);
    }
}
