//! Upstream's `calculate_rewards` around any reward-model scorer: the format and tag ("mark")
//! rule rewards of [`crate::rewards::reasoning`], plus the reward-model score clipped to
//! ±3 and, when the response has an `<answer>…</answer>`, blended 0.4/0.6 with the score of the
//! answer alone. Upstream's regular expressions are matched by hand with Python `re`'s
//! semantics.

use anyhow::{ensure, Result};

use crate::rewards::reasoning::{format_reward, tag_reward};

/// The reward model's score range.
pub const SCORE_CLIP: f64 = 3.0;

/// One chat turn given to the reward model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// The turns of a rendered prompt, as upstream's
/// `re.findall(r"<\|im_start\|>(system|user|assistant)\s+(.*?)<\|im_end\|>", prompt, re.S)`
/// with each content stripped.
pub fn prompt_messages(rendered: &str) -> Vec<ChatMessage> {
    const START: &str = "<|im_start|>";
    const END: &str = "<|im_end|>";
    let mut out = Vec::new();
    let mut cursor = 0;
    while let Some(found) = rendered[cursor..].find(START) {
        let at = cursor + found;
        let after = &rendered[at + START.len()..];
        let role = ["system", "user", "assistant"].into_iter().find(|r| after.starts_with(r));
        let matched = role.and_then(|role| {
            let rest = &after[role.len()..];
            // `\s+` needs at least one whitespace character; the lazy `(.*?)` then runs to the
            // first `<|im_end|>` (the content is stripped, so where the spaces end is moot).
            rest.chars().next().filter(|c| c.is_whitespace())?;
            let end = rest.find(END)?;
            Some((role, rest[..end].trim().to_string(), at + START.len() + role.len() + end + END.len()))
        });
        match matched {
            Some((role, content, next)) => {
                out.push(ChatMessage { role: role.to_string(), content });
                cursor = next;
            }
            None => cursor = at + START.len(),
        }
    }
    out
}

/// `re.search(r'<answer>(.*?)</answer>', response, re.S).group(1).strip()`.
pub fn answer_content(response: &str) -> Option<&str> {
    let start = response.find("<answer>")? + "<answer>".len();
    let end = response[start..].find("</answer>")?;
    Some(response[start..start + end].trim())
}

/// Every reward of a batch, f32 as upstream's tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewards {
    /// Format and mark rewards (zeros when `reasoning` is off).
    pub format: Vec<f32>,
    pub mark: Vec<f32>,
    /// The clipped (and blended) reward-model scores.
    pub model_scores: Vec<f32>,
    /// `format + mark + score`, summed in f32 in that order.
    pub total: Vec<f32>,
}

/// Upstream's `calculate_rewards`: `prompts` are the rendered prompts, `responses` the decoded
/// completions, `per_prompt` completions per prompt (GRPO's `num_generations`, else 1), prompt
/// major. `score` is the reward model's `get_score(chat)` (raw, unclipped). With `reasoning`
/// the format and mark rewards are added and the answer blend applies.
pub fn calculate_rewards(
    prompts: &[&str],
    responses: &[&str],
    per_prompt: usize,
    reasoning: bool,
    mut score: impl FnMut(&[ChatMessage]) -> Result<f64>,
) -> Result<Rewards> {
    ensure!(per_prompt >= 1, "per_prompt must be at least 1");
    ensure!(responses.len() == prompts.len() * per_prompt, "{} responses for {} prompts × {per_prompt}", responses.len(), prompts.len());
    let n = responses.len();
    let (format, mark): (Vec<f32>, Vec<f32>) =
        if reasoning { responses.iter().map(|r| (format_reward(r), tag_reward(r))).unzip() } else { (vec![0.0; n], vec![0.0; n]) };
    let clip = |s: f64| s.clamp(-SCORE_CLIP, SCORE_CLIP);
    let mut model_scores = Vec::with_capacity(n);
    for (i, response) in responses.iter().enumerate() {
        let mut chat = prompt_messages(prompts[i / per_prompt]);
        chat.push(ChatMessage { role: "assistant".into(), content: response.to_string() });
        let mut s = clip(score(&chat)?);
        if reasoning {
            if let (Some(answer), Some(last)) = (answer_content(response), chat.last_mut()) {
                last.content = answer.to_string();
                s = s * 0.4 + clip(score(&chat)?) * 0.6;
            }
        }
        model_scores.push(s as f32);
    }
    let total = (0..n).map(|i| 0f32 + format[i] + mark[i] + model_scores[i]).collect();
    Ok(Rewards { format, mark, model_scores, total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_turns() {
        assert_eq!(answer_content("I think <answer> Blue </answer> is <answer>x</answer>"), Some("Blue"));
        assert_eq!(answer_content("<answer> open"), None);
        let turns = prompt_messages(
            "<|im_start|>system\nS <|im_end|>\n<|im_start|>tool\nT<|im_end|><|im_start|>user\n q\n<|im_end|>\n<|im_start|>assistant\n",
        );
        assert_eq!(
            turns,
            vec![ChatMessage { role: "system".into(), content: "S".into() }, ChatMessage { role: "user".into(), content: "q".into() }]
        );
    }
}
