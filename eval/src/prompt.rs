//! Prompts and token pairs exactly as lm-evaluation-harness builds them for a
//! `multiple_choice` task, so mm's scores are the ones lm-eval would report.
//!
//! * The context is `description + Σ (shot + target_delimiter + shot's answer +
//!   fewshot_delimiter) + question` (lm-eval's `fewshot_context`, plain text, few-shot examples
//!   the first K of the dev split).
//! * Each option is scored as the continuation `target_delimiter + option`.
//! * The pair is tokenized as lm-eval's `_encode_pair`: trailing whitespace of the context
//!   moves to the continuation, then `continuation = encode(context + continuation)[len(encode(context)):]`.
//!
//! The `letter` method uses lm-eval's C-Eval task (`lm_eval/tasks/ceval`): the options listed
//! under the question, `答案：`, and the letters `A`… as the options scored, so with a
//! one-token letter it is the next-token probability of the letters (MiniMind's method). The
//! `loglikelihood` method asks `question\n答案：` and scores each option's own text.

use anyhow::{bail, Result};

use mm_chat::Tokenizer;

use super::questions::{letter, Question, Subject};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Score the option letters after a prompt that lists the options.
    Letter,
    /// Score each option's text as the continuation.
    Loglikelihood,
}

#[derive(Debug, Clone)]
pub struct PromptStyle {
    pub method: Method,
    pub shots: usize,
    /// Put before everything; `{subject}` becomes the subject's display name.
    pub description: String,
    pub target_delimiter: String,
    pub fewshot_delimiter: String,
}

/// lm-eval's C-Eval description (`_generate_configs.py`).
pub const CEVAL_DESCRIPTION: &str = "以下是中国关于{subject}的单项选择题，请选出其中的正确答案。\n\n";

impl PromptStyle {
    /// The question part of the prompt (lm-eval's `doc_to_text`).
    pub fn question_text(&self, q: &Question) -> String {
        let stem = q.question.trim();
        match self.method {
            Method::Letter => {
                let mut s = format!("{stem}\n");
                for (i, c) in q.choices.iter().enumerate() {
                    s.push_str(&format!("{}. {c}\n", letter(i)));
                }
                s.push_str("答案：");
                s
            }
            Method::Loglikelihood => format!("{stem}\n答案："),
        }
    }

    /// The options as scored (lm-eval's `doc_to_choice`).
    pub fn options(&self, q: &Question) -> Vec<String> {
        match self.method {
            Method::Letter => (0..q.choices.len()).map(letter).collect(),
            Method::Loglikelihood => q.choices.clone(),
        }
    }

    /// The whole context for `q`, few-shot examples from the subject's dev split.
    pub fn context(&self, subject: &Subject, q: &Question) -> Result<String> {
        if self.shots > subject.dev.len() {
            bail!(
                "{}: {} few-shot examples asked, its dev split has {}",
                subject.name,
                self.shots,
                subject.dev.len()
            );
        }
        let mut s = self.description.replace("{subject}", &subject.display_name);
        for shot in &subject.dev[..self.shots] {
            s.push_str(&self.question_text(shot));
            s.push_str(&self.target_delimiter);
            s.push_str(&self.options(shot)[shot.answer]);
            s.push_str(&self.fewshot_delimiter);
        }
        s.push_str(&self.question_text(q));
        Ok(s)
    }
}

/// lm-eval's `_encode_pair`: (context ids, continuation ids).
pub fn encode_pair(tokenizer: &Tokenizer, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    if context.is_empty() {
        bail!("an empty context");
    }
    let kept = context.trim_end_matches(char::is_whitespace);
    let (context, continuation) = (kept, format!("{}{continuation}", &context[kept.len()..]));
    let whole = tokenizer.encode(&format!("{context}{continuation}"), false)?;
    let context_ids = tokenizer.encode(context, false)?;
    let continuation_ids = whole.get(context_ids.len()..).unwrap_or_default().to_vec();
    if continuation_ids.is_empty() {
        bail!("the continuation {continuation:?} adds no token to its context");
    }
    Ok((context_ids, continuation_ids))
}
