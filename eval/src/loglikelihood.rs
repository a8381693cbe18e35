//! Log-likelihoods of continuations after a shared context: the context runs once, its cache
//! is copied for each continuation, and all continuations of a batch of requests run as one
//! batch of rows (lm-eval's `loglikelihood` requests, without re-running the context per
//! option). A [`Prefix`] that many contexts start with (a task's description and few-shot
//! examples) runs once and each context continues from a copy of its cache.

use anyhow::{bail, Result};

use mm_model::logprob::token_logprob;
use mm_model::model::{KvCache, Logits, MiniMind};

/// One context and the continuations to score after it.
#[derive(Debug, Clone)]
pub struct Request {
    pub context: Vec<u32>,
    pub continuations: Vec<Vec<u32>>,
}

/// One continuation's score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Σ log p(token | everything before it), natural log.
    pub loglikelihood: f64,
    /// Whether every token is the argmax of its distribution (lm-eval's `is_greedy`).
    pub greedy: bool,
    /// The raw logit of the continuation's first token after the context (for a one-token
    /// letter, the letter's logit).
    pub first_logit: f32,
}

/// Token ids that contexts start with, already run through the model.
pub struct Prefix {
    ids: Vec<u32>,
    cache: KvCache,
}

impl Prefix {
    pub fn new(model: &MiniMind, ids: Vec<u32>) -> Result<Self> {
        let mut cache = KvCache::new(&model.config);
        if !ids.is_empty() {
            model.forward_sequences(&[&ids], &mut [&mut cache], Logits::LastOfEach)?;
        }
        Ok(Self { ids, cache })
    }

    /// The longest start that every context shares, leaving each at least one token of its own.
    pub fn common<'a>(contexts: impl IntoIterator<Item = &'a [u32]>) -> Vec<u32> {
        let mut it = contexts.into_iter();
        let Some(first) = it.next() else { return Vec::new() };
        let (mut len, mut shortest) = (first.len(), first.len());
        for c in it {
            len = first.iter().zip(c).take(len).take_while(|(a, b)| a == b).count();
            shortest = shortest.min(c.len());
        }
        first[..len.min(shortest.saturating_sub(1))].to_vec()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Scores `requests`; contexts longer than the model allows lose tokens on the left (as
/// lm-eval truncates `(context + continuation)[-(max_length + 1):]`). Contexts that start
/// with `prefix` continue from its cache.
pub fn score(model: &MiniMind, requests: &[Request], prefix: Option<&Prefix>) -> Result<Vec<Vec<Score>>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let max_positions = model.config.max_position_embeddings;
    let vocab = model.config.vocab_size;
    let mut contexts: Vec<&[u32]> = Vec::with_capacity(requests.len());
    for r in requests {
        let longest = r.continuations.iter().map(Vec::len).max().unwrap_or(0);
        if longest == 0 || r.continuations.iter().any(Vec::is_empty) || r.context.is_empty() {
            bail!("a request needs a context and non-empty continuations");
        }
        if let Some(&t) = r.context.iter().chain(r.continuations.iter().flatten()).find(|&&t| t as usize >= vocab) {
            bail!("token id {t} is outside the vocabulary ({vocab})");
        }
        if longest > max_positions {
            bail!("a continuation of {longest} tokens is longer than the model's {max_positions} positions");
        }
        let keep = (max_positions + 1 - longest).min(r.context.len());
        contexts.push(&r.context[r.context.len() - keep..]);
    }
    // The contexts, one row of logits each: the distribution of every continuation's first token.
    let mut caches: Vec<KvCache> = Vec::with_capacity(requests.len());
    for c in contexts.iter_mut() {
        match prefix {
            Some(p) if !p.is_empty() && c.len() > p.len() && c.starts_with(&p.ids) => {
                caches.push(p.cache.clone());
                *c = &c[p.len()..];
            }
            _ => caches.push(KvCache::new(&model.config)),
        }
    }
    let first = {
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        model.forward_sequences(&contexts, &mut refs, Logits::LastOfEach)?.to_vec2::<f32>()?
    };
    // The rest of every longer continuation, from a copy of its context's cache.
    let mut tails: Vec<&[u32]> = Vec::new();
    let mut tail_caches: Vec<KvCache> = Vec::new();
    for (r, cache) in requests.iter().zip(&caches) {
        for c in r.continuations.iter().filter(|c| c.len() > 1) {
            tails.push(&c[..c.len() - 1]);
            tail_caches.push(cache.clone());
        }
    }
    let tail_rows = if tails.is_empty() {
        Vec::new()
    } else {
        let mut refs: Vec<&mut KvCache> = tail_caches.iter_mut().collect();
        model.forward_sequences(&tails, &mut refs, Logits::All)?.to_vec2::<f32>()?
    };
    let mut next_tail_row = 0;
    let mut out = Vec::with_capacity(requests.len());
    for (r, first_row) in requests.iter().zip(&first) {
        let mut scores = Vec::with_capacity(r.continuations.len());
        for c in &r.continuations {
            let (mut ll, mut greedy) = token_logprob(first_row, c[0]);
            for &t in &c[1..] {
                let (lp, g) = token_logprob(&tail_rows[next_tail_row], t);
                next_tail_row += 1;
                ll += lp;
                greedy &= g;
            }
            scores.push(Score { loglikelihood: ll, greedy, first_logit: first_row[c[0] as usize] });
        }
        out.push(scores);
    }
    Ok(out)
}
