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
    step(false, &mut phases)?; // warm-up: kernel loading, the memory pool's first reservations
    b.device.synchronize()?;
    mm::device::reset_peak_memory(&b.device)?;
    let mut times = Vec::new();
    for _ in 0..b.steps {
        let start = Instant::now();
        step(false, &mut phases)?;
        b.device.synchronize()?; // CUDA queues the step; time it to the end
        times.push(start.elapsed().as_secs_f64());
    }
    let peak = mm::device::peak_memory(&b.device)?;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!("step        median {:.4} s over {} steps (after 1 warm-up)", median, times.len());
    println!("throughput  {:.1} tokens/s", n as f64 / median);
    if let Some(p) = peak {
        println!(
            "memory      peak {:.2} GiB in tensors, {:.2} GiB reserved by the pool",
            p.used as f64 / (1u64 << 30) as f64,
            p.reserved as f64 / (1u64 << 30) as f64
        );
    }
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
    use mm::cuda_graph::graph_memory_peak;
    use mm::train::graph_step::GraphedSteps;
    let mut steps = GraphedSteps::new(model, &vec![None; model.trainable.len()])?;
    let mut objective = LanguageModeling;
    let mut step = |optimizer: &mut AdamW| -> Result<candle_core::Tensor> {
        let inputs = objective.device_inputs(batch, &b.device)?.expect("language modeling hands its batch over");
        let parts = steps.micro_step(model, &mut objective, inputs, b.dtype, 1)?;
        steps.update(model, optimizer, 5e-4, 1.0)?;
        Ok(parts.loss)
    };
    // The first step runs eagerly and records the graphs; the second is their first replay.
    step(optimizer)?;
    step(optimizer)?;
    b.device.synchronize()?;
    mm::device::reset_peak_memory(&b.device)?;
    let mut times = Vec::new();
    let mut losses = Vec::new();
    for _ in 0..b.steps {
        let start = Instant::now();
        let loss = step(optimizer)?;
        b.device.synchronize()?;
        times.push(start.elapsed().as_secs_f64());
        losses.push(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
    }
    let peak = mm::device::peak_memory(&b.device)?;
    let graph_peak = graph_memory_peak(&b.device)?;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!("step        median {:.4} s over {} steps (after 2 warm-up), replayed as CUDA graphs", median, times.len());
    println!("throughput  {:.1} tokens/s", n as f64 / median);
    println!("loss        first {:.4}, last {:.4}", losses[0], losses[losses.len() - 1]);
    if let (Some(p), Some((gu, gr))) = (peak, graph_peak) {
        let gib = |v: u64| v as f64 / (1u64 << 30) as f64;
        println!(
            "memory      peak {:.2} GiB in tensors + {:.2} GiB in the graphs' allocations ({:.2} + {:.2} GiB reserved)",
            gib(p.used),
            gib(gu),
            gib(p.reserved),
            gib(gr)
        );
    }
    Ok(())
}
