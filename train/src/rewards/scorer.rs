//! Every reward source of a run behind one interface: rule sets now, reward models and remote
//! scorers beside them. A run's reward is the sum of its sources' scores.

use anyhow::{bail, ensure, Result};

use super::{RewardInput, RuleSet};

/// A reward source: scores a batch of sampled completions, one value per input.
pub trait Scorer: Send {
    /// A short name for the metrics columns and messages (`rule:reasoning`, …).
    fn name(&self) -> String;
    /// One score per input, in order.
    fn score(&mut self, batch: &[RewardInput]) -> Result<Vec<f32>>;
}

impl Scorer for RuleSet {
    fn name(&self) -> String {
        format!("rule:{}", self.rules().iter().map(|r| r.name()).collect::<Vec<_>>().join(","))
    }

    fn score(&mut self, batch: &[RewardInput]) -> Result<Vec<f32>> {
        Ok(batch.iter().map(|input| RuleSet::score(self, input)).collect())
    }
}

/// The scores of one batch: each source's, and their sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// (source name, one score per input).
    pub per_source: Vec<(String, Vec<f32>)>,
    /// Σ over the sources, in f32, in the sources' order.
    pub total: Vec<f32>,
}

/// The reward sources of a run, summed.
#[derive(Default)]
pub struct Rewarder {
    sources: Vec<Box<dyn Scorer>>,
}

impl Rewarder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, source: Box<dyn Scorer>) {
        self.sources.push(source);
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    pub fn names(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.name()).collect()
    }

    /// Scores `batch` with every source; a source's error names it, and a source returning
    /// the wrong number of scores or a non-finite one is an error (not a silent 0).
    pub fn score(&mut self, batch: &[RewardInput]) -> Result<Scored> {
        if self.sources.is_empty() {
            bail!("no reward source configured");
        }
        let mut total = vec![0f32; batch.len()];
        let mut per_source = Vec::with_capacity(self.sources.len());
        for source in &mut self.sources {
            let name = source.name();
            let scores = source.score(batch).map_err(|e| e.context(format!("reward source {name}")))?;
            ensure!(scores.len() == batch.len(), "reward source {name} gave {} scores for {} completions", scores.len(), batch.len());
            if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
                bail!("reward source {name} gave a non-finite score ({}) for completion {i}", scores[i]);
            }
            total.iter_mut().zip(&scores).for_each(|(t, s)| *t += s);
            per_source.push((name, scores));
        }
        Ok(Scored { per_source, total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<f32>);

    impl Scorer for Fixed {
        fn name(&self) -> String {
            "fixed".into()
        }
        fn score(&mut self, _batch: &[RewardInput]) -> Result<Vec<f32>> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn sources_are_summed_and_checked() {
        let good = "<think>\nx\n</think>\n<answer>\ny\n</answer>";
        let inputs = [
            RewardInput { prompt: "p", reply: good, completion: &[5, 2], eos: 2, max_new_tokens: 8 },
            RewardInput { prompt: "p", reply: "y", completion: &[5, 2], eos: 2, max_new_tokens: 8 },
        ];
        let mut r = Rewarder::new();
        assert!(r.score(&inputs).is_err());
        r.add(Box::new(RuleSet::parse("rule:reasoning").unwrap()));
        r.add(Box::new(Fixed(vec![0.25, -1.0])));
        let s = r.score(&inputs).unwrap();
        assert_eq!(s.total, vec![1.75, -1.0]);
        assert_eq!(s.per_source[0], ("rule:reasoning".to_string(), vec![1.5, 0.0]));
        r.add(Box::new(Fixed(vec![0.0])));
        assert!(r.score(&inputs).unwrap_err().to_string().contains("gave 1 scores for 2"));
        let mut r = Rewarder::new();
        r.add(Box::new(Fixed(vec![f32::NAN, 0.0])));
        assert!(r.score(&inputs).unwrap_err().to_string().contains("non-finite"));
    }
}
