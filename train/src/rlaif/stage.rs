//! The RL stages (`mm train grpo|spo|ppo`) as an [`Objective`] of the shared trainer: each
//! micro-step samples rollouts of its prompts with the current policy
//! ([`sample_rollouts`]), scores them with the run's reward sources ([`Rewarder`]) and returns
//! the algorithm's loss; the trainer does the backward pass, clipping, AdamW, the schedule
//! (torch's `CosineAnnealingLR`, as upstream's RL trainers), metrics, saves and resume.
//!
//! What the stage owns itself: the frozen reference model, the rollout seeds (derived from the
//! run's seed and the micro-step, so a resumed run samples what an uninterrupted one would),
//! SPO's value tracker, and PPO's critic (trunk + value head, its own AdamW, learning rate and
//! clipping) and old actor (refreshed from the actor every `update_old_actor_freq` steps, as
//! upstream). All of it goes into the resume checkpoint.
//!
//! By default mm runs the corrected forms of upstream's quirks (see [`super`]): GRPO/SPO
//! log-probs are computed with the prompts' left pads masked out, PPO counts and decodes the
//! response from the padded prompt width and reads the critic's value at each row's last real
//! token, and the critic reads the trunk's output once. `upstream_quirks` reproduces upstream.

use anyhow::{bail, ensure, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use mm_dataset::RlaifBatch;
use serde::{Deserialize, Serialize};

use super::critic::Critic;
use super::grpo::{group_advantages_over, grpo_loss};
use super::logprobs::{completion_log_probs, next_token_log_probs};
use super::ppo::{fixed_first_labels, ppo_loss, ppo_masks, upstream_prompt_lengths, values_at, PpoConfig};
use super::spo::{spo_advantages, spo_loss, ValueTracker};
use mm_chat::Tokenizer;
use mm_converters::{Checkpoint, Provenance};
use mm_model::model::{MiniMind, Mode};
use crate::adamw::{AdamW, AdamWConfig};
use crate::objective::{LossParts, Objective, ObjectiveState, StepUpdate};
use crate::params::TrainableModel;
use crate::rewards::{RewardInput, Rewarder};
use crate::rollout::{row_seed, sample_rollouts_at, upstream_params, Rollouts};
use crate::step::clip_coefficient_on_device;

/// Which RL algorithm a stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Grpo,
    Spo,
    Ppo,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Grpo => "grpo",
            Algorithm::Spo => "spo",
            Algorithm::Ppo => "ppo",
        }
    }
}

/// The settings of an RL stage (upstream's argparse flags).
#[derive(Debug, Clone)]
pub struct RlConfig {
    pub algorithm: Algorithm,
    /// Samples per prompt (GRPO's `num_generations`; SPO and PPO sample one).
    pub num_generations: usize,
    /// New tokens per sample at most (`max_gen_len`).
    pub max_gen_len: usize,
    /// Prompt tokens kept (`max_seq_len`): a longer prompt keeps its last ones.
    pub max_prompt_len: usize,
    /// GRPO/SPO's KL weight.
    pub beta: f64,
    pub ppo: PpoConfig,
    pub update_old_actor_freq: u64,
    /// The critic's peak learning rate (it follows the actor's schedule).
    pub critic_lr: f64,
    pub grad_clip: f64,
    pub seed: u64,
    /// The compute dtype of the critic and the reference (the actor's is the trainer's).
    pub compute: DType,
    /// Reproduce upstream's quirks instead of the fixes (module docs).
    pub upstream_quirks: bool,
}

impl RlConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.max_gen_len >= 1, "--max-gen-len 0: every sample needs at least one new token");
        ensure!(self.max_prompt_len >= 1, "--max-seq-len 0: prompts keep at least one token");
        match self.algorithm {
            Algorithm::Grpo => ensure!(
                self.num_generations >= 2,
                "--num-generations {}: GRPO normalises rewards within each prompt's group, which needs at least 2 samples",
                self.num_generations
            ),
            _ => ensure!(self.num_generations == 1, "{} samples one completion per prompt", self.algorithm.name()),
        }
        for (flag, v) in [("--beta", self.beta), ("--vf-coef", self.ppo.vf_coef), ("--kl-coef", self.ppo.kl_coef)] {
            ensure!(v.is_finite() && v >= 0.0, "{flag} {v}: must be a finite number >= 0");
        }
        ensure!(
            self.ppo.clip_epsilon.is_finite() && self.ppo.clip_epsilon > 0.0 && self.ppo.clip_epsilon < 1.0,
            "--clip-epsilon {}: must be in (0, 1)",
            self.ppo.clip_epsilon
        );
        ensure!(self.update_old_actor_freq >= 1, "--update-old-actor-freq 0: pass at least 1");
        ensure!(self.critic_lr.is_finite() && self.critic_lr > 0.0, "--critic-lr {}: must be a finite number above 0", self.critic_lr);
        Ok(())
    }
}

/// PPO's critic and old actor.
struct PpoParts {
    /// The critic's trunk weights (its `lm_head` unused).
    critic: TrainableModel,
    value_weight: Var,
    value_bias: Var,
    optimizer: AdamW,
    grads: Vec<Option<Tensor>>,
    /// The actor's weights at the last refresh, and the model over them.
    old_weights: Checkpoint,
    old_actor: MiniMind,
}

impl PpoParts {
    fn vars(&self) -> Vec<&Var> {
        let mut v = self.critic.trainable_vars();
        v.push(&self.value_weight);
        v.push(&self.value_bias);
        v
    }

    fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.critic.trainable.iter().map(|(name, _)| format!("critic.{name}")).collect();
        n.push("critic.value_head.weight".into());
        n.push("critic.value_head.bias".into());
        n
    }
}

/// What the stage saves besides the trainer's files (`objective.json`).
#[derive(Serialize, Deserialize)]
struct SavedState {
    algorithm: Algorithm,
    tracker: Option<ValueTracker>,
    critic_optimizer_step: Option<u64>,
}

pub struct RlStage {
    cfg: RlConfig,
    tokenizer: Tokenizer,
    eos: u32,
    pad: u32,
    reference: MiniMind,
    rewarder: Rewarder,
    /// Metric names of the reward sources (`reward/<name>`), made once.
    source_columns: Vec<&'static str>,
    step_seed: u64,
    /// Data parallel: where this rank's prompts start in the global batch, and whether this
    /// rank holds only a stand-in row this step.
    first_row: usize,
    stand_in: bool,
    tracker: Option<ValueTracker>,
    ppo: Option<PpoParts>,
}

/// nn.Linear's default init, U(−1/√in, 1/√in), from a seed (reproducible on every device).
fn uniform(n: usize, bound: f32, seed: u64) -> Vec<f32> {
    (0..n).map(|i| ((row_seed(seed, i) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound).collect()
}

fn scalar(v: f64, device: &Device) -> Result<Tensor> {
    Ok(Tensor::new(v as f32, device)?)
}

impl RlStage {
    /// `start` is the checkpoint the run started from: the frozen reference, and for PPO the
    /// critic's trunk and the first old actor (a resumed run restores both from its state).
    pub fn new(cfg: RlConfig, start: &Checkpoint, tokenizer: Tokenizer, rewarder: Rewarder, device: &Device) -> Result<Self> {
        cfg.validate()?;
        ensure!(!rewarder.is_empty(), "no reward source: pass --reward rule:NAME, --reward-model DIR or --reward-url URL");
        let eos = tokenizer.eos_id().context("the tokenizer has no eos token (rollouts end at it)")?;
        let pad = tokenizer.pad_id().context("the tokenizer has no pad token")?;
        let reference = MiniMind::from_checkpoint(start, cfg.compute, device)?;
        let source_columns = rewarder.names().into_iter().map(|n| &*Box::leak(format!("reward/{n}").into_boxed_str())).collect();
        let tracker = (cfg.algorithm == Algorithm::Spo).then(ValueTracker::default);
        let ppo = match cfg.algorithm {
            Algorithm::Ppo => {
                let critic = TrainableModel::from_checkpoint(start, device)?;
                let h = critic.config.hidden_size;
                let bound = 1.0 / (h as f32).sqrt();
                let value_weight = Var::from_vec(uniform(h, bound, cfg.seed ^ 0xC417_1C00), (1, h), device)?;
                let value_bias = Var::from_vec(uniform(1, bound, cfg.seed ^ 0xB1A5), 1, device)?;
                let mut vars = critic.trainable_vars();
                vars.push(&value_weight);
                vars.push(&value_bias);
                let optimizer = AdamW::new(AdamWConfig::default(), vars.into_iter())?;
                let grads = vec![None; critic.trainable.len() + 2];
                let old_actor = MiniMind::from_checkpoint(start, cfg.compute, device)?;
                Some(PpoParts { critic, value_weight, value_bias, optimizer, grads, old_weights: start.clone(), old_actor })
            }
            _ => None,
        };
        Ok(Self { cfg, tokenizer, eos, pad, reference, rewarder, source_columns, step_seed: 0, first_row: 0, stand_in: false, tracker, ppo })
    }

    /// The prompts' ids: each rendered prompt encoded without special tokens, keeping its last
    /// `max_prompt_len` (upstream's `input_ids[:, -max_seq_len:]`).
    fn encode_prompts(&self, batch: &RlaifBatch) -> Result<Vec<Vec<u32>>> {
        batch
            .prompts
            .iter()
            .zip(&batch.lines)
            .map(|(p, line)| {
                let ids = self.tokenizer.encode(p, false).with_context(|| format!("encoding the prompt of line {line}"))?;
                ensure!(!ids.is_empty(), "line {line}: the prompt encodes to no tokens");
                Ok(ids[ids.len().saturating_sub(self.cfg.max_prompt_len)..].to_vec())
            })
            .collect()
    }

    /// The summed reward of every row and the per-source means (logged).
    fn score(&mut self, batch: &RlaifBatch, replies: &[String], rollouts: &Rollouts, device: &Device) -> Result<(Vec<f32>, Vec<(&'static str, Tensor)>)> {
        let inputs: Vec<RewardInput> = rollouts
            .rows
            .iter()
            .zip(replies)
            .map(|(r, reply)| RewardInput {
                prompt: &batch.prompts[r.prompt],
                reply,
                completion: &r.completion,
                eos: self.eos,
                max_new_tokens: self.cfg.max_gen_len,
            })
            .collect();
        let scored = self.rewarder.score(&inputs)?;
        let mut logged = Vec::new();
        if scored.per_source.len() > 1 {
            for ((_, scores), name) in scored.per_source.iter().zip(&self.source_columns) {
                logged.push((*name, scalar(mean(scores), device)?));
            }
        }
        Ok((scored.total, logged))
    }

    /// The replies as upstream scores them: the completion decoded, special tokens skipped.
    fn decode(&self, rollouts: &Rollouts) -> Result<Vec<String>> {
        rollouts.rows.iter().map(|r| self.tokenizer.decode(&r.completion, true)).collect()
    }

    fn grpo_spo(&mut self, model: &MiniMind, batch: &RlaifBatch, device: &Device) -> Result<LossParts> {
        let prompts = self.encode_prompts(batch)?;
        let n = self.cfg.num_generations;
        let params = upstream_params(self.cfg.max_gen_len, self.step_seed);
        // A fresh copy: the batched decode's weight copies of the trainer's model were made
        // before the last optimizer steps changed its weights in place.
        let rollouts = sample_rollouts_at(&model.with_fresh_caches(), &prompts, n, &params, self.eos, self.first_row)?;
        let replies = self.decode(&rollouts)?;
        let (rewards, mut logged) = self.score(batch, &replies, &rollouts, device)?;

        let (ids, p) = rollouts.left_padded_sequences(&prompts, self.pad)?;
        let r = rollouts.width();
        let rows = rollouts.rows.len();
        let outputs = Tensor::from_vec(ids, (rows, p + r), device)?;
        // Upstream passes no attention mask (pads attended to); the fix masks the left pads.
        let padding = if self.cfg.upstream_quirks {
            None
        } else {
            let mut m = Vec::with_capacity(rows * (p + r));
            for row in &rollouts.rows {
                let len = prompts[row.prompt].len();
                m.extend(std::iter::repeat_n(0f32, p - len));
                m.extend(std::iter::repeat_n(1f32, len + r));
            }
            Some(Tensor::from_vec(m, (rows, p + r), device)?)
        };
        let lp = completion_log_probs(model, &outputs, padding.as_ref(), r, Mode::Training)?;
        let ref_lp = completion_log_probs(&self.reference, &outputs, padding.as_ref(), r, Mode::Inference)?.detach();
        let (_, mask) = rollouts.tensors(self.pad, device)?;
        let rewards_t = Tensor::from_slice(&rewards, rows, device)?;

        let (loss, kl, advantages) = match self.cfg.algorithm {
            Algorithm::Grpo => {
                let adv = group_advantages_over(&rewards_t, n, self.global_batch())?.advantages;
                let out = grpo_loss(&lp, &ref_lp, &adv, &mask, self.cfg.beta, 1)?;
                let kl = (out.per_token_kl.detach() * &mask)?.sum_all()?.div(&(mask.sum_all()? + 1e-8)?)?;
                (out.loss, kl, adv)
            }
            Algorithm::Spo => {
                let global = self.global_batch();
                let tracker = self.tracker.as_mut().context("SPO without its value tracker")?;
                let baselines = tracker.baselines(rows, device)?;
                let adv = spo_advantages(&rewards_t, &baselines)?;
                let out = spo_loss(&lp, &ref_lp, &adv.advantages, &mask, self.cfg.beta, 1)?;
                let update = tracker.update_over(&rewards_t, Some((&lp.detach(), &mask)), global)?;
                logged.push(("baseline", baselines.mean_all()?));
                logged.push(("rho", scalar(update.rho, device)?));
                (out.loss, out.kl, adv.advantages)
            }
            Algorithm::Ppo => bail!("PPO runs its own step"),
        };
        let lengths: Vec<f32> = rollouts.lengths().iter().map(|&l| l as f32).collect();
        let mut parts = vec![
            ("reward", scalar(mean(&rewards), device)?),
            ("kl", kl),
            ("adv_mean", advantages.mean_all()?),
            ("adv_std", std(&advantages, self.global_batch())?),
            ("resp_len", scalar(mean(&lengths), device)?),
        ];
        parts.append(&mut logged);
        Ok(LossParts { loss, logged: parts })
    }

    fn ppo(&mut self, model: &MiniMind, batch: &RlaifBatch, device: &Device) -> Result<LossParts> {
        let prompts = self.encode_prompts(batch)?;
        let params = upstream_params(self.cfg.max_gen_len, self.step_seed);
        let rollouts = sample_rollouts_at(&model.with_fresh_caches(), &prompts, 1, &params, self.eos, self.first_row)?;
        let (ids, p) = rollouts.left_padded_sequences(&prompts, self.pad)?;
        let rows = rollouts.rows.len();
        let t = p + rollouts.width();
        let gen_out = Tensor::from_vec(ids.clone(), (rows, t), device)?;
        let prompt_mask: Vec<u32> = prompts.iter().flat_map(|q| std::iter::repeat_n(0, p - q.len()).chain(std::iter::repeat_n(1, q.len()))).collect();
        let prompt_mask = Tensor::from_vec(prompt_mask, (rows, p), device)?;
        let quirks = self.cfg.upstream_quirks;
        let (first_labels, replies) = if quirks {
            // Upstream decodes each response from the row's unpadded prompt length (into the
            // prompt of a padded row) and counts labels from there.
            let lengths = upstream_prompt_lengths(&prompt_mask)?;
            let replies = lengths
                .iter()
                .enumerate()
                .map(|(i, &l)| self.tokenizer.decode(&ids[i * t + l..(i + 1) * t], true))
                .collect::<Result<Vec<_>>>()?;
            (lengths, replies)
        } else {
            (fixed_first_labels(&prompt_mask)?, self.decode(&rollouts)?)
        };
        let (rewards, mut logged) = self.score(batch, &replies, &rollouts, device)?;
        let rewards_t = Tensor::from_slice(&rewards, rows, device)?;

        let masks = ppo_masks(&gen_out, &first_labels, self.pad)?;
        let full_mask = &masks.full_mask;
        let parts = self.ppo.as_ref().context("PPO without its critic")?;
        let critic_model = parts.critic.model_for(self.cfg.compute)?;
        let mut critic = Critic::upstream(
            critic_model.into_owned(),
            parts.value_weight.as_tensor().clone(),
            parts.value_bias.as_tensor().clone(),
        )?;
        critic.double_norm = quirks;
        let values_seq = critic.forward(&gen_out, Some(full_mask), Mode::Training)?.values;
        let index = if quirks { &masks.last_indices } else { &masks.last_real };
        let values = values_at(&values_seq, index)?;
        let actor = next_token_log_probs(model, &gen_out, Some(full_mask), Mode::Training)?;
        let old = next_token_log_probs(&parts.old_actor, &gen_out, Some(full_mask), Mode::Inference)?.detach();
        let reference = next_token_log_probs(&self.reference, &gen_out, Some(full_mask), Mode::Inference)?.detach();
        let out = ppo_loss(&actor, &old, &reference, &masks.final_mask, &values, &rewards_t, &self.cfg.ppo)?;

        let lengths: Vec<f32> = rollouts.lengths().iter().map(|&l| l as f32).collect();
        let mut parts = vec![
            ("reward", scalar(mean(&rewards), device)?),
            ("kl", out.kl.detach()),
            ("kl_ref", out.kl_ref.detach()),
            ("adv_mean", out.advantages.mean_all()?),
            ("adv_std", std(&out.advantages, self.global_batch())?),
            ("resp_len", scalar(mean(&lengths), device)?),
            ("policy_loss", out.policy_loss.detach()),
            ("value_loss", out.value_loss.detach()),
        ];
        parts.append(&mut logged);
        Ok(LossParts { loss: out.loss, logged: parts })
    }
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len().max(1) as f64
}

/// The unbiased std of a [n] tensor (0 for one value); data parallel, of the global batch's
/// rows (a weighted mean of the ranks' stds would not be it).
fn std(t: &Tensor, global: Option<crate::distributed::GlobalBatch>) -> Result<Tensor> {
    let gathered;
    let t = match global {
        Some(g) => {
            gathered = g.gather_rows(t)?;
            &gathered
        }
        None => t,
    };
    if t.dim(0)? < 2 {
        return Ok(t.zeros_like()?.sum_all()?);
    }
    Ok(t.var_keepdim(0)?.sqrt()?.squeeze(0)?)
}

impl RlStage {
    /// Data parallel: this step's global batch (None in one process).
    fn global_batch(&self) -> Option<crate::distributed::GlobalBatch<'static>> {
        crate::distributed::current().map(|p| p.global_batch(self.stand_in))
    }
}

impl Objective for RlStage {
    type Batch = RlaifBatch;

    fn loss(&mut self, model: &MiniMind, batch: &RlaifBatch, device: &Device) -> Result<LossParts> {
        match self.cfg.algorithm {
            Algorithm::Ppo => self.ppo(model, batch, device),
            _ => self.grpo_spo(model, batch, device),
        }
    }

    /// Rows (prompts): every RL loss is a mean over rows, so data-parallel ranks weigh their
    /// share by them.
    fn tokens(&self, batch: &RlaifBatch) -> usize {
        batch.prompts.len()
    }

    fn begin_step(&mut self, micro_step: u64, batch: &mm_dataset::BatchInfo) -> Result<()> {
        // The same step seed on every rank; each row's stream follows its place in the global
        // batch (`sample_rollouts_at`), so N ranks sample what one process would.
        self.step_seed = row_seed(row_seed(self.cfg.seed, 0), micro_step as usize);
        (self.first_row, self.stand_in) = (batch.first_row, batch.stand_in);
        Ok(())
    }

    fn collect_gradients(&mut self, grads: &GradStore) -> Result<()> {
        if let Some(parts) = &mut self.ppo {
            let vars = parts.vars();
            let new: Vec<Option<Tensor>> = vars.iter().map(|v| grads.get(v.as_tensor()).cloned()).collect();
            let mut acc = std::mem::take(&mut parts.grads);
            crate::step::accumulate(&mut acc, new)?;
            parts.grads = acc;
        }
        Ok(())
    }

    fn after_step(&mut self, model: &TrainableModel, update: Option<&StepUpdate>, step_in_epoch: u64) -> Result<()> {
        let Some(parts) = &mut self.ppo else { return Ok(()) };
        if let Some(u) = update {
            // Data parallel: the critic's gradients are summed over the ranks as the actor's
            // (each rank's loss already carries its share of the global batch).
            if let Some(p) = crate::distributed::current() {
                p.all_reduce_grads(&mut parts.grads)?;
            }
            // The critic's own clip and AdamW step, on the actor's schedule scaled to its lr.
            let (_, clip) = clip_coefficient_on_device(&parts.grads, self.cfg.grad_clip)?;
            let lr = u.lr * self.cfg.critic_lr / u.peak_lr;
            let vars: Vec<Var> = parts.vars().into_iter().cloned().collect();
            let vars: Vec<&Var> = vars.iter().collect();
            parts.optimizer.step_scaled(&vars, &parts.grads, lr, Some(&clip))?;
            parts.grads.iter_mut().for_each(|g| *g = None);
        }
        // Upstream: `if (step + 1) % update_old_actor_freq == 0`, whether or not it stepped.
        if (step_in_epoch + 1) % self.cfg.update_old_actor_freq == 0 {
            parts.old_weights = model.to_checkpoint(DType::F32, Provenance::new("mm train ppo old actor", std::path::Path::new("-")))?;
            parts.old_actor = MiniMind::from_checkpoint(&parts.old_weights, self.cfg.compute, &model.device)?;
        }
        Ok(())
    }

    fn state(&self) -> Result<Option<ObjectiveState>> {
        let mut tensors = Vec::new();
        if let Some(parts) = &self.ppo {
            // Mid-accumulation, the saved critic gradient is the sum over the ranks (every rank
            // calls this; the main one writes), as the trainer saves the actor's.
            let mut accum = parts.grads.clone();
            if let Some(p) = crate::distributed::current() {
                if accum.iter().any(Option::is_some) {
                    p.all_reduce_grads(&mut accum)?;
                }
            }
            for ((name, var), i) in parts.names().into_iter().zip(parts.vars()).zip(0..) {
                tensors.push((name.clone(), var.as_tensor().clone()));
                tensors.push((format!("exp_avg.{name}"), parts.optimizer.exp_avg[i].clone()));
                tensors.push((format!("exp_avg_sq.{name}"), parts.optimizer.exp_avg_sq[i].clone()));
                // A half-accumulated critic gradient (the actor's is the trainer's).
                if let Some(g) = &accum[i] {
                    tensors.push((format!("accum.{name}"), g.clone()));
                }
            }
            for (name, t) in parts.old_weights.tensors() {
                tensors.push((format!("old_actor.{name}"), t.clone()));
            }
        }
        let saved = SavedState {
            algorithm: self.cfg.algorithm,
            tracker: self.tracker.clone(),
            critic_optimizer_step: self.ppo.as_ref().map(|p| p.optimizer.step),
        };
        Ok(Some(ObjectiveState { tensors, json: serde_json::to_value(saved)? }))
    }

    fn restore(&mut self, state: &ObjectiveState) -> Result<()> {
        let saved: SavedState = serde_json::from_value(state.json.clone()).context("objective.json: not an RL stage's state")?;
        ensure!(
            saved.algorithm == self.cfg.algorithm,
            "the resume checkpoint is a {} run's, not {}'s",
            saved.algorithm.name(),
            self.cfg.algorithm.name()
        );
        if self.cfg.algorithm == Algorithm::Spo {
            self.tracker = Some(saved.tracker.context("objective.json: the SPO value tracker is missing")?);
        }
        if let Some(parts) = &mut self.ppo {
            let find = |key: &str| -> Result<Tensor> {
                state.tensors.iter().find(|(n, _)| n == key).map(|(_, t)| t.clone()).with_context(|| format!("objective.safetensors: {key} missing"))
            };
            let device = parts.critic.device.clone();
            let names = parts.names();
            for (i, name) in names.iter().enumerate() {
                let var = parts.vars()[i].clone();
                let w = find(name)?;
                ensure!(w.dims() == var.dims(), "objective.safetensors: {name} has shape {:?}, expected {:?}", w.dims(), var.dims());
                var.set(&w.to_dtype(DType::F32)?.to_device(&device)?)?;
                parts.optimizer.exp_avg[i] = find(&format!("exp_avg.{name}"))?.to_device(&device)?;
                parts.optimizer.exp_avg_sq[i] = find(&format!("exp_avg_sq.{name}"))?.to_device(&device)?;
                // A saved half-accumulation is the ranks' sum: the main rank carries it.
                let main = crate::distributed::current().is_none_or(|p| p.is_main());
                parts.grads[i] = if main { find(&format!("accum.{name}")).ok().map(|g| g.to_device(&device)).transpose()? } else { None };
            }
            parts.optimizer.step = saved.critic_optimizer_step.context("objective.json: the critic's optimizer step is missing")?;
            let old: Vec<(String, Tensor)> = parts
                .old_weights
                .tensors()
                .iter()
                .map(|(name, _)| Ok((name.clone(), find(&format!("old_actor.{name}"))?)))
                .collect::<Result<_>>()?;
            parts.old_weights = parts.old_weights.with_tensors(old)?;
            parts.old_actor = MiniMind::from_checkpoint(&parts.old_weights, self.cfg.compute, &device)?;
        }
        Ok(())
    }
}
