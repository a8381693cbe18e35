//! Rule rewards for RLAIF (`--reward rule:NAME[,NAME…]`): scores computed from a reply
//! alone, summed over the chosen rules. One rule per file:
//!
//! | name         | range       | what it scores |
//! |--------------|-------------|----------------|
//! | `reasoning`  | [0, 1.5]    | upstream's `<think>/<answer>` layout (0.5) and tags (0.25 each) |
//! | `length`     | [-1, 0]     | DAPO's soft overlong penalty near `max_new_tokens` |
//! | `repetition` | (-1, 0]     | the share of repeated token 3-grams |
//!
//! Every source of a run (rule sets here; reward models and remote scorers elsewhere) is a
//! [`Scorer`]; a [`Rewarder`] sums them.

pub mod length;
pub mod reasoning;
pub mod repetition;
pub mod scorer;

use anyhow::{bail, Result};

pub use length::length_penalty;
pub use reasoning::reasoning_reward;
pub use repetition::repetition_penalty;
pub use scorer::{Rewarder, Scored, Scorer};

/// What a rule sees of one sampled completion.
#[derive(Debug, Clone, Copy)]
pub struct RewardInput<'a> {
    /// The prompt as rendered with the chat template (generation prompt included), as
    /// upstream's `calculate_rewards` receives it.
    pub prompt: &'a str,
    /// The reply as upstream scores it: the completion decoded with special tokens skipped.
    pub reply: &'a str,
    /// The completion's ids; its EOS, when generated, is the last.
    pub completion: &'a [u32],
    /// The EOS id (left out of the repetition count).
    pub eos: u32,
    /// The sampling limit the completion was drawn under.
    pub max_new_tokens: usize,
}

/// One rule reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    Reasoning,
    Length,
    Repetition,
}

impl Rule {
    pub const ALL: [Rule; 3] = [Rule::Reasoning, Rule::Length, Rule::Repetition];

    pub fn name(self) -> &'static str {
        match self {
            Rule::Reasoning => "reasoning",
            Rule::Length => "length",
            Rule::Repetition => "repetition",
        }
    }

    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.name() == name)
    }

    pub fn score(self, input: &RewardInput) -> f32 {
        match self {
            Rule::Reasoning => reasoning_reward(input.reply),
            Rule::Length => length_penalty(input.completion.len(), input.max_new_tokens),
            Rule::Repetition => repetition_penalty(input.completion, Some(input.eos)),
        }
    }
}

/// The rules a run scores with, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

impl RuleSet {
    /// Parses one `--reward` value, `rule:NAME[,NAME…]`.
    pub fn parse(spec: &str) -> Result<RuleSet> {
        let mut set = RuleSet::default();
        set.add_spec(spec)?;
        Ok(set)
    }

    /// Parses every `--reward` value of a command line into one set.
    pub fn parse_all<S: AsRef<str>>(specs: &[S]) -> Result<RuleSet> {
        let mut set = RuleSet::default();
        for spec in specs {
            set.add_spec(spec.as_ref())?;
        }
        Ok(set)
    }

    fn add_spec(&mut self, spec: &str) -> Result<()> {
        let Some(names) = spec.trim().strip_prefix("rule:") else {
            bail!("reward `{spec}`: expected `rule:NAME[,NAME...]` (rules: {})", known());
        };
        for name in names.split(',').map(str::trim) {
            if name.is_empty() {
                bail!("reward `{spec}`: empty rule name (rules: {})", known());
            }
            let Some(rule) = Rule::from_name(name) else {
                bail!("reward `{spec}`: unknown rule `{name}` (rules: {})", known());
            };
            if self.rules.contains(&rule) {
                bail!("reward `{spec}`: rule `{name}` given twice");
            }
            self.rules.push(rule);
        }
        Ok(())
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Each rule's score, in the set's order (for per-rule metrics).
    pub fn scores(&self, input: &RewardInput) -> Vec<f32> {
        self.rules.iter().map(|r| r.score(input)).collect()
    }

    /// The summed reward of one completion.
    pub fn score(&self, input: &RewardInput) -> f32 {
        self.scores(input).iter().sum()
    }
}

fn known() -> String {
    Rule::ALL.map(Rule::name).join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(RuleSet::parse("rule:reasoning").unwrap().rules(), &[Rule::Reasoning]);
        assert_eq!(RuleSet::parse(" rule:length, repetition ").unwrap().rules(), &[Rule::Length, Rule::Repetition]);
        let all = RuleSet::parse_all(&["rule:reasoning", "rule:length,repetition"]).unwrap();
        assert_eq!(all.rules(), &Rule::ALL);
        assert!(RuleSet::parse_all::<&str>(&[]).unwrap().is_empty());
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |spec: &str| RuleSet::parse(spec).unwrap_err().to_string();
        assert!(err("rule:reasonin").contains("unknown rule `reasonin` (rules: reasoning, length, repetition)"));
        assert!(err("reasoning").contains("expected `rule:NAME"));
        assert!(err("model:rm").contains("expected `rule:NAME"));
        assert!(err("rule:").contains("empty rule name"));
        assert!(err("rule:reasoning,,length").contains("empty rule name"));
        assert!(err("rule:length,length").contains("given twice"));
        let twice = RuleSet::parse_all(&["rule:length", "rule:length"]).unwrap_err().to_string();
        assert!(twice.contains("given twice"));
    }

    #[test]
    fn scores_sum_over_rules() {
        let reply = "<think>\nx\n</think>\n<answer>\ny\n</answer>";
        // 8 tokens, the last the EOS, limit 8: the length rule gives -1 at the limit.
        let completion = [5, 6, 7, 5, 6, 7, 5, 2];
        let input = RewardInput { prompt: "", reply, completion: &completion, eos: 2, max_new_tokens: 8 };
        let set = RuleSet::parse("rule:reasoning,length,repetition").unwrap();
        // trigrams of 5 6 7 5 6 7 5: 567 675 756 567 675 -> 3 distinct of 5.
        assert_eq!(set.scores(&input), vec![1.5, -1.0, -(1.0 - 3.0 / 5.0)]);
        assert!((set.score(&input) - 0.1).abs() < 1e-6);
    }
}
