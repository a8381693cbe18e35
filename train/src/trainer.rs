//! The one training loop every stage runs (upstream `train_epoch`): cosine lr per micro-step,
//! loss / accumulation_steps, an optimizer step when `(step + 1) % accumulation_steps == 0`
//! (upstream's boundary, step counted from 1 within the epoch), global-norm clipping, AdamW,
//! progress, a JSONL metrics log, periodic saves and an exact resume checkpoint.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use mm_dataset::{Dataset, Loader, Prefetch};
use serde::{Deserialize, Serialize};

use mm_converters::output_guard::FileKind;
use mm_converters::Provenance;
use crate::adamw::{AdamW, AdamWConfig};
use crate::distributed;
use crate::graph_step::GraphedSteps;
use crate::objective::{Objective, ObjectiveState, StepUpdate};
use crate::params::TrainableModel;
use crate::resume::{self, Resume, ResumeState};
use crate::schedule::{cosine_annealing_lr, upstream_lr, LrSchedule};
use crate::step::{accumulate, clip_coefficient_on_device};

/// The knobs of a run (upstream's argparse flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Upstream's `--save_weight`: "pretrain", "full_sft", "dpo", …
    pub save_weight: String,
    pub epochs: u64,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub accumulation_steps: u64,
    pub grad_clip: f64,
    /// "f32" or "bf16" compute (master weights and optimizer state stay f32).
    pub dtype: String,
    pub log_interval: u64,
    pub save_interval: u64,
    pub out_dir: PathBuf,
    pub seed: u64,
    /// Stop after this many micro-steps in total (a short run, tests, benchmarks).
    pub max_steps: Option<u64>,
    /// Draw a progress bar (when stderr is a terminal).
    pub progress: bool,
    /// The weights file name when it is not `<stem>.pth` (LoRA: `<lora_name>_<hidden>.pth`).
    #[serde(default)]
    pub weights_file: Option<String>,
    /// The learning-rate schedule (older resume files: `get_lr`).
    #[serde(default)]
    pub schedule: LrSchedule,
}

impl TrainOptions {
    pub fn compute_dtype(&self) -> Result<DType> {
        match self.dtype.as_str() {
            "f32" | "float32" => Ok(DType::F32),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            other => bail!("--dtype {other:?}: training computes in f32 or bf16"),
        }
    }

    /// Refuses settings that cannot train: no epochs, no rows, accumulating over zero steps,
    /// a learning rate or clip that is not a finite positive number.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            bail!("--epochs 0: nothing would be trained (pass at least 1)");
        }
        if self.batch_size == 0 {
            bail!("--batch-size 0: a step needs at least one row");
        }
        if self.accumulation_steps == 0 {
            bail!("--accumulation-steps 0: gradients are accumulated over at least 1 step");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            bail!("--lr {}: the learning rate must be a finite number above 0", self.learning_rate);
        }
        if !(self.grad_clip.is_finite() && self.grad_clip > 0.0) {
            bail!("--grad-clip {}: the clipping norm must be a finite number above 0", self.grad_clip);
        }
        if let Some(name) = &self.weights_file {
            let plain = Path::new(name).file_name().is_some_and(|f| f == std::ffi::OsStr::new(name));
            if !plain {
                bail!("weights file name {name:?} must be a plain file name (it is written under --out)");
            }
        }
        if self.save_weight.is_empty() || self.save_weight.contains(['/', '\\']) || self.save_weight.starts_with('.') {
            bail!("--save-weight {:?}: a file name prefix without path separators", self.save_weight);
        }
        Ok(())
    }

    /// `{save_weight}_{hidden}{_moe}`, upstream's file stem.
    pub fn stem(&self, model: &TrainableModel) -> String {
        let moe = if model.config.use_moe { "_moe" } else { "" };
        format!("{}_{}{}", self.save_weight, model.config.hidden_size, moe)
    }
}

/// One logged line of the metrics file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metric {
    pub step: u64,
    pub epoch: u64,
    pub loss: f64,
    pub lr: f64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    #[serde(flatten)]
    pub parts: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct TrainReport {
    pub micro_steps: u64,
    pub optimizer_steps: u64,
    pub losses: Vec<(u64, f64)>,
    pub weights_path: Option<PathBuf>,
    pub resume_path: PathBuf,
    pub metrics_path: PathBuf,
    pub curve_path: PathBuf,
}

/// Where the run's files go.
pub struct RunPaths {
    pub weights: PathBuf,
    pub resume: PathBuf,
    pub metrics: PathBuf,
    pub curve: PathBuf,
}

impl RunPaths {
    pub fn new(opts: &TrainOptions, model: &TrainableModel) -> Self {
        let stem = opts.stem(model);
        Self {
            weights: opts.out_dir.join(opts.weights_file.clone().unwrap_or_else(|| format!("{stem}.pth"))),
            resume: opts.out_dir.join(format!("{stem}_resume")),
            metrics: opts.out_dir.join(format!("{stem}.metrics.jsonl")),
            curve: opts.out_dir.join(format!("{stem}.loss.png")),
        }
    }
}

/// How the stage saves its weights (full model as upstream's f16 `.pth`, or a LoRA file).
pub type SaveWeights<'a> = &'a dyn Fn(&TrainableModel, &Path) -> Result<()>;

/// Upstream's full save: `{k: v.half()}` of the state dict.
pub fn save_full_pth(model: &TrainableModel, path: &Path) -> Result<()> {
    let ckpt = model.to_checkpoint(DType::F16, Provenance::new("mm train", path))?;
    mm_converters::pth::checkpoint::write(&ckpt, path)
}

/// The logged figures of a data-parallel step, each weighted by the rank's share and summed
/// over the ranks in one all-reduce (so they describe the global batch, like the loss).
fn reduce_logged(
    p: &distributed::DataParallel,
    loss: &Tensor,
    logged: Vec<(&'static str, Tensor)>,
    share: &Tensor,
) -> Result<Vec<(&'static str, Tensor)>> {
    if logged.is_empty() {
        return Ok(logged);
    }
    let device = loss.device();
    let values: Vec<Tensor> = logged
        .iter()
        .map(|(_, v)| Ok(v.to_dtype(DType::F32)?.to_device(device)?.reshape(1)?.mul(share)?))
        .collect::<Result<_>>()?;
    let summed = p.all_reduce_sum(&Tensor::cat(&values, 0)?)?;
    logged.into_iter().enumerate().map(|(i, (k, _))| Ok((k, summed.narrow(0, i, 1)?.squeeze(0)?))).collect()
}

/// A step whose figures are still on the device.
struct PendingMetric {
    step: u64,
    epoch: u64,
    lr: f64,
    tokens: usize,
    /// Data parallel: the global batch's loss tokens (Σ over ranks, on the device).
    global_tokens: Option<Tensor>,
    elapsed_s: f64,
    loss: Tensor,
    logged: Vec<(&'static str, Tensor)>,
}

/// Reads the pending steps' figures back in one transfer and appends their lines (one write
/// per line, so a killed run leaves whole lines behind). The tokens/s of every line is the
/// window's (`window_s` seconds; data parallel: the global batches' tokens).
fn flush_metrics(pending: &mut Vec<PendingMetric>, window_s: f64, out: &mut impl Write) -> Result<Vec<Metric>> {
    let mut scalars = Vec::new();
    for p in pending.iter() {
        if let Some(g) = &p.global_tokens {
            scalars.push(g.to_dtype(DType::F32)?.reshape(1)?);
        }
        scalars.push(p.loss.to_dtype(DType::F32)?.reshape(1)?);
        for (_, v) in &p.logged {
            scalars.push(v.to_dtype(DType::F32)?.to_device(p.loss.device())?.reshape(1)?);
        }
    }
    let values: Vec<f32> = Tensor::cat(&scalars, 0)?.to_vec1()?;
    let mut values = values.into_iter().map(f64::from);
    let mut next = || values.next().expect("one value per scalar");
    let mut tokens = 0.0;
    let mut written = Vec::new();
    for p in pending.drain(..) {
        tokens += match p.global_tokens {
            Some(_) => next(),
            None => p.tokens as f64,
        };
        let loss = next();
        let parts = p.logged.iter().map(|(k, _)| (k.to_string(), serde_json::json!(next()))).collect();
        written.push(Metric { step: p.step, epoch: p.epoch, loss, lr: p.lr, tokens_per_s: 0.0, elapsed_s: p.elapsed_s, parts });
    }
    let rate = tokens / window_s.max(1e-9);
    for metric in &mut written {
        metric.tokens_per_s = rate;
        out.write_all(format!("{}\n", serde_json::to_string(&metric)?).as_bytes())?;
    }
    out.flush()?;
    Ok(written)
}

/// Where a run is when it saves.
struct SavePoint<'a> {
    micro_steps: u64,
    loader: mm_dataset::LoaderState,
    parallel: Option<&'a distributed::DataParallel>,
    main: bool,
}

/// Writes the weights and the resume checkpoint (every rank takes part in the all-reduce of
/// a half-accumulated gradient; the main rank writes).
#[allow(clippy::too_many_arguments)]
fn save(
    model: &TrainableModel,
    optimizer: &AdamW,
    accumulated: &[Option<Tensor>],
    at: &SavePoint,
    opts: &TrainOptions,
    paths: &RunPaths,
    metrics: &mut dyn Write,
    save_weights: SaveWeights,
    extra: Option<&ObjectiveState>,
) -> Result<()> {
    // Mid-accumulation, the saved gradient is the sum over the ranks.
    let saved_accumulation = match at.parallel {
        Some(p) if accumulated.iter().any(Option::is_some) => {
            let mut summed = accumulated.to_vec();
            p.all_reduce_grads(&mut summed)?;
            summed
        }
        _ => accumulated.to_vec(),
    };
    if !at.main {
        return Ok(());
    }
    ensure_finite_parameters(model, at.micro_steps, opts)?;
    save_weights(model, &paths.weights)?;
    let state = ResumeState {
        micro_steps: at.micro_steps,
        optimizer_step: optimizer.step,
        loader: at.loader.clone(),
        options: opts.clone(),
        world: at.parallel.map_or(1, |p| p.world),
    };
    metrics.flush()?;
    resume::write(&paths.resume, model, optimizer, &saved_accumulation, &state, extra)
}

/// A run's metrics file, opened for appending (a resumed run appends; readers drop the lines
/// it supersedes). A fresh run first removes an old one, only if it is a metrics file, never
/// anything else at the path.
pub fn open_metrics(path: &Path, resuming: bool) -> Result<std::fs::File> {
    if !resuming && std::fs::symlink_metadata(path).is_ok() {
        mm_converters::output_guard::check_file_target(path, FileKind::JsonLines)?;
        std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("cannot open {}", path.display()))
}

/// The largest finite f16, the dtype weights are saved in.
const F16_MAX: f64 = 65504.0;

/// How often, at least, a run without a terminal prints a progress line.
const PLAIN_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A diverged run (`--lr 1e30`) can have NaN or infinite weights while the logged loss of the
/// step that broke them still looked fine: check the parameters themselves before writing
/// them over the last good save. `x - x` is 0 exactly when `x` is finite.
fn ensure_finite_parameters(model: &TrainableModel, step: u64, opts: &TrainOptions) -> Result<()> {
    let vars = model.trainable_vars();
    if vars.is_empty() {
        return Ok(());
    }
    // Per tensor: Σ(x - x), NaN when any x is NaN or infinite, and how many |x| exceed the
    // f16 range the weights are saved in (they would be written as infinities).
    let figures: Vec<Tensor> = vars
        .iter()
        .map(|v| {
            let t = v.as_tensor().to_dtype(DType::F32)?;
            #[allow(clippy::eq_op)] // x - x is the point: 0 for finite x, NaN otherwise
            let non_finite = (&t - &t)?.sum_all()?.reshape(1)?;
            let beyond_f16 = t.abs()?.gt(F16_MAX)?.to_dtype(DType::F32)?.sum_all()?.reshape(1)?;
            Ok(Tensor::cat(&[non_finite, beyond_f16], 0)?)
        })
        .collect::<Result<_>>()?;
    let figures: Vec<f32> = Tensor::cat(&figures, 0)?.to_vec1()?;
    if let Some(i) = figures.chunks(2).position(|f| !f[0].is_finite() || f[1] > 0.0) {
        bail!(
            "parameters became NaN, infinite or too large for f16 at step {step} ({} is one of them): not saving \
             them; the last save is intact. The learning rate ({:e}) is probably too high",
            model.trainable[i].0,
            opts.learning_rate
        );
    }
    Ok(())
}

pub fn train<O, D>(
    model: &mut TrainableModel,
    objective: &mut O,
    loader: Loader<D>,
    opts: &TrainOptions,
    resume_from: Option<&Resume>,
    save_weights: SaveWeights,
) -> Result<TrainReport>
where
    O: Objective,
    D: Dataset<Batch = O::Batch> + Send + 'static,
    O::Batch: Send + 'static,
{
    let compute = opts.compute_dtype()?;
    // Data-parallel rank (None: one process). Only the main process writes files.
    let parallel = distributed::join(&model.device)?;
    let main = parallel.is_none_or(|p| p.is_main());
    opts.validate()?;
    let accumulation = opts.accumulation_steps;
    std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("cannot create {}", opts.out_dir.display()))?;
    let paths = RunPaths::new(opts, model);

    let mut optimizer = AdamW::new(AdamWConfig::default(), model.trainable_vars().into_iter())?;
    let mut accumulated: Vec<Option<Tensor>> = vec![None; model.trainable.len()];
    let mut micro_steps = 0u64;
    if let Some(r) = resume_from {
        micro_steps = r.state.micro_steps;
        resume::restore_optimizer(r, model, &mut optimizer, &mut accumulated)?;
        if let Some(state) = &r.objective {
            objective.restore(state)?;
        }
        if !main {
            // A saved half-accumulated gradient is the sum over the saving run's ranks; the
            // main rank carries it, so the next all-reduce adds it exactly once.
            accumulated.iter_mut().for_each(|g| *g = None);
        }
    }

    // On one CUDA device, stages that hand their batch over as device tensors replay their
    // step as recorded CUDA graphs (graph_step.rs).
    let mut graph_allowed = crate::graph_step::allowed(model, parallel.is_some());
    let mut graphed: Option<GraphedSteps> = None;

    let iters = loader.steps_per_epoch();
    // The next batches are read and tokenised on a thread while this one trains.
    let mut loader = Prefetch::new(loader, 2);
    let total_steps = opts.epochs * iters;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if main && opts.progress && terminal {
        ProgressBar::new(total_steps)
    } else {
        ProgressBar::hidden()
    };
    // Without a terminal (a log file, CI, nohup) the bar is hidden, so plain lines report
    // progress: every log interval and at least every PLAIN_LOG_EVERY.
    let plain_log = main && opts.progress && !terminal;
    let mut last_plain_line = Instant::now();
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(opts.save_weight.clone());
    bar.set_position(micro_steps.min(total_steps));

    let mut metrics: Box<dyn Write> = if main {
        Box::new(open_metrics(&paths.metrics, resume_from.is_some())?)
    } else {
        Box::new(std::io::sink())
    };
    let started = Instant::now();
    let mut window_start = Instant::now();
    let mut pending: Vec<PendingMetric> = Vec::new();
    let mut losses = Vec::new();
    let mut weights_path = None;
    let mut saved_at = micro_steps;
    // Where the data stood after the last completed step (what a save made now would record).
    let mut completed_at = loader.state();

    while let Some((info, batch)) = loader.next_batch()? {
        if opts.max_steps.is_some_and(|m| micro_steps >= m) {
            break;
        }
        let step = info.step + 1; // upstream's enumerate(loader, start=1)
        let lr = match opts.schedule {
            LrSchedule::GetLr => upstream_lr(info.epoch * iters + step, total_steps, opts.learning_rate),
            LrSchedule::CosineAnnealing => {
                cosine_annealing_lr(optimizer.step, (iters / accumulation) * opts.epochs, opts.learning_rate)
            }
        };
        objective.begin_step(micro_steps, &info)?;
        let step_tokens = if info.stand_in { 0 } else { objective.tokens(&batch) };
        // A rank trains on its rows of the global batch (the loader reads only those), its
        // loss weighted by its share of what the global batch's loss averages over (loss
        // tokens, pairs, prompts): the all-reduced gradient is then that of the global mean
        // loss. Counts and share stay on the device.
        let (share, global_tokens) = match parallel {
            None => (None, None),
            Some(p) => {
                let weight = if info.stand_in { 0 } else { objective.loss_denominator(&batch) };
                let local = mm_model::device::upload(&[step_tokens as f32, weight as f32], &[2], &model.device)?;
                let global = p.all_reduce_sum(&local)?;
                let share = (local.narrow(0, 1, 1)? / global.narrow(0, 1, 1)?.maximum(1f64)?)?;
                (Some(share), Some(global.narrow(0, 0, 1)?))
            }
        };
        let graph_inputs = if graph_allowed { objective.device_inputs(&batch, &model.device)? } else { None };
        graph_allowed = graph_inputs.is_some();
        let (parts, update) = if let Some(inputs) = graph_inputs {
            let g = match &mut graphed {
                Some(g) => g,
                None => graphed.insert(GraphedSteps::new(model, &accumulated)?),
            };
            let parts = g.micro_step(model, objective, inputs, compute, accumulation)?;
            micro_steps += 1;
            let mut update = None;
            if (step + 1) % accumulation == 0 {
                g.update(model, &mut optimizer, lr, opts.grad_clip)?;
                update = Some(StepUpdate { lr, peak_lr: opts.learning_rate });
            }
            (parts, update)
        } else {
            let run_model = model.model_for(compute)?;
            let mut parts = match objective.loss(&run_model, &batch, &model.device) {
                Ok(parts) => parts,
                // The step's inputs failed (a reward scorer timing out or answering garbage, a
                // rollout error) before anything was changed: keep the steps completed since the
                // last save, so `--resume` loses nothing. (Data-parallel ranks cannot agree to
                // save here; they keep the last periodic save.)
                Err(e) if parallel.is_none() && micro_steps > saved_at => {
                    drop(run_model);
                    if !pending.is_empty() {
                        flush_metrics(&mut pending, window_start.elapsed().as_secs_f64(), &mut metrics)?;
                    }
                    let run = SavePoint { micro_steps, loader: completed_at.clone(), parallel, main };
                    let extra = objective.state()?;
                    save(model, &optimizer, &accumulated, &run, opts, &paths, &mut metrics, save_weights, extra.as_ref())?;
                    return Err(e.context(format!(
                        "step {} failed; the {micro_steps} steps before it are saved in {} (`--resume` continues from there)",
                        micro_steps + 1,
                        paths.resume.display()
                    )));
                }
                Err(e) => {
                    return Err(e.context(format!("step {} failed; the last save (step {saved_at}) is intact", micro_steps + 1)));
                }
            };
            if let (Some(p), Some(share)) = (parallel, &share) {
                parts.loss = parts.loss.broadcast_mul(&share.to_dtype(parts.loss.dtype())?.reshape(())?)?;
                parts.logged = reduce_logged(p, &parts.loss, std::mem::take(&mut parts.logged), share)?;
            }
            let scaled = (parts.loss.to_dtype(DType::F32)? / accumulation as f64)?;
            let vars = model.trainable_vars();
            let store = scaled.backward()?;
            accumulate(&mut accumulated, vars.iter().map(|p| store.get(p.as_tensor()).cloned()).collect())?;
            objective.collect_gradients(&store)?;
            drop(store);
            drop(run_model);
            micro_steps += 1;

            let mut update = None;
            if (step + 1) % accumulation == 0 {
                if let Some(p) = parallel {
                    p.all_reduce_grads(&mut accumulated)?;
                }
                // The clip coefficient stays on the device; AdamW multiplies it in.
                let (_, clip) = clip_coefficient_on_device(&accumulated, opts.grad_clip)?;
                let vars = model.trainable_vars();
                optimizer.step_scaled(&vars, &accumulated, lr, Some(&clip))?;
                accumulated.iter_mut().for_each(|g| *g = None);
                update = Some(StepUpdate { lr, peak_lr: opts.learning_rate });
            }
            (parts, update)
        };
        objective.after_step(model, update.as_ref(), step)?;

        bar.set_position(micro_steps);
        pending.push(PendingMetric {
            step: micro_steps,
            epoch: info.epoch + 1,
            lr,
            tokens: step_tokens,
            global_tokens,
            elapsed_s: started.elapsed().as_secs_f64(),
            loss: match parallel {
                // The logged loss is the global batch's: Σ of the ranks' weighted losses.
                Some(p) => p.all_reduce_sum(&parts.loss.detach().to_dtype(DType::F32)?.reshape(1)?)?,
                None => parts.loss.detach(),
            },
            logged: parts.logged,
        });

        let last_of_epoch = step == iters;
        let done = opts.max_steps.is_some_and(|m| micro_steps >= m) || loader.finished();
        let log_now = step % opts.log_interval.max(1) == 0
            || last_of_epoch
            || done
            || (plain_log && last_plain_line.elapsed() >= PLAIN_LOG_EVERY);
        let save_now = step % opts.save_interval.max(1) == 0 || last_of_epoch || done;
        // Every step goes to the metrics file (it feeds the loss curve), written when a log
        // line is due: reading the losses back is the one wait for the GPU per log interval.
        if (log_now || save_now) && !main {
            pending.clear();
        } else if log_now || save_now {
            let written = flush_metrics(&mut pending, window_start.elapsed().as_secs_f64(), &mut metrics)?;
            window_start = Instant::now();
            let last = written.last().expect("a step is pending");
            let rate = last.tokens_per_s;
            losses.extend(written.iter().map(|m| (m.step, m.loss)));
            if let Some(bad) = written.iter().find(|m| !m.loss.is_finite()) {
                bail!(
                    "loss became {} at step {} (epoch {}); stopping (last save is intact)",
                    bad.loss,
                    bad.step,
                    bad.epoch
                );
            }
            bar.set_message(format!("loss {:.4} lr {:.3e} {:.0} tok/s", last.loss, last.lr, rate));
            let line = format!(
                "epoch {}/{} step {step}/{iters} loss {:.6} lr {:.3e} {rate:.0} tok/s",
                info.epoch + 1,
                opts.epochs,
                last.loss,
                last.lr
            );
            if log_now && !bar.is_hidden() {
                bar.println(line);
            } else if log_now && plain_log {
                eprintln!("{}: {line}", opts.save_weight);
                last_plain_line = Instant::now();
            }
        }
        if save_now {
            if let Some(g) = &graphed {
                accumulated = g.accumulated()?;
            }
            let run = SavePoint { micro_steps, loader: loader.state(), parallel, main };
            let extra = objective.state()?;
            save(model, &optimizer, &accumulated, &run, opts, &paths, &mut metrics, save_weights, extra.as_ref())?;
            weights_path = main.then(|| paths.weights.clone());
            saved_at = micro_steps;
        }
        completed_at = loader.state();
    }
    // Skipped rows can end an epoch before its planned last step: save what was trained.
    if micro_steps > saved_at {
        if let Some(g) = &graphed {
            accumulated = g.accumulated()?;
        }
        if main && !pending.is_empty() {
            losses.extend(flush_metrics(&mut pending, window_start.elapsed().as_secs_f64(), &mut metrics)?.iter().map(|m| (m.step, m.loss)));
            if let Some((step, loss)) = losses.iter().find(|(_, l)| !l.is_finite()) {
                bail!("loss became {loss} at step {step}; stopping (last save is intact)");
            }
        }
        let run = SavePoint { micro_steps, loader: loader.state(), parallel, main };
        let extra = objective.state()?;
        save(model, &optimizer, &accumulated, &run, opts, &paths, &mut metrics, save_weights, extra.as_ref())?;
        weights_path = main.then(|| paths.weights.clone());
    }
    if micro_steps == 0 && resume_from.is_none() && opts.max_steps != Some(0) {
        bail!("no batch had a token to train on (every row was skipped); nothing was trained or saved");
    }
    if !pending.is_empty() && main {
        losses.extend(flush_metrics(&mut pending, window_start.elapsed().as_secs_f64(), &mut metrics)?.iter().map(|m| (m.step, m.loss)));
    }
    bar.finish_and_clear();
    if !main {
        // The main rank reports; the others only trained.
    } else if let Err(e) = crate::plot::write_loss_curve(&paths.metrics, &paths.curve) {
        eprintln!("note: no loss curve drawn: {e:#}");
    }
    Ok(TrainReport {
        micro_steps,
        optimizer_steps: optimizer.step,
        losses,
        weights_path,
        resume_path: paths.resume,
        metrics_path: paths.metrics,
        curve_path: paths.curve,
    })
}
