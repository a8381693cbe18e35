//! `mm reward MODEL --data pairs.jsonl [--json]`: a reward model's scores of DPO-format pairs
//! and its pairwise accuracy; `mm train reward` (wired from `train.rs`): trains one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Var};
use clap::Args;
use serde_json::json;

use mm::converters::output_guard::check_not_an_input;
use mm::converters::read_checkpoint;
use mm::train::encoder::chat_encoder;
use mm::train::reward_model::hf::{self, RewardCheckpoint};
use mm::train::reward_model::resume::Checkpointing;
use mm::train::reward_model::train::{accuracy, binomial_tail, init_score, score_pairs, PairFile, PairScore, RewardTrainOptions};
use mm::train::reward_model::remote::PoolingClient;
use mm::train::reward_model::scorer::{ModelScorer, RemoteScorer};
use mm::train::reward_model::RewardModel;
use mm::train::rewards::Rewarder;
use mm::train::TrainableModel;

use super::{device_arg, set_threads, ShapeHints};

#[derive(Args)]
pub struct RewardArgs {
    /// A reward model directory (HF LlamaForSequenceClassification, as `mm train reward` writes).
    model: PathBuf,
    /// DPO-format pairs: `{"chosen": [messages], "rejected": [messages]}` lines.
    #[arg(long)]
    data: PathBuf,
    /// Print one JSON object (scores of every pair, accuracy) instead of lines.
    #[arg(long)]
    json: bool,
    /// Pairs scored per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Cut each conversation to this many tokens (default: the model's context).
    #[arg(long)]
    max_seq_len: Option<usize>,
    /// Skip (and count) malformed data lines instead of stopping at the first.
    #[arg(long)]
    skip_bad_lines: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(a: RewardArgs) -> Result<()> {
    set_threads(a.threads);
    let device = device_arg(&a.device)?;
    let rc = hf::read(&a.model)?;
    let rm = RewardModel::new(&rc.trunk, &rc.score, rc.pad_id, &device)?;
    let max_len = a.max_seq_len.unwrap_or(rm.context()).min(rm.context()).min(mm_dataset::MAX_LENGTH);
    let pairs = PairFile::open(&a.data, chat_encoder(&rc.trunk.tokenizer)?, max_len.max(2), a.skip_bad_lines)?;
    if pairs.is_empty() {
        bail!("{}: no pairs", a.data.display());
    }
    let all: Vec<usize> = (0..pairs.len()).collect();
    let scores = score_pairs(&rm.trunk, &rm.score, rm.pad_id, &pairs, &all, &rm.tokenizer, &rm.template, max_len, a.batch_size)?;
    let correct = scores.iter().filter(|s| s.correct()).count();
    let acc = accuracy(&scores).unwrap_or(0.0);
    let chance = binomial_tail(correct, scores.len());
    if a.json {
        let rows: Vec<_> = scores
            .iter()
            .map(|s| json!({"line": s.line, "chosen": s.chosen, "rejected": s.rejected, "margin": s.chosen - s.rejected, "correct": s.correct()}))
            .collect();
        let out = json!({
            "model": a.model.display().to_string(),
            "data": a.data.display().to_string(),
            "pairs": rows,
            "correct": correct,
            "total": scores.len(),
            "accuracy": acc,
            "chance_p": chance,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_pairs(&scores);
        println!("accuracy {acc:.4} ({correct}/{} pairs; P[>= {correct} right by chance] = {chance:.3e})", scores.len());
    }
    Ok(())
}

fn print_pairs(scores: &[PairScore]) {
    for s in scores {
        println!(
            "line {:>5}  chosen {:>10.4}  rejected {:>10.4}  margin {:>9.4}  {}",
            s.line,
            s.chosen,
            s.rejected,
            s.chosen - s.rejected,
            if s.correct() { "ok" } else { "WRONG" }
        );
    }
}

#[derive(Args)]
pub struct TrainRewardArgs {
    /// DPO-format pairs: `{"chosen": [messages], "rejected": [messages]}` lines.
    #[arg(long)]
    data: PathBuf,
    /// The starting model: any model mm reads (a fresh score head is added), or a reward
    /// model directory (training continues with its head).
    #[arg(long)]
    from: PathBuf,
    #[command(flatten)]
    hints: ShapeHints,
    /// The reward model directory to write (default: out/reward_<hidden>).
    #[arg(short = 'o', long = "out")]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    epochs: u64,
    /// Peak learning rate (cosine schedule, as upstream's get_lr).
    #[arg(long, default_value_t = 1e-5)]
    lr: f64,
    /// Pairs per step.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Tokens per conversation (longer ones are cut, the beginning kept).
    #[arg(long, default_value_t = 512)]
    max_seq_len: usize,
    /// Share of the pairs held out for the accuracy.
    #[arg(long, default_value_t = 0.1)]
    held_out: f64,
    /// Seed of the held-out split, the data order and the score head's init.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Global gradient-norm clipping threshold.
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    /// Log every N steps (also at least every 10 s without a terminal).
    #[arg(long, default_value_t = 10)]
    log_every: u64,
    /// Stop after this many steps.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Save the resume state (`<out>_resume/`) every N steps, and after every epoch.
    #[arg(long, default_value_t = 100)]
    save_every: u64,
    /// Continue the run saved in `<out>_resume/` (same data and options).
    #[arg(long)]
    resume: bool,
    /// Skip (and count) malformed data lines instead of stopping at the first.
    #[arg(long)]
    skip_bad_lines: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bar or progress lines.
    #[arg(long)]
    quiet: bool,
}

/// `mm train reward`.
pub fn run_train(a: TrainRewardArgs) -> Result<()> {
    set_threads(a.threads);
    let device = device_arg(&a.device)?;
    let opts = RewardTrainOptions {
        epochs: a.epochs,
        batch_size: a.batch_size,
        learning_rate: a.lr,
        max_seq_len: a.max_seq_len,
        held_out: a.held_out,
        seed: a.seed,
        grad_clip: a.grad_clip,
        log_interval: a.log_every,
        progress: !a.quiet,
        max_steps: a.max_steps,
        skip_bad_lines: a.skip_bad_lines,
        checkpoint: None,
        metrics: None,
    };
    opts.validate()?;
    let start = starting_point(&a.from, &a.hints)?;
    let out = a.out.clone().unwrap_or_else(|| Path::new("out").join(format!("reward_{}", start.trunk.config.hidden_size)));
    check_not_an_input(&out, &[&a.from, &a.data])?;
    let name = out.file_name().map_or_else(|| "reward".into(), |n| n.to_string_lossy().into_owned());
    let resume_dir = out.with_file_name(format!("{name}_resume"));
    check_not_an_input(&resume_dir, &[&a.from, &a.data])?;
    let metrics_path = out.with_file_name(format!("{name}.metrics.jsonl"));
    check_not_an_input(&metrics_path, &[&a.from, &a.data])?;
    let opts = RewardTrainOptions {
        checkpoint: Some(Checkpointing { dir: resume_dir, every: a.save_every, resume: a.resume }),
        metrics: Some(metrics_path.clone()),
        ..opts
    };
    let model = TrainableModel::from_checkpoint(&start.trunk, &device)?;
    let score = Var::from_tensor(&match &start.score {
        Some(s) => s.to_device(&device)?,
        None => init_score(start.trunk.config.hidden_size, a.seed, &device)?,
    })?;
    let encoder = chat_encoder(&start.trunk.tokenizer)?;
    let pad = start.pad_id.unwrap_or(encoder.tokenizer.pad_id().context("the tokenizer has no pad_token (the score is read at the last token that is not the pad)")?);
    let pairs = PairFile::open(&a.data, chat_encoder(&start.trunk.tokenizer)?, a.max_seq_len, a.skip_bad_lines)?;
    if pairs.is_empty() {
        bail!("{}: no pairs", a.data.display());
    }
    if !a.quiet {
        eprintln!(
            "reward: {:.2}M parameters + score head, {} pairs from {} ({})",
            model.parameter_count() as f64 / 1e6,
            pairs.len(),
            a.data.display(),
            mm::device::describe(&device)
        );
    }
    let report = mm::train::reward_model::train::train(&model, &score, pad, &pairs, &encoder.tokenizer, encoder.template()?, &opts)?;
    let trunk = model.to_checkpoint(DType::F32, mm::converters::Provenance::new("mm train reward", &out))?;
    let saved = RewardCheckpoint { trunk, score: score.as_tensor().to_device(&candle_core::Device::Cpu)?, pad_id: pad };
    hf::write(&saved, &out, DType::F32)?;
    let first = report.losses.first().map_or(f64::NAN, |l| l.1);
    let last = report.losses.last().map_or(f64::NAN, |l| l.1);
    println!("trained {} steps on {} pairs: loss {first:.4} -> {last:.4}", report.steps, report.train_pairs);
    if report.held_out.is_empty() {
        println!("held-out: none (--held-out 0)");
    } else {
        let correct = report.held_out.iter().filter(|s| s.correct()).count();
        let n = report.held_out.len();
        println!(
            "held-out accuracy {:.4} ({correct}/{n} pairs; P[>= {correct} right by chance] = {:.3e})",
            correct as f64 / n as f64,
            binomial_tail(correct, n)
        );
    }
    println!("reward model: {}", out.display());
    println!("metrics: {}", metrics_path.display());
    // The loss curve, and the held-out accuracy per epoch when there is a held-out part.
    for (column, suffix) in [("loss", "loss"), ("held_out_acc", "accuracy")] {
        if column == "held_out_acc" && report.held_out.is_empty() {
            continue;
        }
        let png = out.with_file_name(format!("{name}.{suffix}.png"));
        match mm::train::plot::write_metric_curve(&metrics_path, column, &png) {
            Ok(_) => println!("curve:   {}", png.display()),
            Err(e) => eprintln!("note: no {suffix} curve drawn: {e:#}"),
        }
    }
    Ok(())
}

/// The reward-model and remote sources of an RL run (`--reward-model`, `--reward-url`);
/// `reasoning` turns on upstream's answer blend.
pub fn add_model_sources(rewarder: &mut Rewarder, model: Option<&Path>, url: Option<&str>, reasoning: bool, device: &str) -> Result<()> {
    if let Some(dir) = model {
        let rc = hf::read(dir).with_context(|| format!("--reward-model {}", dir.display()))?;
        let rm = RewardModel::new(&rc.trunk, &rc.score, rc.pad_id, &device_arg(device)?)?;
        rewarder.add(Box::new(ModelScorer::new(rm, reasoning, &dir.display().to_string())));
    }
    if let Some(url) = url {
        rewarder.add(Box::new(RemoteScorer::new(PoolingClient::new(url)?, reasoning)));
    }
    Ok(())
}

/// Where training starts: the trunk, and the head and pad id when `from` is a reward model.
struct Start {
    trunk: mm::converters::Checkpoint,
    score: Option<candle_core::Tensor>,
    pad_id: Option<u32>,
}

fn starting_point(from: &Path, hints: &ShapeHints) -> Result<Start> {
    if hf::is_reward_model_dir(from) {
        let rc = hf::read(from)?;
        return Ok(Start { trunk: rc.trunk, score: Some(rc.score), pad_id: Some(rc.pad_id) });
    }
    let trunk = read_checkpoint(from, &hints.to_hints()?)?;
    if trunk.config.use_moe {
        bail!("{}: a MoE model; reward models are stored as LlamaForSequenceClassification, which needs a dense trunk", from.display());
    }
    Ok(Start { trunk, score: None, pad_id: None })
}
