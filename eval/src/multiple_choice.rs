//! Multiple-choice accuracy: every question's options scored by log-likelihood after its
//! prompt (see [`super::prompt`]), the prediction the highest (`acc`) and the highest per
//! character of option text (`acc_norm`), both as lm-eval computes them.

use anyhow::{Context, Result};
use serde::Serialize;

use mm_chat::Tokenizer;
use mm_model::model::MiniMind;

use super::loglikelihood::{score, Prefix, Request};
use super::prompt::{encode_pair, PromptStyle};
use super::questions::{letter, Subject};

/// One question's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct QuestionResult {
    pub subject: String,
    pub id: String,
    pub answer: String,
    pub prediction: String,
    pub correct: bool,
    pub correct_norm: bool,
    /// Per option, natural log.
    pub loglikelihoods: Vec<f64>,
    /// Per option: is every token the model's argmax.
    pub greedy: Vec<bool>,
    /// Per option, the raw logit of its first token after the prompt (the letter's logit for
    /// the `letter` method).
    pub first_logits: Vec<f32>,
    pub context_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubjectResult {
    pub subject: String,
    pub questions: usize,
    pub correct: usize,
    pub acc: f64,
    pub acc_norm: f64,
}

/// First index of the maximum (numpy's `argmax`).
fn argmax(xs: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in xs.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// Scores the questions of `subjects` (the first `limit` of each, if given), `batch`
/// questions per forward pass; `progress(n)` after each batch of n questions.
pub fn evaluate(
    model: &MiniMind,
    tokenizer: &Tokenizer,
    subjects: &[Subject],
    style: &PromptStyle,
    limit: Option<usize>,
    batch: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<QuestionResult>> {
    let mut results = Vec::new();
    for subject in subjects {
        let questions = &subject.questions[..limit.unwrap_or(usize::MAX).min(subject.questions.len())];
        // Every question's ids first: the start they share (description, few-shot examples)
        // runs once for the subject.
        let mut requests = Vec::with_capacity(questions.len());
        let mut options = Vec::with_capacity(questions.len());
        for q in questions {
            let context = style.context(subject, q)?;
            let opts = style.options(q);
            let mut request = Request { context: Vec::new(), continuations: Vec::new() };
            for o in &opts {
                let (ctx, cont) = encode_pair(tokenizer, &context, &format!("{}{o}", style.target_delimiter))
                    .with_context(|| q.origin.clone())?;
                // The context's ids do not depend on the option (the split is the same).
                request.context = ctx;
                request.continuations.push(cont);
            }
            requests.push(request);
            options.push(opts);
        }
        let prefix = if requests.len() > 1 {
            Some(Prefix::new(model, Prefix::common(requests.iter().map(|r| r.context.as_slice())))?)
        } else {
            None
        };
        let batch = batch.max(1);
        for (start, chunk) in requests.chunks(batch).enumerate().map(|(i, c)| (i * batch, c)) {
            let scores = score(model, chunk, prefix.as_ref()).with_context(|| format!("subject {}", subject.name))?;
            for (k, (s, r)) in scores.into_iter().zip(chunk).enumerate() {
                let (q, opts) = (&questions[start + k], &options[start + k]);
                let lls: Vec<f64> = s.iter().map(|x| x.loglikelihood).collect();
                let pred = argmax(lls.iter().copied());
                let pred_norm = argmax(lls.iter().zip(opts).map(|(ll, o)| ll / o.chars().count().max(1) as f64));
                results.push(QuestionResult {
                    subject: subject.name.clone(),
                    id: q.id.clone(),
                    answer: letter(q.answer),
                    prediction: letter(pred),
                    correct: pred == q.answer,
                    correct_norm: pred_norm == q.answer,
                    loglikelihoods: lls,
                    greedy: s.iter().map(|x| x.greedy).collect(),
                    first_logits: s.iter().map(|x| x.first_logit).collect(),
                    context_tokens: r.context.len(),
                });
            }
            progress(chunk.len());
        }
    }
    Ok(results)
}

/// Per-subject accuracy, subjects in the order given, and the overall row (all questions).
pub fn summarize(subjects: &[Subject], results: &[QuestionResult]) -> (Vec<SubjectResult>, SubjectResult) {
    let row = |name: &str, rs: &[&QuestionResult]| {
        let n = rs.len();
        let correct = rs.iter().filter(|r| r.correct).count();
        let norm = rs.iter().filter(|r| r.correct_norm).count();
        let frac = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
        SubjectResult { subject: name.to_string(), questions: n, correct, acc: frac(correct), acc_norm: frac(norm) }
    };
    let per: Vec<SubjectResult> = subjects
        .iter()
        .map(|s| row(&s.name, &results.iter().filter(|r| r.subject == s.name).collect::<Vec<_>>()))
        .collect();
    let all = row("overall", &results.iter().collect::<Vec<_>>());
    (per, all)
}
