//! `repetition`: penalises a reply that loops, the usual failure of a tiny policy under RL.
//! The share of its token 3-grams that repeat an earlier one, negated: `-(1 - distinct /
//! total)` over the completion's ids (its final EOS left out). Ids rather than words, so it
//! needs no tokenizer and treats CJK and English alike. Replies under 3 tokens get 0.

use std::collections::HashSet;

const N: usize = 3;

/// The penalty, in (-1, 0].
pub fn repetition_penalty(completion: &[u32], eos: Option<u32>) -> f32 {
    let ids = match (completion.split_last(), eos) {
        (Some((&last, rest)), Some(eos)) if last == eos => rest,
        _ => completion,
    };
    if ids.len() < N {
        return 0.0;
    }
    let grams: Vec<&[u32]> = ids.windows(N).collect();
    let distinct: HashSet<&[u32]> = grams.iter().copied().collect();
    -(1.0 - distinct.len() as f32 / grams.len() as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_replies_are_free_loops_are_not() {
        assert_eq!(repetition_penalty(&[1, 2, 3, 4, 5, 2], Some(2)), 0.0);
        assert_eq!(repetition_penalty(&[7, 8], None), 0.0);
        assert_eq!(repetition_penalty(&[], None), 0.0);
        // 8 tokens of one id: 6 trigrams, 1 distinct.
        assert_eq!(repetition_penalty(&[9; 8], None), -(1.0 - 1.0 / 6.0));
        // a b c a b c: trigrams abc bca cab abc -> 3 distinct of 4.
        assert_eq!(repetition_penalty(&[1, 2, 3, 1, 2, 3, 0], Some(0)), -0.25);
        // The EOS is left out only at the end.
        assert_eq!(repetition_penalty(&[5, 5, 5, 5, 5], Some(5)), -0.5);
    }
}
