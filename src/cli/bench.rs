//! `mm bench`: load time and prefill/decode throughput (CPU, or CUDA with `--device`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Tensor};
use clap::Args;

use mm::converters::pth::checkpoint::PthHints;
use mm::converters::{read_checkpoint, MiniMindConfig, TokenizerFiles};
use mm::model::init::random_checkpoint;
use mm::model::{gguf_holds_quantized, is_gguf_path, GgufModelFile, KvCache, MiniMind};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    /// Model to time loading and running (default: a random model of --preset).
    model: Option<PathBuf>,
    #[arg(long, default_value = "small")]
    preset: String,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 256)]
    prefill: usize,
    /// Tokens decoded one at a time after the prefill.
    #[arg(long, default_value_t = 128)]
    decode: usize,
    #[arg(long)]
    threads: Option<usize>,
    /// Repetitions (the best is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Batched decode: for each N, N sequences (32-token prompts) advance together for
    /// --decode steps, one forward per step; aggregate tokens/s is reported. `none` skips it.
    #[arg(long, default_value = "1,4,16")]
    batches: String,
    /// Time a quantized GGUF dequantized to f32 instead of running its blocks directly.
    #[arg(long)]
    dequantize: bool,
    /// Measure training instead (the same as `mm bench train`).
    #[arg(long)]
    train: bool,
    #[command(flatten)]
    training: TrainBenchArgs,
    /// cpu, cuda or cuda:N (CUDA needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// Training throughput: forward + backward + clipping + AdamW on random batches of
    /// --preset; prints tokens/s, the step time and (on CUDA) peak GPU memory.
    Train {
        #[arg(long, default_value = "small")]
        preset: String,
        #[command(flatten)]
        training: TrainBenchArgs,
        /// cpu, cuda or cuda:N (CUDA needs a build with the `cuda` feature).
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long)]
        threads: Option<usize>,
    },
}

#[derive(Args)]
struct TrainBenchArgs {
    /// Training batch size.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Training sequence length.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Timed training steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Compute dtype. Training: f32 or bf16 (master weights and AdamW stay f32); inference:
    /// f32, f16 or bf16 weights (a GGUF keeps its own types).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Also time forward, backward, clipping and AdamW apart (synchronising after each).
    #[arg(long)]
    phases: bool,
    /// On CUDA, queue each step's kernels one by one instead of replaying the step recorded
    /// once as a CUDA graph (what `mm train` does).
    #[arg(long)]
    no_graph: bool,
}

fn bench_train(preset: &str, t: &TrainBenchArgs, device: &str, threads: Option<usize>) -> Result<()> {
    super::set_threads(threads);
    let dtype = match t.dtype.as_str() {
        "bf16" | "bfloat16" => DType::BF16,
        "f32" | "float32" => DType::F32,
        other => anyhow::bail!("--dtype {other:?}: training computes in f32 or bf16"),
    };
    super::bench_train::run(&super::bench_train::TrainBench {
        preset: preset.to_string(),
        batch_size: t.batch_size,
        seq_len: t.seq_len,
        steps: t.steps.max(1),
        dtype,
        device: super::device_arg(device)?,
        phases: t.phases,
        graph: !t.no_graph,
    })
}

pub fn run(a: BenchArgs) -> Result<()> {
    if let Some(BenchCommand::Train { preset, training, device, threads }) = &a.command {
        return bench_train(preset, training, device, *threads);
    }
    if a.train {
        return bench_train(&a.preset, &a.training, &a.device, a.threads);
    }
    super::set_threads(a.threads);
    let device = super::device_arg(&a.device)?;
    let dtype = mm::converters::checkpoint::parse_dtype(&a.training.dtype)?;
    let threads = candle_core::utils::get_num_threads();
    let (model, summary, load_s, build_s) = match &a.model {
        // A quantized GGUF runs its ggml blocks directly, as `mm generate` does.
        // On the CPU an F16/BF16 GGUF also runs as stored.
        Some(path) if !a.dequantize && is_gguf_path(path) && (device.is_cpu() || gguf_holds_quantized(path)?) => {
            let start = Instant::now();
            let file = GgufModelFile::read(path)?;
            let load_s = start.elapsed().as_secs_f64();
            let start = Instant::now();
            let model = MiniMind::from_gguf(&file, DType::F32, &device)?;
            (model, file.to_string(), Some(load_s), start.elapsed().as_secs_f64())
        }
        _ => {
            let (ckpt, load_s) = match &a.model {
                Some(path) => {
                    let start = Instant::now();
                    let ckpt = read_checkpoint(path, &PthHints::default())?;
                    (ckpt, Some(start.elapsed().as_secs_f64()))
                }
                None => (random_checkpoint(&MiniMindConfig::preset(&a.preset)?, 0, TokenizerFiles::default())?, None),
            };
            let start = Instant::now();
            let model = MiniMind::from_checkpoint(&ckpt, dtype, &device)?;
            (model, ckpt.to_string(), load_s, start.elapsed().as_secs_f64())
        }
    };
    let batches: Vec<usize> = match a.batches.as_str() {
        "" | "none" => Vec::new(),
        list => list
            .split(',')
            .map(|n| n.trim().parse::<usize>().ok().filter(|&n| n > 0))
            .collect::<Option<_>>()
            .ok_or_else(|| anyhow::anyhow!("--batches {list:?}: expected sizes like 1,4,16 or `none`"))?,
    };
    let start = Instant::now();
    let engine = model.prepare_cpu_engine();
    let build_s = build_s + start.elapsed().as_secs_f64();
    let vocab = model.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..a.prefill as u32).map(|i| 3 + (i * 7919) % (vocab - 3)).collect();
    let (mut best_prefill, mut best_decode) = (f64::MAX, f64::MAX);
    for _ in 0..a.repeat.max(1) {
        let mut cache = KvCache::new(&model.config);
        let ids = Tensor::new(prompt.as_slice(), &device)?.unsqueeze(0)?;
        let start = Instant::now();
        let mut logits = model.forward_last(&ids, &mut cache)?;
        device.synchronize()?;
        best_prefill = best_prefill.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        for _ in 0..a.decode {
            let next = logits.argmax(candle_core::D::Minus1)?.to_dtype(DType::U32)?;
            logits = model.forward_last(&next.unsqueeze(0)?, &mut cache)?;
        }
        device.synchronize()?;
        best_decode = best_decode.min(start.elapsed().as_secs_f64());
    }
    println!("model       {summary}");
    let (runtime, threads) = if engine {
        (format!("mm CPU kernels ({:?})", mm_kernels::cpu::level()), mm_kernels::pool::global().threads())
    } else {
        ("candle".to_string(), threads)
    };
    println!("device      {}, threads {threads}, {runtime}", mm::device::describe(&device));
    if let Some(s) = load_s {
        println!("load        {:.3} s (read + validate), model build {:.3} s", s, build_s);
    }
    println!("prefill     {} tokens in {:.3} s = {:.1} tokens/s", a.prefill, best_prefill, a.prefill as f64 / best_prefill);
    println!("decode      {} tokens in {:.3} s = {:.1} tokens/s", a.decode, best_decode, a.decode as f64 / best_decode);
    for n in batches {
        let secs = batched_decode(&model, n, a.decode, a.repeat)?;
        let total = n * a.decode;
        println!("batched {n:<3} {total} tokens ({n} sequences x {}) in {secs:.3} s = {:.1} tokens/s", a.decode, total as f64 / secs);
    }
    Ok(())
}

/// Best time of `repeat` runs of `steps` decode steps for `n` sequences advancing together
/// (`MiniMind::forward_step_batch`, as `mm serve` runs them), each after its own 32-token
/// prompt; greedy.
fn batched_decode(model: &MiniMind, n: usize, steps: usize, repeat: usize) -> Result<f64> {
    let vocab = model.config.vocab_size as u32;
    let mut best = f64::MAX;
    for _ in 0..repeat.max(1) {
        let mut caches: Vec<KvCache> = (0..n).map(|_| KvCache::new(&model.config)).collect();
        let mut next = Vec::with_capacity(n);
        for (s, cache) in caches.iter_mut().enumerate() {
            let prompt: Vec<u32> = (0..32u32).map(|i| 3 + (i * 7919 + s as u32 * 104_729) % (vocab - 3)).collect();
            let logits = model.forward_last(&Tensor::new(prompt.as_slice(), model.device())?.unsqueeze(0)?, cache)?;
            next.push(logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?);
        }
        model.device().synchronize()?;
        let start = Instant::now();
        for _ in 0..steps {
            let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
            let logits = model.forward_step_batch(&next, &mut refs)?;
            next = logits.argmax(candle_core::D::Minus1)?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        }
        model.device().synchronize()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}
