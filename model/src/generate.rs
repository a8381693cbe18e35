//! Token generation with a KV cache: greedy, or sampling with the logits processors of HF
//! `generate` in its order (repetition penalty, temperature, top-k, top-p), seedable.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::model::{KvCache, MiniMind};

/// Sampling settings; the defaults are upstream `eval_llm.py`'s (temperature 0.85,
/// top-p 0.85, HF's top-k 50, no repetition penalty).
#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: f64,
    /// 0 disables top-k.
    pub top_k: usize,
    pub repetition_penalty: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// Generation stops after emitting any of these.
    pub stop_ids: Vec<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.85,
            top_p: 0.85,
            top_k: 50,
            repetition_penalty: 1.0,
            max_new_tokens: 8192,
            seed: 2026,
            stop_ids: vec![2],
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self { temperature: 0.0, max_new_tokens, stop_ids: Vec::new(), ..Self::default() }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!("temperature must be >= 0, got {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("top_p must be in (0, 1], got {}", self.top_p);
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            bail!("repetition_penalty must be > 0, got {}", self.repetition_penalty);
        }
        Ok(())
    }
}

/// Picks the next token from one row of logits.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Self { params, rng })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// `seen` are all tokens so far (prompt included), for the repetition penalty.
    pub fn sample(&mut self, logits: &[f32], seen: &[u32]) -> u32 {
        let mut scores = logits.to_vec();
        let p = self.params.repetition_penalty as f32;
        if p != 1.0 {
            let mut unique: Vec<u32> = seen.to_vec();
            unique.sort_unstable();
            unique.dedup();
            for id in unique {
                if let Some(s) = scores.get_mut(id as usize) {
                    *s = if *s < 0.0 { *s * p } else { *s / p };
                }
            }
        }
        if self.params.temperature == 0.0 {
            return argmax(&scores);
        }
        let t = self.params.temperature as f32;
        scores.iter_mut().for_each(|s| *s /= t);
        // Highest score first, ties by lower id: the order a stable sort by score gives. With
        // top-k only the k best are sorted, after a linear selection (a full sort of the
        // vocabulary per token was most of a batched rollout step's host time).
        let by_score = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
        let mut order: Vec<usize> = (0..scores.len()).collect();
        if self.params.top_k > 0 && self.params.top_k < order.len() {
            order.select_nth_unstable_by(self.params.top_k - 1, by_score);
            order.truncate(self.params.top_k);
        }
        order.sort_unstable_by(by_score);
        // Softmax over the survivors, then the smallest head whose mass reaches top_p.
        let max = scores[order[0]];
        let weights: Vec<f64> = order.iter().map(|&i| ((scores[i] - max) as f64).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut keep = weights.len();
        let mut cumulative = 0.0;
        for (i, w) in weights.iter().enumerate() {
            cumulative += w / total;
            if cumulative >= self.params.top_p {
                keep = i + 1;
                break;
            }
        }
        let kept_total: f64 = weights[..keep].iter().sum();
        let mut r = self.rng.random::<f64>() * kept_total;
        for (i, w) in weights[..keep].iter().enumerate() {
            r -= w;
            if r <= 0.0 {
                return order[i] as u32;
            }
        }
        order[keep - 1] as u32
    }
}

pub fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u32
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop id was generated (it is the last token), or in the server a stop string.
    Stop,
    /// `max_new_tokens` were generated, or the model's context is full.
    Length,
}

/// One sequence being decoded, one token per forward: what it has seen (the repetition
/// penalty reads all of it), what it has generated and when it must end. The per-step
/// sampling and stop logic of [`generate`] and of batched rollouts
/// (`train::rollout`); the sampler stays outside, so a caller can keep one across turns.
#[derive(Debug, Clone)]
pub struct Sequence {
    seen: Vec<u32>,
    prompt_len: usize,
    max_new: usize,
    stop_ids: Vec<u32>,
}

impl Sequence {
    /// A sequence after `prompt`, which must leave room in the model's `context`;
    /// `max_new_tokens` is capped by that room.
    pub fn new(prompt: &[u32], params: &SamplingParams, context: usize) -> Result<Self> {
        if prompt.is_empty() {
            bail!("empty prompt");
        }
        if prompt.len() >= context {
            bail!("prompt of {} tokens fills the model's {context}-position context", prompt.len());
        }
        Ok(Self {
            seen: prompt.to_vec(),
            prompt_len: prompt.len(),
            max_new: params.max_new_tokens.min(context - prompt.len()),
            stop_ids: params.stop_ids.clone(),
        })
    }

    /// How many new tokens it may generate at most.
    pub fn max_new(&self) -> usize {
        self.max_new
    }

    /// The tokens generated so far (a stop token included).
    pub fn generated(&self) -> &[u32] {
        &self.seen[self.prompt_len..]
    }

    pub fn into_generated(mut self) -> Vec<u32> {
        self.seen.drain(..self.prompt_len);
        self.seen
    }

    /// Samples the next token from `logits` (the model's output after everything seen) and
    /// appends it; `Some` when the sequence is complete with it.
    pub fn push(&mut self, sampler: &mut Sampler, logits: &[f32]) -> (u32, Option<FinishReason>) {
        let token = sampler.sample(logits, &self.seen);
        self.seen.push(token);
        let finish = if self.stop_ids.contains(&token) {
            Some(FinishReason::Stop)
        } else if self.generated().len() >= self.max_new {
            Some(FinishReason::Length)
        } else {
            None
        };
        (token, finish)
    }
}

/// Generates after `prompt`, calling `on_token` for each new token as it is produced
/// (return `false` to stop). Returns the new tokens; a stop token is included.
pub fn generate(
    model: &MiniMind,
    prompt: &[u32],
    sampler: &mut Sampler,
    mut on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<Vec<u32>> {
    let mut seq = Sequence::new(prompt, sampler.params(), model.config.max_position_embeddings)?;
    if seq.max_new() == 0 {
        return Ok(Vec::new());
    }
    let mut cache = KvCache::new(&model.config);
    let mut input = prompt.to_vec();
    loop {
        let ids = Tensor::new(input.as_slice(), model.device())?.unsqueeze(0)?;
        let logits = model.forward_last(&ids, &mut cache)?.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let (token, finish) = seq.push(sampler, &logits);
        if !on_token(token)? || finish.is_some() {
            break;
        }
        input = vec![token];
    }
    Ok(seq.into_generated())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f64, top_k: usize, top_p: f64, penalty: f64) -> Sampler {
        Sampler::new(SamplingParams { temperature, top_k, top_p, repetition_penalty: penalty, ..SamplingParams::default() })
            .unwrap()
    }

    #[test]
    fn greedy_takes_argmax() {
        assert_eq!(sampler(0.0, 50, 1.0, 1.0).sample(&[0.1, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        // 3.0/4 = 0.75 < 1.0, so the penalised token loses to token 2.
        assert_eq!(sampler(0.0, 0, 1.0, 4.0).sample(&[-1.0, 3.0, 1.0], &[1]), 2);
        // -1 * 4 = -4 stays the smallest.
        assert_eq!(sampler(0.0, 0, 1.0, 4.0).sample(&[-1.0, -0.5, -0.6], &[0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_cuts_the_tail() {
        let logits = [1.0, 5.0, 4.9, -3.0];
        let mut s = sampler(1.0, 1, 1.0, 1.0);
        assert!((0..50).all(|_| s.sample(&logits, &[]) == 1));
        // top_p tiny keeps only the most likely token.
        let mut s = sampler(1.0, 0, 0.01, 1.0);
        assert!((0..50).all(|_| s.sample(&logits, &[]) == 1));
        // With everything allowed both near-equal tokens appear.
        let mut s = sampler(1.0, 0, 1.0, 1.0);
        let picks: Vec<u32> = (0..200).map(|_| s.sample(&logits, &[])).collect();
        assert!(picks.contains(&1) && picks.contains(&2));
    }

    #[test]
    fn top_k_keeps_the_k_best_with_ties_to_the_lower_id() {
        // Three tied best scores; k = 2 keeps ids 1 and 2 (a stable sort's order), never 3.
        let logits = [1.0, 2.0, 2.0, 2.0, 0.5, -1.0, 2.0];
        let mut s = sampler(1.0, 2, 1.0, 1.0);
        let picks: Vec<u32> = (0..300).map(|_| s.sample(&logits, &[])).collect();
        assert!(picks.contains(&1) && picks.contains(&2), "{picks:?}");
        assert!(picks.iter().all(|&p| p == 1 || p == 2), "{picks:?}");
        // With top_p tiny, the first of the order: the lowest tied id.
        let mut s = sampler(1.0, 4, 0.01, 1.0);
        assert!((0..50).all(|_| s.sample(&logits, &[]) == 1));
        // k beyond the vocabulary keeps everything.
        let mut s = sampler(1.0, 100, 1.0, 1.0);
        let picks: std::collections::HashSet<u32> = (0..2000).map(|_| s.sample(&logits, &[])).collect();
        assert_eq!(picks.len(), logits.len());
    }

    #[test]
    fn sequence_stops_at_a_stop_id_or_the_limit() {
        let params = SamplingParams { stop_ids: vec![1], ..SamplingParams::greedy(3) };
        let mut s = Sampler::new(params.clone()).unwrap();
        let mut seq = Sequence::new(&[7, 8], &params, 100).unwrap();
        assert_eq!(seq.push(&mut s, &[0.0, 0.0, 1.0]), (2, None));
        assert_eq!(seq.push(&mut s, &[0.0, 1.0, 0.0]), (1, Some(FinishReason::Stop)));
        assert_eq!(seq.generated(), &[2, 1]);
        // The context caps max_new_tokens: 2 positions left after a 3-token prompt in 5.
        let mut seq = Sequence::new(&[7, 8, 9], &params, 5).unwrap();
        assert_eq!(seq.max_new(), 2);
        assert_eq!(seq.push(&mut s, &[0.0, 0.0, 1.0]).1, None);
        assert_eq!(seq.push(&mut s, &[0.0, 0.0, 1.0]).1, Some(FinishReason::Length));
        assert_eq!(seq.into_generated(), vec![2, 2]);
        assert!(Sequence::new(&[], &params, 5).is_err());
        assert!(Sequence::new(&[1; 5], &params, 5).is_err());
    }

    #[test]
    fn same_seed_same_samples() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = || {
            let mut s = sampler(1.0, 0, 0.95, 1.0);
            (0..20).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
