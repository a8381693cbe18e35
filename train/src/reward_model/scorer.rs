//! The two non-rule reward sources of an RL run, as [`Scorer`]s the [`Rewarder`] sums with the
//! rule sets: `--reward-model DIR` (a reward model mm runs itself) and `--reward-url URL` (a
//! remote `/pooling` scorer: vLLM serving e.g. InternLM2-1.8B-Reward, or `mm serve` over a
//! reward model).
//!
//! Both give upstream's reward-model term of `calculate_rewards`: the conversation is the
//! prompt's turns (parsed from the rendered prompt) plus the reply as the assistant turn; its
//! score is clipped to ±3; for reasoning models (`reasoning`), a reply with an
//! `<answer>…</answer>` scores `0.4 × whole reply + 0.6 × answer alone` (each clipped). The
//! format and tag rewards are not included: `rule:reasoning` gives those.
//!
//! [`Rewarder`]: crate::rewards::Rewarder

use anyhow::{ensure, Context, Result};

use super::remote::PoolingClient;
use super::RewardModel;
use crate::rewards::{RewardInput, Scorer};
use crate::rlaif::calculate_rewards::{calculate_rewards, ChatMessage};

/// Upstream's clipped (and, with `reasoning`, blended) reward-model scores of a batch, with
/// every conversation scored in one call of `score_all` (raw scores, one per conversation).
pub fn upstream_model_scores(
    batch: &[RewardInput],
    reasoning: bool,
    score_all: impl FnOnce(&[Vec<ChatMessage>]) -> Result<Vec<f64>>,
) -> Result<Vec<f32>> {
    let prompts: Vec<&str> = batch.iter().map(|b| b.prompt).collect();
    let replies: Vec<&str> = batch.iter().map(|b| b.reply).collect();
    // The conversations upstream scores, and in which order, do not depend on the scores:
    // collect them first, score them together, then run the blend on the results.
    let mut chats = Vec::new();
    calculate_rewards(&prompts, &replies, 1, reasoning, |chat| {
        chats.push(chat.to_vec());
        Ok(0.0)
    })?;
    let scores = score_all(&chats)?;
    ensure!(scores.len() == chats.len(), "{} scores for {} conversations", scores.len(), chats.len());
    let mut next = scores.into_iter();
    let rewards = calculate_rewards(&prompts, &replies, 1, reasoning, |_| next.next().context("a conversation without a score"))?;
    Ok(rewards.model_scores)
}

/// `--reward-model DIR`.
pub struct ModelScorer {
    pub model: RewardModel,
    pub reasoning: bool,
    name: String,
}

impl ModelScorer {
    pub fn new(model: RewardModel, reasoning: bool, name: &str) -> Self {
        Self { model, reasoning, name: format!("model:{name}") }
    }
}

impl Scorer for ModelScorer {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn score(&mut self, batch: &[RewardInput]) -> Result<Vec<f32>> {
        let model = &self.model;
        upstream_model_scores(batch, self.reasoning, |chats| Ok(model.score_chats(chats)?.into_iter().map(f64::from).collect()))
    }
}

/// `--reward-url URL`.
pub struct RemoteScorer {
    pub client: PoolingClient,
    pub reasoning: bool,
}

impl RemoteScorer {
    pub fn new(client: PoolingClient, reasoning: bool) -> Self {
        Self { client, reasoning }
    }
}

impl Scorer for RemoteScorer {
    fn name(&self) -> String {
        format!("url:{}", self.client.url())
    }

    fn score(&mut self, batch: &[RewardInput]) -> Result<Vec<f32>> {
        let client = &self.client;
        upstream_model_scores(batch, self.reasoning, |chats| chats.iter().map(|c| client.score_chat(c)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_matches_calculate_rewards() {
        let prompt = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n";
        let replies = ["<think>\nx\n</think>\n<answer>\nBlue\n</answer>", "no answer tags"];
        let batch: Vec<RewardInput> =
            replies.iter().map(|r| RewardInput { prompt, reply: r, completion: &[], eos: 2, max_new_tokens: 8 }).collect();
        // A scorer by length: 10 for long conversations (clipped to 3), the answer alone 1.
        let raw = |c: &[ChatMessage]| -> f64 {
            let last = &c.last().unwrap().content;
            if last == "Blue" { 1.0 } else { last.len() as f64 }
        };
        let want = calculate_rewards(&[prompt, prompt], &replies, 1, true, |c| Ok(raw(c))).unwrap().model_scores;
        let got = upstream_model_scores(&batch, true, |chats| Ok(chats.iter().map(|c| raw(c)).collect())).unwrap();
        assert_eq!(got, want);
        assert_eq!(got, vec![(3.0 * 0.4 + 1.0 * 0.6) as f32, 3.0]);
        let plain = upstream_model_scores(&batch, false, |chats| {
            assert_eq!(chats.len(), 2);
            assert_eq!(chats[0][0], ChatMessage { role: "user".into(), content: "q".into() });
            Ok(vec![-5.0, 0.5])
        })
        .unwrap();
        assert_eq!(plain, vec![-3.0, 0.5]);
    }
}
