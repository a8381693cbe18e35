//! `mm train <stage>`: upstream's `train_pretrain.py`, `train_full_sft.py`, … as one command
//! with the same defaults, data formats and mathematics.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use mm::converters::{read_checkpoint, Checkpoint, MiniMindConfig, TokenizerFiles};
use mm::model::init::random_checkpoint;
use mm::train::encoder::{chat_encoder, ChatEncoder};
use mm::train::objective::LanguageModeling;
use mm::train::rlaif::ppo::PpoConfig;
use mm::train::rlaif::stage::{Algorithm, RlConfig, RlStage};
use mm::train::schedule::LrSchedule;
use mm::train::resume::{self, Resume};
use mm::train::trainer::{self, TrainOptions, TrainReport};
use mm::train::TrainableModel;
use mm_dataset::{Dataset, DatasetOptions, DpoDataset, Loader, LoaderOptions, PretrainDataset, RlaifDataset, SftDataset};

use super::{set_threads, ShapeHints};

#[derive(Args)]
pub struct TrainArgs {
    #[command(subcommand)]
    stage: Stage,
}

#[derive(Subcommand)]
enum Stage {
    /// Next-token pretraining on `{"text": …}` lines (train_pretrain.py).
    Pretrain(CommonArgs),
    /// Full supervised fine-tuning on `{"conversations": […]}` (train_full_sft.py).
    Sft(CommonArgs),
    /// LoRA fine-tuning of the square projections, base frozen (train_lora.py).
    Lora(LoraArgs),
    /// Direct preference optimisation on `{"chosen", "rejected"}` pairs (train_dpo.py).
    Dpo(DpoArgs),
    /// White-box distillation from a teacher model on SFT data (train_distillation.py).
    Distill(DistillArgs),
    /// Reasoning SFT with extra weight on the think/answer tags (train_distill_reason.py).
    Reason(CommonArgs),
    /// GRPO on live rollouts of RLAIF prompts, scored by the reward sources (train_grpo.py).
    Grpo(GrpoArgs),
    /// SPO: one rollout per prompt against an adaptive value baseline (train_spo.py).
    Spo(SpoArgs),
    /// PPO with a critic, an old actor and a KL term to the reference (train_ppo.py).
    Ppo(PpoArgs),
    /// A reward model (trunk + score head, HF LlamaForSequenceClassification) trained with the
    /// Bradley-Terry loss on DPO-format pairs, with held-out pairwise accuracy.
    Reward(super::reward::TrainRewardArgs),
}

/// Where an RL stage's rewards come from; every source given is summed.
#[derive(Args, Clone)]
pub struct RewardArgs {
    /// Rule rewards, `rule:NAME[,NAME...]` (repeatable): reasoning (upstream's <think>/<answer>
    /// format reward, 0..1.5), length (DAPO's overlong penalty, -1..0), repetition (repeated
    /// 3-grams, -1..0).
    #[arg(long = "reward", value_name = "rule:NAME,...")]
    rules: Vec<String>,
    /// A reward model mm runs (a directory `mm train reward` writes): its score, clipped to
    /// ±3 (with rule:reasoning, upstream's 0.4 × reply + 0.6 × answer blend).
    #[arg(long, value_name = "DIR")]
    reward_model: Option<PathBuf>,
    /// A remote scorer speaking vLLM's /pooling API (`vllm serve RM --task reward`, or `mm
    /// serve` over a reward model), scored as --reward-model.
    #[arg(long, value_name = "URL")]
    reward_url: Option<String>,
}

impl RewardArgs {
    /// Every configured source, or an error naming the options when there is none.
    fn rewarder(&self, device: &str) -> Result<mm::train::rewards::Rewarder> {
        let mut rewarder = mm::train::rewards::Rewarder::new();
        let rules = mm::train::rewards::RuleSet::parse_all(&self.rules)?;
        let reasoning = rules.rules().contains(&mm::train::rewards::Rule::Reasoning);
        if !self.rules.is_empty() {
            rewarder.add(Box::new(rules));
        }
        super::reward::add_model_sources(&mut rewarder, self.reward_model.as_deref(), self.reward_url.as_deref(), reasoning, device)?;
        if rewarder.is_empty() {
            bail!("no reward source: pass --reward rule:NAME[,NAME...] (rules: reasoning, length, repetition), --reward-model DIR or --reward-url URL");
        }
        Ok(rewarder)
    }
}

/// The flags GRPO, SPO and PPO share.
#[derive(Args, Clone)]
pub struct RlArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    reward: RewardArgs,
    /// New tokens per rollout at most (upstream max_gen_len). Prompts keep their last
    /// --max-seq-len tokens.
    #[arg(long, default_value_t = 1536)]
    max_gen_len: usize,
    /// Reproduce upstream's quirks instead of mm's fixes: GRPO/SPO attend to the prompts' left
    /// pads; PPO decodes and counts the response from each row's unpadded prompt length, reads
    /// the value at `mask.sum() - 1`, and its critic norms the trunk's output twice.
    #[arg(long)]
    upstream_quirks: bool,
}

#[derive(Args)]
pub struct GrpoArgs {
    #[command(flatten)]
    rl: RlArgs,
    /// Rollouts per prompt (the group whose rewards are normalised together).
    #[arg(long, default_value_t = 8)]
    num_generations: usize,
    /// Weight of the k3 KL estimator to the reference.
    #[arg(long, default_value_t = 0.02)]
    beta: f64,
}

#[derive(Args)]
pub struct SpoArgs {
    #[command(flatten)]
    rl: RlArgs,
    /// Weight of the k3 KL estimator to the reference.
    #[arg(long, default_value_t = 0.02)]
    beta: f64,
}

#[derive(Args)]
pub struct PpoArgs {
    #[command(flatten)]
    rl: RlArgs,
    /// The ratio clip: exp(actor - old) is clamped to 1 ± ε.
    #[arg(long, default_value_t = 0.1)]
    clip_epsilon: f64,
    /// Weight of the critic's value loss.
    #[arg(long, default_value_t = 0.5)]
    vf_coef: f64,
    /// Weight of the KL term to the reference.
    #[arg(long, default_value_t = 0.02)]
    kl_coef: f64,
    /// The critic's peak learning rate (same cosine schedule as the actor's).
    #[arg(long, default_value_t = 8e-8)]
    critic_lr: f64,
    /// Copy the actor into the old actor every N steps.
    #[arg(long, default_value_t = 4)]
    update_old_actor_freq: u64,
}

#[derive(Args)]
pub struct LoraArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Upstream's --lora_name: the file is `<out>/<lora_name>_<hidden>.pth`.
    #[arg(long, default_value = mm::train::lora::DEFAULT_NAME)]
    lora_name: String,
    /// LoRA rank (A is rank × in, B is out × rank).
    #[arg(long, default_value_t = mm::train::lora::DEFAULT_RANK)]
    rank: usize,
}

#[derive(Args)]
pub struct DpoArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// DPO's β: how strongly the policy is kept near the reference.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
}

#[derive(Args)]
pub struct DistillArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The teacher model (any format mm reads).
    #[arg(long)]
    teacher: PathBuf,
    /// Weight of the cross-entropy term; the KL term gets 1 - alpha.
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// Softmax temperature of the distillation KL term.
    #[arg(long, default_value_t = 1.5)]
    temperature: f64,
}

/// The flags every stage shares; `None` means the stage's upstream default.
#[derive(Args, Clone)]
pub struct CommonArgs {
    /// Training data (jsonl in the stage's upstream format).
    #[arg(long)]
    data: PathBuf,
    /// Start from random weights of a preset: small (26M), base (104M), moe, or tiny (a few
    /// million parameters, for quick CPU runs). Pretraining only; its default is small.
    #[arg(long)]
    init: Option<String>,
    /// Start from a model (any format mm reads).
    #[arg(long)]
    from: Option<PathBuf>,
    #[command(flatten)]
    hints: ShapeHints,
    #[arg(long, help = stage_default_help("Passes over the data", |d| d.epochs.to_string()))]
    epochs: Option<u64>,
    #[arg(long, help = stage_default_help("Rows per micro-step (per GPU with --gpus)", |d| d.batch_size.to_string()))]
    batch_size: Option<usize>,
    #[arg(long, help = stage_default_help("Peak learning rate (cosine schedule, as upstream's get_lr)", |d| format!("{:e}", d.lr)))]
    lr: Option<f64>,
    #[arg(long, help = stage_default_help("Tokens per row (upstream max_seq_len)", |d| d.max_seq_len.to_string()))]
    max_seq_len: Option<usize>,
    #[arg(long, help = stage_default_help("Micro-steps summed into one optimizer step", |d| d.accumulation_steps.to_string()))]
    accumulation_steps: Option<u64>,
    /// Global gradient-norm clipping threshold.
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    /// f32, or bf16 (autocast-like: bf16 compute over f32 master weights).
    #[arg(long, default_value = "f32")]
    dtype: String,
    #[arg(long, help = stage_default_help("Save weights and the resume checkpoint every N steps", |d| d.save_interval.to_string()))]
    save_every: Option<u64>,
    #[arg(long, help = stage_default_help("Log every N steps (also at least every 10 s without a terminal)", |d| d.log_interval.to_string()))]
    log_every: Option<u64>,
    /// Output directory (upstream save_dir).
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Weight name prefix (upstream save_weight; default: the stage's).
    #[arg(long)]
    save_weight: Option<String>,
    /// Continue the run saved in `<out>/<save_weight>_<hidden>[_moe]_resume`.
    #[arg(long)]
    resume: bool,
    /// Seed of the random init, the data order and LoRA's init.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop after this many steps in total.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Skip (and count) malformed data lines instead of stopping at the first.
    #[arg(long)]
    skip_bad_lines: bool,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// cpu, cuda or cuda:N (CUDA needs a build with the `cuda` feature). Checkpoints and resume
    /// files are the same whichever device wrote them.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// No progress bar, and no progress lines when stderr is not a terminal.
    #[arg(long)]
    quiet: bool,
    /// Data-parallel over this many GPUs of the host (cuda:0 … cuda:N-1), one process each,
    /// gradients summed with NCCL (upstream: `torchrun --nproc_per_node N`). --batch-size is
    /// per GPU, as upstream's. With an explicit `--device cpu`: N CPU processes sharing the
    /// cores, summing over TCP (as torch's gloo backend).
    #[arg(long, default_value_t = 1)]
    gpus: usize,
}

/// Every stage's upstream defaults, for `--help`.
const STAGES: [(&str, &StageDefaults); 9] = [
    ("pretrain", &PRETRAIN),
    ("sft", &SFT),
    ("lora", &LORA),
    ("dpo", &DPO),
    ("distill", &DISTILL),
    ("reason", &REASON),
    ("grpo", &GRPO),
    ("spo", &SPO),
    ("ppo", &PPO),
];

/// `what [default: pretrain 1, sft 2, …]`: the flags are shared, their defaults are the stage's.
fn stage_default_help(what: &str, value: fn(&StageDefaults) -> String) -> String {
    let values: Vec<String> = STAGES.iter().map(|(name, d)| format!("{name} {}", value(d))).collect();
    format!("{what} [default: {}]", values.join(", "))
}

/// Upstream's argparse defaults per stage.
struct StageDefaults {
    save_weight: &'static str,
    epochs: u64,
    batch_size: usize,
    lr: f64,
    accumulation_steps: u64,
    max_seq_len: usize,
    log_interval: u64,
    save_interval: u64,
}

const PRETRAIN: StageDefaults = StageDefaults {
    save_weight: "pretrain",
    epochs: 1,
    batch_size: 32,
    lr: 5e-4,
    accumulation_steps: 8,
    max_seq_len: 512,
    log_interval: 100,
    save_interval: 100,
};

const SFT: StageDefaults = StageDefaults {
    save_weight: "full_sft",
    epochs: 2,
    batch_size: 16,
    lr: 5e-7,
    accumulation_steps: 1,
    max_seq_len: 512,
    log_interval: 100,
    save_interval: 100,
};

const LORA: StageDefaults = StageDefaults {
    save_weight: "lora",
    epochs: 50,
    batch_size: 32,
    lr: 1e-4,
    accumulation_steps: 1,
    max_seq_len: 512,
    log_interval: 10,
    save_interval: 1,
};

const DPO: StageDefaults = StageDefaults {
    save_weight: "dpo",
    epochs: 1,
    batch_size: 4,
    lr: 4e-8,
    accumulation_steps: 1,
    max_seq_len: 1024,
    log_interval: 100,
    save_interval: 100,
};

const DISTILL: StageDefaults = StageDefaults {
    save_weight: "full_dist",
    epochs: 6,
    batch_size: 32,
    lr: 5e-6,
    accumulation_steps: 1,
    max_seq_len: 512,
    log_interval: 100,
    save_interval: 100,
};

const REASON: StageDefaults = StageDefaults {
    save_weight: "reason",
    epochs: 1,
    batch_size: 8,
    lr: 1e-6,
    accumulation_steps: 1,
    max_seq_len: 1024,
    log_interval: 100,
    save_interval: 100,
};

/// The RL stages: `max_seq_len` is the prompt's length (upstream's 66).
const GRPO: StageDefaults = StageDefaults {
    save_weight: "grpo",
    epochs: 1,
    batch_size: 2,
    lr: 8e-8,
    accumulation_steps: 1,
    max_seq_len: 66,
    log_interval: 1,
    save_interval: 10,
};

const SPO: StageDefaults = StageDefaults { save_weight: "spo", lr: 1e-7, accumulation_steps: 4, ..GRPO };

const PPO: StageDefaults = StageDefaults { save_weight: "ppo_actor", ..GRPO };

pub fn run(a: TrainArgs) -> Result<()> {
    let gpus = match &a.stage {
        Stage::Pretrain(c) | Stage::Sft(c) | Stage::Reason(c) => c.gpus,
        Stage::Lora(l) => l.common.gpus,
        Stage::Dpo(d) => d.common.gpus,
        Stage::Distill(d) => d.common.gpus,
        Stage::Grpo(g) => g.rl.common.gpus,
        Stage::Spo(s) => s.rl.common.gpus,
        Stage::Ppo(p) => p.rl.common.gpus,
        Stage::Reward(_) => 1,
    };
    if gpus == 0 {
        bail!("--gpus 0: pass at least 1");
    }
    // The launcher: start one copy of this command per GPU (or, with an explicit
    // `--device cpu`, per CPU process) and wait for them.
    if gpus > 1 && mm::train::distributed::env_role()?.is_none() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let cpu = args.windows(2).any(|w| w[0] == "--device" && w[1].trim().eq_ignore_ascii_case("cpu"))
            || args.iter().any(|a| a.trim().eq_ignore_ascii_case("--device=cpu"));
        return mm::train::distributed::launch(gpus, &args, cpu);
    }
    match a.stage {
        Stage::Pretrain(c) => run_lm(c, &PRETRAIN, false),
        Stage::Sft(c) => run_lm(c, &SFT, true),
        Stage::Lora(l) => run_lora(l),
        Stage::Dpo(d) => run_dpo(d),
        Stage::Distill(d) => run_distill(d),
        Stage::Reason(c) => run_reason(c),
        Stage::Grpo(g) => {
            let cfg = rl_config(&g.rl, Algorithm::Grpo, g.num_generations, g.beta);
            run_rl(&g.rl, &GRPO, cfg)
        }
        Stage::Spo(s) => {
            let cfg = rl_config(&s.rl, Algorithm::Spo, 1, s.beta);
            run_rl(&s.rl, &SPO, cfg)
        }
        Stage::Ppo(p) => {
            let mut cfg = rl_config(&p.rl, Algorithm::Ppo, 1, 0.0);
            cfg.ppo = PpoConfig { clip_epsilon: p.clip_epsilon, vf_coef: p.vf_coef, kl_coef: p.kl_coef };
            cfg.critic_lr = p.critic_lr;
            cfg.update_old_actor_freq = p.update_old_actor_freq;
            run_rl(&p.rl, &PPO, cfg)
        }
        Stage::Reward(r) => super::reward::run_train(r),
    }
}

/// An RL stage's settings from its flags (PPO's own are set by the caller).
fn rl_config(rl: &RlArgs, algorithm: Algorithm, num_generations: usize, beta: f64) -> RlConfig {
    RlConfig {
        algorithm,
        num_generations,
        max_gen_len: rl.max_gen_len,
        max_prompt_len: 0,
        beta,
        ppo: PpoConfig::default(),
        update_old_actor_freq: 4,
        critic_lr: 8e-8,
        grad_clip: rl.common.grad_clip,
        seed: rl.common.seed,
        compute: candle_core::DType::F32,
        upstream_quirks: rl.upstream_quirks,
    }
}

fn run_rl(rl: &RlArgs, d: &StageDefaults, mut cfg: RlConfig) -> Result<()> {
    let c = &rl.common;
    // Configuration errors before any model is read.
    let rewarder = rl.reward.rewarder(&c.device)?;
    cfg.max_prompt_len = c.max_seq_len.unwrap_or(d.max_seq_len);
    cfg.validate()?;
    let mut p = prepare(c, d, true)?;
    p.opts.schedule = LrSchedule::CosineAnnealing;
    cfg.compute = p.opts.compute_dtype()?;
    cfg.seed = p.opts.seed;
    cfg.grad_clip = p.opts.grad_clip;
    let positions = p.model.config.max_position_embeddings;
    if cfg.max_prompt_len + cfg.max_gen_len > positions {
        bail!(
            "--max-seq-len {} + --max-gen-len {}: prompt and rollout do not fit the model's {positions} positions",
            cfg.max_prompt_len,
            cfg.max_gen_len
        );
    }
    // The reference (and PPO's first critic and old actor) is the model the run started from.
    let start = starting_checkpoint(c, true)?;
    let (tokenizer, _) = mm::loaded::tokenizer_and_template(&p.model.tokenizer)?;
    let mut stage = RlStage::new(cfg, &start, tokenizer, rewarder, &p.model.device)?;
    let ds = RlaifDataset::open(&c.data, p.encoder, p.data_opts).with_context(|| format!("reading {}", c.data.display()))?;
    let loader = loader_for(ds, &p.opts, p.resume.as_ref())?;
    let report = trainer::train(&mut p.model, &mut stage, loader, &p.opts, p.resume.as_ref(), &trainer::save_full_pth)?;
    print_report(&report);
    if mm::train::distributed::current().is_none_or(|p| p.is_main()) {
        print_rewards(&report)?;
    }
    Ok(())
}

/// The mean reward over the first and last (up to) 10 steps, and the reward curve.
fn print_rewards(r: &TrainReport) -> Result<()> {
    let points = mm::train::plot::read_metric_column(&r.metrics_path, "reward")?;
    if points.is_empty() {
        return Ok(());
    }
    let k = points.len().min(10);
    let mean = |s: &[mm::train::plot::MetricPoint]| s.iter().map(|p| p.loss).sum::<f64>() / s.len() as f64;
    println!("reward:  mean {:.4} over the first {k} steps -> {:.4} over the last {k}", mean(&points[..k]), mean(&points[points.len() - k..]));
    let png = r.curve_path.with_file_name(
        r.curve_path.file_name().map(|n| n.to_string_lossy().replace(".loss.png", ".reward.png")).unwrap_or_default(),
    );
    match mm::train::plot::write_metric_curve(&r.metrics_path, "reward", &png) {
        Ok(_) => println!("curve:   {}", png.display()),
        Err(e) => eprintln!("note: no reward curve drawn: {e:#}"),
    }
    Ok(())
}

fn options(c: &CommonArgs, d: &StageDefaults) -> TrainOptions {
    TrainOptions {
        save_weight: c.save_weight.clone().unwrap_or_else(|| d.save_weight.to_string()),
        epochs: c.epochs.unwrap_or(d.epochs),
        batch_size: c.batch_size.unwrap_or(d.batch_size),
        learning_rate: c.lr.unwrap_or(d.lr),
        accumulation_steps: c.accumulation_steps.unwrap_or(d.accumulation_steps),
        grad_clip: c.grad_clip,
        dtype: c.dtype.clone(),
        log_interval: c.log_every.unwrap_or(d.log_interval),
        save_interval: c.save_every.unwrap_or(d.save_interval),
        out_dir: c.out.clone(),
        seed: c.seed,
        max_steps: c.max_steps,
        progress: !c.quiet,
        weights_file: None,
        schedule: Default::default(),
    }
}

/// The starting weights: `--from`, or random weights of `--init` (pretraining only).
fn starting_checkpoint(c: &CommonArgs, from_required: bool) -> Result<Checkpoint> {
    match (&c.from, &c.init) {
        (Some(_), Some(_)) => bail!("pass either --from or --init, not both"),
        (Some(path), None) => read_checkpoint(path, &c.hints.to_hints()?),
        (None, init) => {
            if from_required {
                bail!("this stage starts from a trained model: pass --from MODEL");
            }
            let cfg = MiniMindConfig::preset(init.as_deref().unwrap_or("small"))?;
            random_checkpoint(&cfg, c.seed, TokenizerFiles::builtin_minimind2())
        }
    }
}

/// The model and, with `--resume`, the saved run it continues.
fn model_and_resume(c: &CommonArgs, opts: &mut TrainOptions, from_required: bool) -> Result<(TrainableModel, Option<Resume>)> {
    // Under torchrun/Slurm, `--device cuda` means this node's GPU LOCAL_RANK.
    let device = match mm::train::rendezvous::from_env(|k| std::env::var(k).ok())? {
        Some(l) if c.device.trim().eq_ignore_ascii_case("cuda") && l.world > 1 => super::device_arg(&format!("cuda:{}", l.local_rank))?,
        _ => super::device_arg(&c.device)?,
    };
    if c.resume {
        // The stem depends on the model shape, which the resume directory itself records.
        let probe = starting_checkpoint(c, from_required).ok();
        let stem_model = match &probe {
            Some(ckpt) => ckpt.config.clone(),
            None => MiniMindConfig::preset(c.init.as_deref().unwrap_or("small"))?,
        };
        let moe = if stem_model.use_moe { "_moe" } else { "" };
        let dir = opts.out_dir.join(format!("{}_{}{}_resume", opts.save_weight, stem_model.hidden_size, moe));
        // A run killed while swapping in a new resume directory left the previous one aside.
        mm::converters::atomic::recover_interrupted_swap(&dir)?;
        if dir.exists() {
            let mut r = resume::read(&dir)?;
            // The run continues with its own settings, except the stopping point and, when
            // given, the per-GPU batch size (to keep the global batch on another GPU count).
            let world = world()?;
            let batch_size = c.batch_size.unwrap_or(r.state.options.batch_size);
            if r.state.world != world || batch_size != r.state.options.batch_size {
                eprintln!(
                    "resuming a run saved on {} GPU(s) x {} rows on {world} x {batch_size}: step counters converted",
                    r.state.world, r.state.options.batch_size
                );
                r.state.convert_global_batch(batch_size, world);
            }
            let model = TrainableModel::from_checkpoint(&r.model, &device)?;
            // Outputs always go under this run's --out (state.json's paths are where the run
            // was, not where it may write: a moved or edited resume directory must not send
            // them elsewhere).
            let (max_steps, progress, out_dir) = (opts.max_steps, opts.progress, opts.out_dir.clone());
            *opts = r.state.options.clone();
            opts.max_steps = max_steps;
            opts.progress = progress;
            opts.out_dir = out_dir;
            opts.weights_file = None;
            eprintln!("resuming {} at step {} (epoch {})", dir.display(), r.state.micro_steps, r.state.loader.position.epoch + 1);
            return Ok((model, Some(r)));
        }
        bail!(
            "--resume: no resume checkpoint at {} (for --save-weight {:?}, hidden size {}); run without --resume to start fresh",
            dir.display(),
            opts.save_weight,
            stem_model.hidden_size
        );
    }
    let ckpt = starting_checkpoint(c, from_required)?;
    Ok((TrainableModel::from_checkpoint(&ckpt, &device)?, None))
}

/// Data-parallel ranks of this process's run (1 without `--gpus`).
fn world() -> Result<usize> {
    Ok(mm::train::distributed::env_role()?.map_or(1, |(_, world)| world))
}

/// Every rank walks the same global batches (`world × batch_size` rows) and trains on its
/// share of each.
fn loader_for<D: Dataset>(dataset: D, opts: &TrainOptions, resume: Option<&Resume>) -> Result<Loader<D>> {
    let role = mm::train::distributed::env_role()?;
    let (rank, world) = role.unwrap_or((0, 1));
    let lo = LoaderOptions { batch_size: opts.batch_size * world, epochs: opts.epochs, shuffle: true, seed: opts.seed, drop_last: false };
    let loader = match resume {
        Some(r) => Loader::resume(dataset, lo, &r.state.loader)?,
        None => Loader::new(dataset, lo)?,
    };
    Ok(loader.shard(rank, world))
}

fn run_lm(c: CommonArgs, d: &StageDefaults, sft: bool) -> Result<()> {
    let mut p = prepare(&c, d, sft)?;
    let report = if sft {
        let ds = SftDataset::open(&c.data, p.encoder, p.data_opts).with_context(|| format!("reading {}", c.data.display()))?;
        let loader = loader_for(ds, &p.opts, p.resume.as_ref())?;
        trainer::train(&mut p.model, &mut LanguageModeling, loader, &p.opts, p.resume.as_ref(), &trainer::save_full_pth)?
    } else {
        let ds = PretrainDataset::open(&c.data, p.encoder, p.data_opts).with_context(|| format!("reading {}", c.data.display()))?;
        let loader = loader_for(ds, &p.opts, p.resume.as_ref())?;
        trainer::train(&mut p.model, &mut LanguageModeling, loader, &p.opts, p.resume.as_ref(), &trainer::save_full_pth)?
    };
    print_report(&report);
    Ok(())
}

/// The shared part of every stage: threads, options, model (fresh or resumed), encoder.
struct Prepared {
    opts: TrainOptions,
    model: TrainableModel,
    resume: Option<Resume>,
    encoder: ChatEncoder,
    data_opts: DatasetOptions,
}

/// `--batch-size` and `--max-seq-len` within [`mm_dataset::MAX_BATCH_TOKENS`] and the model's
/// context, before any buffer is sized by them.
fn check_batch_shape(batch_size: usize, max_length: usize, positions: usize) -> Result<()> {
    mm_dataset::check_micro_batch(batch_size, max_length).context("--batch-size / --max-seq-len")?;
    if max_length - 1 > positions {
        bail!("--max-seq-len {max_length}: rows of {} tokens do not fit the model's {positions} positions (max_position_embeddings)", max_length - 1);
    }
    Ok(())
}

fn prepare(c: &CommonArgs, d: &StageDefaults, from_required: bool) -> Result<Prepared> {
    set_threads(c.threads);
    let mut opts = options(c, d);
    opts.validate()?;
    let (model, resume) = model_and_resume(c, &mut opts, from_required)?;
    opts.validate()?;
    let encoder = chat_encoder(&model.tokenizer)?;
    let data_opts = DatasetOptions::new(c.max_seq_len.unwrap_or(d.max_seq_len)).skip_bad_lines(c.skip_bad_lines);
    check_batch_shape(opts.batch_size, data_opts.max_length, model.config.max_position_embeddings)?;
    let main_rank = mm::train::distributed::env_role()?.is_none_or(|(rank, _)| rank == 0);
    if main_rank {
        eprintln!(
            "{}: {:.2}M parameters, training on {} ({})",
            opts.save_weight,
            model.parameter_count() as f64 / 1e6,
            c.data.display(),
            mm::device::describe(&model.device)
        );
    }
    Ok(Prepared { opts, model, resume, encoder, data_opts })
}

fn run_lora(l: LoraArgs) -> Result<()> {
    // Upstream names both the adapter file and the resume checkpoint after --lora_name
    // (`<lora_name>_<hidden>.pth`, `<lora_name>_<hidden>_resume`); so do metrics and curve.
    let mut common = l.common.clone();
    common.save_weight.get_or_insert_with(|| l.lora_name.clone());
    let c = &common;
    let mut p = prepare(c, &LORA, true)?;
    match &p.resume {
        Some(r) => mm::train::lora::restore_lora(&mut p.model, &r.lora)?,
        None => mm::train::lora::add_lora(&mut p.model, l.rank, c.seed)?,
    }
    p.opts.weights_file = Some(mm::train::lora::lora_file_name(&l.lora_name, &p.model.config));
    let ds = SftDataset::open(&c.data, p.encoder, p.data_opts).with_context(|| format!("reading {}", c.data.display()))?;
    let loader = loader_for(ds, &p.opts, p.resume.as_ref())?;
    let report = trainer::train(&mut p.model, &mut LanguageModeling, loader, &p.opts, p.resume.as_ref(), &mm::train::lora::save_lora_pth)?;
    print_report(&report);
    Ok(())
}

fn run_dpo(a: DpoArgs) -> Result<()> {
    let c = &a.common;
    let mut p = prepare(c, &DPO, true)?;
    // The reference is the model the run started from, frozen.
    let reference = starting_checkpoint(c, true)?;
    let reference = mm::model::MiniMind::from_checkpoint(&reference, candle_core::DType::F32, &p.model.device)?;
    let mut objective = mm::train::dpo::Dpo::new(reference, a.beta);
    let ds = DpoDataset::open(&c.data, p.encoder, p.data_opts).with_context(|| format!("reading {}", c.data.display()))?;
    let loader = loader_for(ds, &p.opts, p.resume.as_ref())?;
    let report = trainer::train(&mut p.model, &mut objective, loader, &p.opts, p.resume.as_ref(), &trainer::save_full_pth)?;
    print_report(&report);
    Ok(())
}

fn run_distill(a: DistillArgs) -> Result<()> {
    let c = &a.common;
    let mut p = prepare(c, &DISTILL, true)?;
    let teacher = read_checkpoint(&a.teacher, &c.hints.to_hints()?)?;
    let teacher = mm::model::MiniMind::from_checkpoint(&teacher, candle_core::DType::F32, &p.model.device)?;
    let mut objective = mm::train::distill::Distillation::new(teacher, a.alpha, a.temperature);
    let ds = SftDataset::open(&c.data, p.encoder, p.data_opts).with_context(|| format!("reading {}", c.data.display()))?;
    let loader = loader_for(ds, &p.opts, p.resume.as_ref())?;
    let report = trainer::train(&mut p.model, &mut objective, loader, &p.opts, p.resume.as_ref(), &trainer::save_full_pth)?;
    print_report(&report);
    Ok(())
}

fn run_reason(c: CommonArgs) -> Result<()> {
    let mut p = prepare(&c, &REASON, true)?;
    let mut objective = mm::train::reason::ReasonSft::new(&p.encoder)?;
    let ds = SftDataset::open(&c.data, p.encoder, p.data_opts).with_context(|| format!("reading {}", c.data.display()))?;
    let loader = loader_for(ds, &p.opts, p.resume.as_ref())?;
    let report = trainer::train(&mut p.model, &mut objective, loader, &p.opts, p.resume.as_ref(), &trainer::save_full_pth)?;
    print_report(&report);
    Ok(())
}

fn print_report(r: &TrainReport) {
    if mm::train::distributed::current().is_some_and(|p| !p.is_main()) {
        return;
    }
    let first = r.losses.first().map(|l| l.1).unwrap_or(f64::NAN);
    let last = r.losses.last().map(|l| l.1).unwrap_or(f64::NAN);
    println!("trained {} steps ({} optimizer steps): loss {first:.4} -> {last:.4}", r.micro_steps, r.optimizer_steps);
    if let Some(w) = &r.weights_path {
        println!("weights: {}", w.display());
    }
    println!("resume:  {}", r.resume_path.display());
    println!("metrics: {}", r.metrics_path.display());
    if r.curve_path.exists() {
        match mm::train::plot::loss_scale(&r.metrics_path) {
            Ok(scale) => println!("curve:   {} ({scale})", r.curve_path.display()),
            Err(_) => println!("curve:   {}", r.curve_path.display()),
        }
    }
}
