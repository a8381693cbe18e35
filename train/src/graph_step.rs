//! The CUDA training step recorded once as two CUDA graphs and replayed: the micro-step
//! (forward, loss, backward, gradients added into buffers) and the update (global-norm clip,
//! AdamW, buffers zeroed). A MiniMind step is ~1,300 kernel launches; queuing them one by one
//! costs the host about as long as the GPU takes to run them, a replay costs one call.
//!
//! Replays read and write only memory that existed when they were recorded, so:
//! * the batch is copied into the recorded step's input buffers before each replay (a batch of
//!   another shape, such as an epoch's short last batch, runs eagerly over the same buffers);
//! * gradients accumulate in one f32 buffer per parameter (`acc += g` is bit-identical to the
//!   eager loop's `acc + g`, and `0 + g` to its first `g`);
//! * the learning rate and AdamW's bias corrections are written to the device by
//!   `AdamW::begin_step` before the update is replayed;
//! * the loss and the logged figures land in fixed one-element buffers, copied out per step.
//!
//! Used for stages that can hand their batch over as device tensors
//! ([`Objective::device_inputs`]) on one CUDA device with a dense model (an MoE router picks
//! experts on the host). `MM_CUDA_GRAPH=0` turns it off; a step that cannot be recorded (an op
//! reading from the host) leaves a note and the run goes on eagerly. `MM_CUDA_GRAPH=buffers` takes this
//! path on any device without recording (every step runs its closures eagerly): the tests use
//! it on the CPU to check the buffers, updates and resume state against the eager loop.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use mm_model::cuda_graph::{Graph, UploadCache};

use crate::adamw::AdamW;
use crate::objective::{LossParts, Objective};
use crate::params::TrainableModel;
use crate::step::clip_coefficient_on_device;

/// Whether this run may record its step (before looking at the stage's batches).
pub fn allowed(model: &TrainableModel, data_parallel: bool) -> bool {
    let setting = std::env::var("MM_CUDA_GRAPH").unwrap_or_default();
    let device_ok = model.device.is_cuda() || setting == "buffers";
    device_ok && setting != "0" && !data_parallel && !model.config.use_moe
}

pub struct GraphedSteps {
    device: Device,
    /// One f32 buffer per trainable parameter: the gradient summed since the last update.
    grads: Vec<Tensor>,
    /// Whether `grads` hold a partial sum (a micro-step ran since the last update).
    holding: bool,
    loss: Tensor,
    logged: Vec<(&'static str, Tensor)>,
    /// The recorded micro-step and the input buffers it reads.
    micro: Option<(Vec<Tensor>, Graph)>,
    update: Option<Graph>,
    /// Whether steps are recorded: on CUDA, until a recording fails (an op that reads from the
    /// host, say); otherwise every step runs eagerly over the same buffers.
    record: bool,
}

impl GraphedSteps {
    /// Buffers for `model`'s parameters, holding `accumulated` (a resumed half-accumulated
    /// gradient) where given.
    pub fn new(model: &TrainableModel, accumulated: &[Option<Tensor>]) -> Result<Self> {
        let device = model.device.clone();
        let mut grads = Vec::new();
        for (var, acc) in model.trainable_vars().iter().zip(accumulated) {
            let buf = Tensor::zeros(var.dims(), DType::F32, &device)?;
            if let Some(acc) = acc {
                buf.slice_set(&acc.to_dtype(DType::F32)?.to_device(&device)?.contiguous()?, 0, 0)?;
            }
            grads.push(buf);
        }
        let holding = accumulated.iter().any(Option::is_some);
        Ok(Self { loss: Tensor::zeros(1, DType::F32, &device)?, record: device.is_cuda(), device, grads, holding, logged: Vec::new(), micro: None, update: None })
    }

    /// One micro-step over `inputs` (from [`Objective::device_inputs`]), its loss divided by
    /// `accumulation` before the backward pass. Returns the step's loss and logged figures
    /// (device tensors of its own, not overwritten by the next step).
    pub fn micro_step<O: Objective>(
        &mut self,
        model: &TrainableModel,
        objective: &mut O,
        inputs: Vec<Tensor>,
        compute: DType,
        accumulation: u64,
    ) -> Result<LossParts> {
        let recorded_shape = self.micro.as_ref().is_some_and(|(ins, _)| ins.iter().map(|t| t.dims()).eq(inputs.iter().map(|t| t.dims())));
        if recorded_shape {
            let (buffers, graph) = self.micro.as_ref().expect("checked above");
            for (dst, src) in buffers.iter().zip(&inputs) {
                dst.slice_set(src, 0, 0)?;
            }
            graph.launch()?;
        } else if self.micro.is_some() || !self.record {
            // Another shape (a short last batch), or no CUDA: eagerly, into the same buffers.
            run_micro(model, objective, &inputs, compute, accumulation, &self.grads, &self.loss, &mut self.logged)?;
        } else {
            // The first step runs eagerly (loading kernels, leaving candle's small uploads
            // on the device for the recording), then is recorded over its own inputs.
            {
                let _cache = UploadCache::hold(&self.device)?;
                run_micro(model, objective, &inputs, compute, accumulation, &self.grads, &self.loss, &mut self.logged)?;
            }
            let (grads, loss, logged) = (&self.grads, &self.loss, &mut self.logged);
            match Graph::record(&self.device, || run_micro(model, objective, &inputs, compute, accumulation, grads, loss, logged)) {
                Ok(graph) => {
                    self.micro = Some((inputs, graph));
                    mm_model::device::release_unused_memory(&self.device)?;
                }
                Err(e) => self.fall_back("training step", e),
            }
        }
        self.holding = true;
        Ok(LossParts {
            loss: self.loss.reshape(())?.copy()?,
            logged: self.logged.iter().map(|(n, t)| Ok((*n, t.reshape(())?.copy()?))).collect::<Result<_>>()?,
        })
    }

    /// Clips the summed gradients to `max_norm`, takes an AdamW step at `lr` and zeroes them.
    pub fn update(&mut self, model: &TrainableModel, optimizer: &mut AdamW, lr: f64, max_norm: f64) -> Result<()> {
        optimizer.begin_step(lr)?;
        let vars = model.trainable_vars();
        let grads: Vec<Option<Tensor>> = self.grads.iter().cloned().map(Some).collect();
        let run = |optimizer: &AdamW| -> Result<()> {
            let (_, clip) = clip_coefficient_on_device(&grads, max_norm)?;
            optimizer.apply(&vars, &grads, Some(&clip))?;
            for g in &self.grads {
                g.zero_set()?;
            }
            Ok(())
        };
        match &self.update {
            Some(graph) => graph.launch()?,
            None if !self.record => run(optimizer)?,
            None => {
                {
                    let _cache = UploadCache::hold(&self.device)?;
                    run(optimizer)?;
                }
                match Graph::record(&self.device, || run(optimizer)) {
                    Ok(graph) => self.update = Some(graph),
                    Err(e) => self.fall_back("optimizer step", e),
                }
            }
        }
        self.holding = false;
        Ok(())
    }

    /// After a failed recording (nothing of it ran; the eager step before it did): say so once
    /// and train on without graphs.
    fn fall_back(&mut self, what: &str, e: anyhow::Error) {
        eprintln!("note: the {what} could not be recorded as a CUDA graph, so training goes on without graphs: {e:#}");
        self.record = false;
        self.micro = None;
        self.update = None;
    }

    /// The half-accumulated gradient as the eager loop keeps it (for a resume checkpoint):
    /// copies of the buffers, or all None right after an update.
    pub fn accumulated(&self) -> Result<Vec<Option<Tensor>>> {
        if !self.holding {
            return Ok(vec![None; self.grads.len()]);
        }
        Ok(self.grads.iter().map(|g| g.copy().map(Some)).collect::<candle_core::Result<_>>()?)
    }
}

/// Forward, loss and backward over `inputs`, the gradients added into `grads`, the loss and
/// logged figures written into their buffers: what the micro-step graph records.
#[allow(clippy::too_many_arguments)]
fn run_micro<O: Objective>(
    model: &TrainableModel,
    objective: &mut O,
    inputs: &[Tensor],
    compute: DType,
    accumulation: u64,
    grads: &[Tensor],
    loss_out: &Tensor,
    logged_out: &mut Vec<(&'static str, Tensor)>,
) -> Result<()> {
    let run_model = model.model_for(compute)?;
    let parts = objective.loss_from_inputs(&run_model, inputs)?;
    let scaled = (parts.loss.to_dtype(DType::F32)? / accumulation as f64)?;
    let store = scaled.backward()?;
    for ((name, var), buf) in model.trainable.iter().zip(grads) {
        let Some(g) = store.get(var.as_tensor()) else {
            bail!("{name} got no gradient; a recorded step needs every parameter's (MM_CUDA_GRAPH=0 trains without one)");
        };
        mm_model::fused::accumulate_(buf, &g.to_dtype(DType::F32)?)?;
    }
    loss_out.slice_set(&parts.loss.detach().to_dtype(DType::F32)?.reshape(1)?, 0, 0)?;
    if logged_out.is_empty() {
        // Made on the eager first step, before any recording.
        for (name, _) in &parts.logged {
            logged_out.push((*name, Tensor::zeros(1, DType::F32, loss_out.device())?));
        }
    }
    if logged_out.len() != parts.logged.len() {
        bail!("the stage logged {} figures after {} before", parts.logged.len(), logged_out.len());
    }
    for ((_, dst), (_, src)) in logged_out.iter().zip(&parts.logged) {
        dst.slice_set(&src.to_dtype(DType::F32)?.reshape(1)?, 0, 0)?;
    }
    Ok(())
}
