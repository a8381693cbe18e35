//! `mm bench --train`: training throughput (forward, backward, clipping, AdamW) on random
//! token batches, the measurement `benches/train_throughput.sh` compares with PyTorch.

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device};
use mm::converters::{MiniMindConfig, TokenizerFiles};
use mm::model::init::random_checkpoint;
use mm::train::objective::{LanguageModeling, Objective};
use mm::train::step::{clip_coefficient_on_device, gradients};
use mm::train::{AdamW, AdamWConfig, TrainableModel};
use mm_dataset::LmBatch;
use rand::{rngs::StdRng, Rng, SeedableRng};

pub struct TrainBench {
    pub preset: String,
    pub batch_size: usize,
    pub seq_len: usize,
    pub steps: usize,
    pub dtype: DType,
    pub device: Device,
    /// Also time forward, backward, clipping and AdamW separately (a synchronisation after each).
    pub phases: bool,
    /// On CUDA, replay the step as a recorded CUDA graph (as `mm train` does).
    pub graph: bool,
}

pub fn run(b: &TrainBench) -> Result<()> {
    let cfg = MiniMindConfig::preset(&b.preset)?;
    let ckpt = random_checkpoint(&cfg, 0, TokenizerFiles::default())?;
    let model = TrainableModel::from_checkpoint(&ckpt, &b.device)?;
    let mut optimizer = AdamW::new(AdamWConfig::default(), model.trainable_vars().into_iter())?;
    let mut rng = StdRng::seed_from_u64(0);
    let n = b.batch_size * b.seq_len;
    let batch = LmBatch {
        rows: b.batch_size,
        seq_len: b.seq_len,
        x: (0..n).map(|_| rng.random_range(3..cfg.vocab_size as u32)).collect(),
        y: (0..n).map(|_| rng.random_range(3..cfg.vocab_size as u32)).collect(),
        loss_mask: vec![1.0; n],
        lines: vec![0; b.batch_size],
    };
    println!(
        "train       preset {} ({:.2}M parameters), batch {}×{}, {:?}, {:?}, threads {}",
        b.preset,
        model.parameter_count() as f64 / 1e6,
        b.batch_size,
        b.seq_len,
        b.dtype,
        b.device,
        candle_core::utils::get_num_threads()
    );
    if b.graph && b.device.is_cuda() && !b.phases {
        return run_graph(b, &model, &mut optimizer, &batch, n);
    }
    let mut step = |sync_phases: bool, phases: &mut [f64; 4]| -> Result<()> {
        let mut mark = Instant::now();
        let mut lap = |i: usize| -> Result<()> {
            if sync_phases {
                b.device.synchronize()?;
                phases[i] += mark.elapsed().as_secs_f64();
                mark = Instant::now();
            }
            Ok(())
        };
        let run_model = model.model_for(b.dtype)?;
        let parts = LanguageModeling.loss(&run_model, &batch, &b.device)?;
        lap(0)?;
        let vars = model.trainable_vars();
        let grads = gradients(&parts.loss.to_dtype(DType::F32)?, &vars)?;
        lap(1)?;
        let (_, clip) = clip_coefficient_on_device(&grads, 1.0)?;
        lap(2)?;
        optimizer.step_scaled(&vars, &grads, 5e-4, Some(&clip))?;
        lap(3)?;
        Ok(())
    };
    let mut phases = [0.0f64; 4];
    // One warm-up step: kernel loading, the memory pool's first reservations.
    time_steps(b, n, 1, "", || step(false, &mut phases))?;
    if b.phases {
        // Each phase waited for separately: their sum exceeds the step time above, which
        // lets the CPU run ahead of the GPU.
        let mut phases = [0.0f64; 4];
        let reps = b.steps.max(1);
        for _ in 0..reps {
            step(true, &mut phases)?;
        }
        let names = ["forward+loss", "backward", "clip", "adamw"];
        let parts: Vec<String> =
            names.iter().zip(phases).map(|(n, t)| format!("{n} {:.1} ms", t * 1e3 / reps as f64)).collect();
        println!("phases      {}", parts.join(", "));
    }
    Ok(())
}

/// The step as `mm train` runs it on one GPU: recorded as CUDA graphs on the first step and
/// replayed (train/src/graph_step.rs), the batch uploaded and copied into the recorded step's
/// buffers each step.
fn run_graph(b: &TrainBench, model: &TrainableModel, optimizer: &mut AdamW, batch: &LmBatch, n: usize) -> Result<()> {
    use mm::train::graph_step::GraphedSteps;
    let mut steps = GraphedSteps::new(model, &vec![None; model.trainable.len()])?;
    let mut objective = LanguageModeling;
    let mut losses = Vec::new();
    // The first step runs eagerly and records the graphs; the second is their first replay.
    time_steps(b, n, 2, ", replayed as CUDA graphs", || {
        let inputs = objective.device_inputs(batch, &b.device)?.expect("language modeling hands its batch over");
        losses.push(steps.micro_step(model, &mut objective, inputs, b.dtype, 1)?.loss);
        steps.update(model, optimizer, 5e-4, 1.0)
    })?;
    let read = |t: &candle_core::Tensor| t.to_dtype(DType::F32)?.to_scalar::<f32>();
    if let (Some(first), Some(last)) = (losses.first(), losses.last()) {
        println!("loss        first {:.4}, last {:.4}", read(first)?, read(last)?);
    }
    Ok(())
}

/// Runs `step` `warm_up` times, then times `b.steps` calls (each waited for: CUDA queues the
/// step) and prints the median step, tokens/s and the peak memory since the warm-up (the
/// stream-ordered pool's, and the CUDA graphs' allocations where there are any).
fn time_steps(b: &TrainBench, n: usize, warm_up: usize, how: &str, mut step: impl FnMut() -> Result<()>) -> Result<()> {
    for _ in 0..warm_up {
        step()?;
    }
    b.device.synchronize()?;
    mm::device::reset_peak_memory(&b.device)?;
    let mut times = Vec::new();
    for _ in 0..b.steps {
        let start = Instant::now();
        step()?;
        b.device.synchronize()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!("step        median {median:.4} s over {} steps (after {warm_up} warm-up){how}", times.len());
    println!("throughput  {:.1} tokens/s", n as f64 / median);
    let gib = |v: u64| v as f64 / (1u64 << 30) as f64;
    match (mm::device::peak_memory(&b.device)?, mm::cuda_graph::graph_memory_peak(&b.device)?) {
        (Some(p), Some((used, reserved))) if used > 0 => println!(
            "memory      peak {:.2} GiB in tensors + {:.2} GiB in the graphs' allocations ({:.2} + {:.2} GiB reserved)",
            gib(p.used),
            gib(used),
            gib(p.reserved),
            gib(reserved)
        ),
        (Some(p), _) => println!("memory      peak {:.2} GiB in tensors, {:.2} GiB reserved by the pool", gib(p.used), gib(p.reserved)),
        _ => {}
    }
    Ok(())
}
