//! Log-probabilities as the OpenAI API reports them: of the chosen token under the model's
//! distribution (raw logits, before temperature or penalties, as vLLM does), with the top
//! alternatives — which always include the argmax, since clients (lm-eval's `is_greedy`)
//! compare against it.

pub use mm_model::logprob::log_softmax;

/// One token's log-probability and the `top` most likely tokens at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// (id, logprob), most likely first.
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    /// `id`'s entry in a row of log-probabilities, with the `top` best tokens.
    pub fn of(logprobs: &[f32], id: u32, top: usize) -> Self {
        let logprob = logprobs.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY);
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
        if top > 0 {
            for (i, &lp) in logprobs.iter().enumerate() {
                if best.len() < top || lp > best[best.len() - 1].1 {
                    let at = best.partition_point(|&(_, b)| b >= lp);
                    best.insert(at, (i as u32, lp));
                    best.truncate(top);
                }
            }
        }
        Self { id, logprob, top: best }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_sums_to_one_and_top_holds_the_argmax() {
        let lp = log_softmax(&[1.0, 3.0, 2.0, -5.0]);
        let total: f32 = lp.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        let t = TokenLogprob::of(&lp, 2, 2);
        assert_eq!(t.top.iter().map(|x| x.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(t.logprob, lp[2]);
        assert!(TokenLogprob::of(&lp, 0, 0).top.is_empty());
    }
}
