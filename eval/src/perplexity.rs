//! Perplexity and bits per byte with a sliding window. A window is at most `max_len` input
//! tokens; windows start every `stride` tokens; each token after the first is scored exactly
//! once, by the first window that predicts it, so every token sees at least `max_len - stride`
//! tokens of context (all of them in texts that fit one window). `stride == max_len` gives
//! back-to-back windows; a smaller stride gives more context at more cost. This is the
//! sliding-window recipe of transformers' "Perplexity of fixed-length models" guide, except
//! that no token is left unscored where windows meet.

use anyhow::{bail, Result};

use mm_chat::Tokenizer;
use mm_model::model::{KvCache, Logits, MiniMind};
use mm_dataset::ScoredText;

use mm_model::logprob::token_logprob;

/// Where windows start and how long they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windowing {
    pub max_len: usize,
    pub stride: usize,
}

impl Windowing {
    pub fn new(max_len: usize, stride: usize) -> Result<Self> {
        if max_len == 0 {
            bail!("--max-seq-len 0: a window needs at least one token");
        }
        if stride == 0 || stride > max_len {
            bail!("--stride {stride}: must be between 1 and --max-seq-len ({max_len})");
        }
        Ok(Self { max_len, stride })
    }

    /// The windows of a `len`-token text: (begin, end, first scored position), `end`
    /// exclusive. The input is `begin..end - 1` (at most `max_len` tokens), which predicts
    /// positions `begin + 1..end`; of those, `from..end` are scored by this window.
    pub fn windows(&self, len: usize) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        if len < 2 {
            return out;
        }
        let (mut begin, mut prev_end) = (0, 0);
        loop {
            let end = (begin + self.max_len + 1).min(len);
            out.push((begin, end, prev_end.max(begin + 1)));
            prev_end = end;
            if end == len {
                break;
            }
            begin += self.stride;
        }
        out
    }
}

/// One text's total.
#[derive(Debug, Clone, PartialEq)]
pub struct TextScore {
    /// The file line.
    pub line: u64,
    pub tokens: usize,
    /// Tokens scored.
    pub scored: usize,
    /// Σ −log p over the scored tokens (nats).
    pub nll: f64,
    /// UTF-8 bytes of the scored tokens.
    pub bytes: usize,
    pub windows: usize,
}

/// Bytes each token stands for: an added token's text, a byte-level BPE token's character
/// count (each character of its vocabulary string is one byte).
pub fn token_bytes(tokenizer: &Tokenizer) -> Vec<usize> {
    let n = tokenizer.vocab_size();
    let added = tokenizer.inner().get_added_tokens_decoder();
    (0..n as u32)
        .map(|id| match added.get(&id) {
            Some(t) => t.content.len(),
            None => tokenizer.id_to_token(id).map_or(0, |s| s.chars().count()),
        })
        .collect()
}

/// A window waiting to run: text `t`, ids `begin..end-1` as input, positions `from..end` scored.
struct Pending {
    text: usize,
    begin: usize,
    end: usize,
    from: usize,
}

/// Scores `texts`, running windows in batches of at most `batch_rows` input rows.
/// `progress(texts_done)` is called as texts complete.
pub fn score_texts(
    model: &MiniMind,
    texts: &[ScoredText],
    windowing: Windowing,
    batch_rows: usize,
    bytes: &[usize],
    mut progress: impl FnMut(usize),
) -> Result<Vec<TextScore>> {
    let max_positions = model.config.max_position_embeddings;
    if windowing.max_len > max_positions {
        bail!("--max-seq-len {} is beyond the model's {max_positions} positions", windowing.max_len);
    }
    let mut out: Vec<TextScore> = texts
        .iter()
        .map(|t| TextScore { line: t.line, tokens: t.ids.len(), scored: 0, nll: 0.0, bytes: 0, windows: 0 })
        .collect();
    let mut pending: Vec<Pending> = Vec::new();
    let mut rows = 0;
    let mut done = 0;
    for (i, t) in texts.iter().enumerate() {
        for (begin, end, from) in windowing.windows(t.ids.len()) {
            if !t.scored[from..end].iter().any(|&s| s) {
                continue;
            }
            pending.push(Pending { text: i, begin, end, from });
            rows += end - 1 - begin;
            if rows >= batch_rows {
                run(model, texts, &pending, bytes, &mut out)?;
                pending.clear();
                rows = 0;
            }
        }
        // Texts before the first pending window's are complete.
        let complete = pending.first().map_or(i + 1, |p| p.text);
        if complete > done {
            done = complete;
            progress(done);
        }
    }
    if !pending.is_empty() {
        run(model, texts, &pending, bytes, &mut out)?;
    }
    progress(texts.len());
    Ok(out)
}

fn run(model: &MiniMind, texts: &[ScoredText], windows: &[Pending], bytes: &[usize], out: &mut [TextScore]) -> Result<()> {
    let inputs: Vec<&[u32]> = windows.iter().map(|w| &texts[w.text].ids[w.begin..w.end - 1]).collect();
    let mut caches: Vec<KvCache> = windows.iter().map(|_| KvCache::new(&model.config)).collect();
    let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
    let logits = model.forward_sequences(&inputs, &mut refs, Logits::All)?.to_vec2::<f32>()?;
    let mut row0 = 0;
    for w in windows {
        let t = &texts[w.text];
        let s = &mut out[w.text];
        s.windows += 1;
        for p in w.from..w.end {
            if t.scored[p] {
                let token = t.ids[p];
                let (lp, _) = token_logprob(&logits[row0 + p - 1 - w.begin], token);
                s.nll -= lp;
                s.scored += 1;
                s.bytes += bytes.get(token as usize).copied().unwrap_or(0);
            }
        }
        row0 += w.end - 1 - w.begin;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_position_scored_once_with_the_most_context_a_window_gives() {
        for (len, max_len, stride) in [(10, 4, 4), (10, 4, 2), (10, 4, 1), (4, 4, 4), (5, 4, 3), (2, 8, 8), (1, 8, 8), (300, 64, 48), (7, 1, 1)] {
            let w = Windowing::new(max_len, stride).unwrap();
            let mut seen = vec![0; len];
            for (begin, end, from) in w.windows(len) {
                assert!(end - 1 - begin <= max_len && from > begin);
                for s in &mut seen[from..end] {
                    *s += 1;
                }
            }
            let expect: Vec<usize> = (0..len).map(|p| usize::from(p > 0)).collect();
            assert_eq!(seen, expect, "len {len} max_len {max_len} stride {stride}");
        }
        assert!(Windowing::new(4, 5).is_err() && Windowing::new(4, 0).is_err() && Windowing::new(0, 1).is_err());
    }
}
