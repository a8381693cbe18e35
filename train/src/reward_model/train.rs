//! `mm train reward`: a reward model trained on DPO-format pairs with the Bradley–Terry loss
//! `−log σ(r_chosen − r_rejected)` (the mean over a batch of pairs). The pairs are split once,
//! by the seed, into a training part and a held-out part; the held-out pairwise accuracy (the
//! share of pairs whose chosen conversation scores strictly higher) is reported after every
//! epoch. Each step: cosine learning rate (upstream's `get_lr`), global-norm clipping, torch's
//! AdamW over the trunk and the score head, all in f32.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use mm_dataset::{epoch_order, Dataset, DatasetOptions, DpoDataset};
use rand::SeedableRng;
use rand_distr::Distribution;
use serde_json::Value;

use super::model::{encode_conversation, pooled_scores};
use mm_chat::{ChatTemplate, Tokenizer};
use mm_model::model::{MiniMind, Mode};
use super::resume::{self, Checkpointing, Position, RunKey};
use crate::adamw::{AdamW, AdamWConfig};
use crate::encoder::ChatEncoder;
use crate::loss::log_sigmoid;
use crate::schedule::upstream_lr;
use crate::step::{clip_coefficient_on_device, gradients};
use crate::TrainableModel;

/// transformers' `initializer_range` for a fresh score head: N(0, 0.02).
pub const SCORE_INIT_STD: f64 = 0.02;

/// How often, at least, a run without a terminal prints a progress line.
const PLAIN_LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct RewardTrainOptions {
    pub epochs: u64,
    /// Pairs per step (each pair is two rows).
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Tokens per conversation (longer ones are cut, the beginning kept).
    pub max_seq_len: usize,
    /// Share of the pairs held out for the accuracy (0 keeps none).
    pub held_out: f64,
    pub seed: u64,
    pub grad_clip: f64,
    pub log_interval: u64,
    pub progress: bool,
    /// Stop after this many steps.
    pub max_steps: Option<u64>,
    pub skip_bad_lines: bool,
    /// Periodic saves and `--resume` (none: nothing is saved until the end).
    pub checkpoint: Option<Checkpointing>,
    /// A JSON line per step (`step`, `epoch`, `loss`, `lr`, `batch_acc`, `pairs_per_s`,
    /// `elapsed_s`) and per epoch (`step`, `epoch`, `held_out_acc`), as the trainer's
    /// metrics files (a resumed run appends; readers drop the lines it supersedes).
    pub metrics: Option<std::path::PathBuf>,
}

impl RewardTrainOptions {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.epochs > 0, "--epochs 0: nothing would be trained (pass at least 1)");
        ensure!(self.batch_size > 0, "--batch-size 0: a step needs at least one pair");
        ensure!(self.max_seq_len >= 2, "--max-seq-len {}: a conversation needs at least 2 tokens", self.max_seq_len);
        ensure!(
            self.learning_rate.is_finite() && self.learning_rate > 0.0,
            "--lr {}: the learning rate must be a finite number above 0",
            self.learning_rate
        );
        ensure!(self.grad_clip.is_finite() && self.grad_clip > 0.0, "--grad-clip {}: must be a finite number above 0", self.grad_clip);
        ensure!((0.0..1.0).contains(&self.held_out), "--held-out {}: a share in [0, 1)", self.held_out);
        mm_dataset::check_micro_batch(self.batch_size * 2, self.max_seq_len).context("--batch-size / --max-seq-len")?;
        Ok(())
    }
}

/// A DPO-format pairs file (`{"chosen": [...], "rejected": [...]}` lines), every line checked
/// when opened; conversations are read and tokenized when used.
pub struct PairFile {
    data: DpoDataset<ChatEncoder>,
}

impl PairFile {
    pub fn open(path: &Path, encoder: ChatEncoder, max_seq_len: usize, skip_bad_lines: bool) -> Result<Self> {
        let opts = DatasetOptions::new(max_seq_len).skip_bad_lines(skip_bad_lines);
        let data = DpoDataset::open(path, encoder, opts).with_context(|| format!("reading {}", path.display()))?;
        Ok(Self { data })
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The file line of pair `i`.
    pub fn line(&self, i: usize) -> u64 {
        self.data.index().line_number(i)
    }

    pub fn path(&self) -> &Path {
        self.data.index().path()
    }

    /// Pair `i`'s chosen and rejected message lists.
    pub fn conversations(&self, i: usize) -> Result<(Value, Value)> {
        let mut v = self.data.index().read_json(i).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((v["chosen"].take(), v["rejected"].take()))
    }

    /// Pair `i` tokenized as the reward model reads it, each side cut to `max_len` tokens.
    pub fn encode(&self, i: usize, tokenizer: &Tokenizer, template: &ChatTemplate, max_len: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        let (chosen, rejected) = self.conversations(i)?;
        let at = || format!("{} line {}", self.path().display(), self.line(i));
        let c = encode_conversation(tokenizer, template, &chosen, Some(max_len), max_len).with_context(|| format!("{}: chosen", at()))?;
        let r = encode_conversation(tokenizer, template, &rejected, Some(max_len), max_len).with_context(|| format!("{}: rejected", at()))?;
        Ok((c, r))
    }
}

/// The seed's split of `n` pairs: (training indices, held-out indices). The held-out part is
/// `round(n · share)` pairs, at least one when the share is above 0 and there are two pairs or
/// more, and never all of them.
pub fn split(n: usize, share: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let order = epoch_order(n, seed ^ 0x0005_eed4_e1d0_u64, 0, true);
    let mut held = ((n as f64) * share).round() as usize;
    if share > 0.0 && n >= 2 {
        held = held.clamp(1, n - 1);
    } else {
        held = held.min(n.saturating_sub(1));
    }
    let (h, t) = order.split_at(held);
    let (mut train, mut held_out) = (t.to_vec(), h.to_vec());
    train.sort_unstable();
    held_out.sort_unstable();
    (train, held_out)
}

/// `P[X ≥ k]` for `X ~ Binomial(n, 1/2)`: the chance that a scorer guessing at random gets at
/// least `k` of `n` pairs right.
pub fn binomial_tail(k: usize, n: usize) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    // Σ_{i≥k} C(n, i) / 2^n, in logs to stay finite for large n.
    let ln_fact = |m: usize| (1..=m).map(|x| (x as f64).ln()).sum::<f64>();
    let ln_total = n as f64 * std::f64::consts::LN_2;
    (k..=n).map(|i| (ln_fact(n) - ln_fact(i) - ln_fact(n - i) - ln_total).exp()).sum::<f64>().min(1.0)
}

/// One pair's scores.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PairScore {
    pub line: u64,
    pub chosen: f32,
    pub rejected: f32,
}

impl PairScore {
    pub fn correct(&self) -> bool {
        self.chosen > self.rejected
    }
}

/// The share of pairs scored the right way round (None for no pairs).
pub fn accuracy(scores: &[PairScore]) -> Option<f64> {
    (!scores.is_empty()).then(|| scores.iter().filter(|s| s.correct()).count() as f64 / scores.len() as f64)
}

/// Scores `indices` of `pairs` under `trunk` + `score` (inference, a batch of pairs at a time).
#[allow(clippy::too_many_arguments)]
pub fn score_pairs(
    trunk: &MiniMind,
    score: &Tensor,
    pad: u32,
    pairs: &PairFile,
    indices: &[usize],
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    max_len: usize,
    batch: usize,
) -> Result<Vec<PairScore>> {
    let mut out = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(batch.max(1)) {
        let mut rows = Vec::with_capacity(chunk.len() * 2);
        let mut rejected = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let (c, r) = pairs.encode(i, tokenizer, template, max_len)?;
            rows.push(c);
            rejected.push(r);
        }
        rows.extend(rejected);
        let s: Vec<f32> = pooled_scores(trunk, score, &rows, pad, Mode::Inference)?.to_vec1()?;
        let b = chunk.len();
        out.extend(chunk.iter().enumerate().map(|(j, &i)| PairScore { line: pairs.line(i), chosen: s[j], rejected: s[b + j] }));
    }
    Ok(out)
}

/// A fresh score head [1, hidden] ~ N(0, 0.02), from the seed.
pub fn init_score(hidden: usize, seed: u64, device: &candle_core::Device) -> Result<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5c0e_0000);
    let normal = rand_distr::Normal::new(0.0f32, SCORE_INIT_STD as f32)?;
    let w: Vec<f32> = (0..hidden).map(|_| normal.sample(&mut rng)).collect();
    Ok(Tensor::from_vec(w, (1, hidden), device)?)
}

/// What a run did.
pub struct RewardTrainReport {
    pub steps: u64,
    pub train_pairs: usize,
    /// (step, loss) of every step.
    pub losses: Vec<(u64, f64)>,
    /// Held-out accuracy after each epoch.
    pub epoch_accuracy: Vec<f64>,
    /// The held-out pairs' final scores.
    pub held_out: Vec<PairScore>,
}

/// Trains `model` (the trunk, f32 master weights) and `score` (the head, a `Var` [1, hidden])
/// on `pairs`. `pad` is the pooling rule's pad id.
pub fn train(
    model: &TrainableModel,
    score: &Var,
    pad: u32,
    pairs: &PairFile,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    opts: &RewardTrainOptions,
) -> Result<RewardTrainReport> {
    opts.validate()?;
    ensure!(score.dims() == [1, model.config.hidden_size], "the score head has shape {:?}", score.dims());
    ensure!(
        opts.max_seq_len <= model.config.max_position_embeddings,
        "--max-seq-len {}: over the model's {} positions",
        opts.max_seq_len,
        model.config.max_position_embeddings
    );
    let (train_idx, held_idx) = split(pairs.len(), opts.held_out, opts.seed);
    if train_idx.is_empty() {
        bail!("{}: no pair left to train on ({} pairs, --held-out {})", pairs.path().display(), pairs.len(), opts.held_out);
    }
    let steps_per_epoch = train_idx.len().div_ceil(opts.batch_size) as u64;
    let total = opts.epochs * steps_per_epoch;
    let mut vars: Vec<&Var> = model.trainable_vars();
    vars.push(score);
    let mut optimizer = AdamW::new(AdamWConfig::default(), vars.iter().copied())?;

    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if opts.progress && terminal { ProgressBar::new(opts.max_steps.map_or(total, |m| m.min(total))) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})").expect("valid template").progress_chars("=> "));
    bar.set_prefix("reward");
    let plain = opts.progress && !terminal;
    let mut last_line = Instant::now();
    let started = Instant::now();

    let run = RunKey {
        epochs: opts.epochs,
        batch_size: opts.batch_size,
        learning_rate: opts.learning_rate,
        max_seq_len: opts.max_seq_len,
        held_out: opts.held_out,
        seed: opts.seed,
        pairs: pairs.len(),
    };
    let mut at = match &opts.checkpoint {
        Some(c) if c.resume => resume::restore(&c.dir, model, score, &mut optimizer, &run)?,
        _ => Position { run: run.clone(), ..Position::default() },
    };
    bar.set_position(at.step);
    let mut metrics = open_metrics(opts)?;
    let save = |at: &Position, optimizer: &AdamW| -> Result<()> {
        match &opts.checkpoint {
            Some(c) => resume::save(&c.dir, model, score, optimizer, at),
            None => Ok(()),
        }
    };
    let (first_epoch, first_batch, first_step) = (at.epoch, at.next_batch, at.step);
    'epochs: for epoch in first_epoch..opts.epochs {
        let order = epoch_order(train_idx.len(), opts.seed, epoch, true);
        let skip = if epoch == first_epoch { first_batch } else { 0 };
        for (s, chunk) in order.chunks(opts.batch_size).enumerate().skip(skip) {
            if opts.max_steps.is_some_and(|m| at.step >= m) {
                break 'epochs;
            }
            let lr = upstream_lr(epoch * steps_per_epoch + s as u64 + 1, total, opts.learning_rate);
            let mut rows = Vec::with_capacity(chunk.len() * 2);
            let mut rejected = Vec::with_capacity(chunk.len());
            for &k in chunk {
                let (c, r) = pairs.encode(train_idx[k], tokenizer, template, opts.max_seq_len)?;
                rows.push(c);
                rejected.push(r);
            }
            rows.extend(rejected);
            let b = chunk.len();
            let scores = pooled_scores(&model.model, score.as_tensor(), &rows, pad, Mode::Training)?;
            let margin = (scores.narrow(0, 0, b)? - scores.narrow(0, b, b)?)?;
            let loss = log_sigmoid(&margin)?.neg()?.mean_all()?;
            let grads = gradients(&loss, &vars)?;
            let (_, clip) = clip_coefficient_on_device(&grads, opts.grad_clip)?;
            optimizer.step_scaled(&vars, &grads, lr, Some(&clip))?;
            at.step += 1;
            let step = at.step;
            let loss_value = f64::from(loss.to_scalar::<f32>()?);
            if !loss_value.is_finite() {
                bail!("loss became {loss_value} at step {step}; stopping (the last save, if any, is intact). The learning rate ({:e}) is probably too high", opts.learning_rate);
            }
            let batch_acc = margin.gt(0f64)?.to_dtype(DType::F32)?.mean_all()?.to_scalar::<f32>()?;
            at.losses.push((step, loss_value));
            let pairs_per_s = ((step - first_step) as usize * opts.batch_size) as f64 / started.elapsed().as_secs_f64().max(1e-9);
            metric_line(
                &mut metrics,
                serde_json::json!({
                    "step": step, "epoch": epoch, "loss": loss_value, "lr": lr, "batch_acc": batch_acc,
                    "pairs_per_s": pairs_per_s, "elapsed_s": started.elapsed().as_secs_f64(),
                }),
            )?;
            (at.epoch, at.next_batch, at.optimizer_step) = (epoch, s + 1, optimizer.step);
            if opts.checkpoint.as_ref().is_some_and(|c| step.is_multiple_of(c.every.max(1))) {
                save(&at, &optimizer)?;
            }
            bar.set_position(step);
            let line = format!(
                "epoch {}/{} step {}/{steps_per_epoch} loss {loss_value:.6} batch acc {batch_acc:.2} lr {lr:.3e} {pairs_per_s:.1} pairs/s",
                epoch + 1,
                opts.epochs,
                s + 1,
            );
            bar.set_message(format!("loss {loss_value:.4} lr {lr:.3e}"));
            let due = step.is_multiple_of(opts.log_interval.max(1)) || s as u64 + 1 == steps_per_epoch;
            if due && !bar.is_hidden() {
                bar.println(line);
            } else if plain && (due || last_line.elapsed() >= PLAIN_LOG_EVERY) {
                eprintln!("reward: {line}");
                last_line = Instant::now();
            }
        }
        if !held_idx.is_empty() {
            let acc = held_out_accuracy(model, score, pad, pairs, &held_idx, tokenizer, template, opts)?;
            at.epoch_accuracy.push(acc);
            metric_line(&mut metrics, serde_json::json!({ "step": at.step, "epoch": epoch, "held_out_acc": acc }))?;
            let line = format!("epoch {}/{}: held-out accuracy {acc:.3} ({} pairs)", epoch + 1, opts.epochs, held_idx.len());
            if !bar.is_hidden() {
                bar.println(line);
            } else if opts.progress {
                eprintln!("reward: {line}");
            }
        }
        (at.epoch, at.next_batch) = (epoch + 1, 0);
        save(&at, &optimizer)?;
    }
    // A --max-steps stop mid-epoch: what was trained is saved too.
    save(&at, &optimizer)?;
    bar.finish_and_clear();
    let held_out = if held_idx.is_empty() {
        Vec::new()
    } else {
        let frozen = frozen_trunk(model)?;
        score_pairs(&frozen, &score.as_tensor().detach(), pad, pairs, &held_idx, tokenizer, template, opts.max_seq_len, opts.batch_size)?
    };
    Ok(RewardTrainReport { steps: at.step, train_pairs: train_idx.len(), losses: at.losses, epoch_accuracy: at.epoch_accuracy, held_out })
}

/// The run's metrics file ([`crate::trainer::open_metrics`]), if it keeps one.
fn open_metrics(opts: &RewardTrainOptions) -> Result<Option<std::fs::File>> {
    let Some(path) = &opts.metrics else { return Ok(None) };
    let resuming = opts.checkpoint.as_ref().is_some_and(|c| c.resume);
    crate::trainer::open_metrics(path, resuming).map(Some)
}

/// One whole line per write, so a killed run leaves whole lines.
fn metric_line(file: &mut Option<std::fs::File>, value: Value) -> Result<()> {
    if let Some(f) = file {
        std::io::Write::write_all(f, format!("{value}\n").as_bytes())?;
    }
    Ok(())
}

/// The current weights as a model outside the training graph.
fn frozen_trunk(model: &TrainableModel) -> Result<MiniMind> {
    let ckpt = model.to_checkpoint(DType::F32, mm_converters::Provenance::new("mm train reward", Path::new("(training)")))?;
    let mut m = MiniMind::from_checkpoint(&ckpt, DType::F32, &model.device)?;
    m.set_cpu_engine(false);
    Ok(m)
}

#[allow(clippy::too_many_arguments)]
fn held_out_accuracy(
    model: &TrainableModel,
    score: &Var,
    pad: u32,
    pairs: &PairFile,
    held: &[usize],
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    opts: &RewardTrainOptions,
) -> Result<f64> {
    let frozen = frozen_trunk(model)?;
    let scores = score_pairs(&frozen, &score.as_tensor().detach(), pad, pairs, held, tokenizer, template, opts.max_seq_len, opts.batch_size)?;
    Ok(accuracy(&scores).unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_seeded_and_disjoint() {
        let (t, h) = split(30, 0.1, 7);
        assert_eq!((t.len(), h.len()), (27, 3));
        assert!(h.iter().all(|i| !t.contains(i)));
        assert_eq!(split(30, 0.1, 7), (t, h));
        assert_eq!(split(5, 0.0, 1).1.len(), 0);
        assert_eq!(split(2, 0.01, 1).1.len(), 1);
        assert_eq!(split(1, 0.5, 1), (vec![0], vec![]));
    }

    #[test]
    fn binomial_tail_values() {
        assert!((binomial_tail(0, 10) - 1.0).abs() < 1e-12);
        assert!((binomial_tail(10, 10) - 1.0 / 1024.0).abs() < 1e-12);
        // P[X >= 8 | n = 10] = (45 + 10 + 1) / 1024.
        assert!((binomial_tail(8, 10) - 56.0 / 1024.0).abs() < 1e-12);
        assert!((binomial_tail(5, 10) - 638.0 / 1024.0).abs() < 1e-12);
        assert_eq!(binomial_tail(11, 10), 0.0);
    }
}
