//! What a training stage contributes to the shared loop: the loss of one micro-batch.

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use mm_dataset::LmBatch;

use mm_model::model::{MiniMind, Mode};
use crate::loss::{masked_mean, per_token_ce};
use crate::params::TrainableModel;

/// The loss of a micro-batch plus the figures worth logging (name, scalar tensor). The
/// figures stay on the device until the trainer writes a log line, so a step never waits
/// for the GPU to read them.
pub struct LossParts {
    pub loss: Tensor,
    pub logged: Vec<(&'static str, Tensor)>,
}

/// A training stage: pretrain and SFT share [`LanguageModeling`]; DPO, distillation and
/// reasoning SFT bring their own.
pub trait Objective {
    type Batch;
    /// The loss of one micro-batch under `model` (built for this step, in train mode).
    fn loss(&mut self, model: &MiniMind, batch: &Self::Batch, device: &Device) -> Result<LossParts>;
    /// Tokens the batch trains on (for tokens/s).
    fn tokens(&self, batch: &Self::Batch) -> usize;

    /// What the loss is a mean over (its denominator: loss tokens by default; DPO's pairs, the
    /// RL stages' prompts). Data-parallel ranks weigh their loss by their share of the global
    /// batch's count, so the summed gradient is that of the global batch's mean.
    fn loss_denominator(&self, batch: &Self::Batch) -> usize {
        self.tokens(batch)
    }

    /// The batch uploaded as the device tensors [`loss_from_inputs`](Self::loss_from_inputs)
    /// takes, for a stage whose whole step can be recorded as a CUDA graph and replayed over
    /// other batches (fixed shapes, nothing read back to the host). None (the default): the
    /// stage runs eagerly.
    fn device_inputs(&self, _batch: &Self::Batch, _device: &Device) -> Result<Option<Vec<Tensor>>> {
        Ok(None)
    }

    /// [`loss`](Self::loss) from what [`device_inputs`](Self::device_inputs) uploaded.
    fn loss_from_inputs(&mut self, _model: &MiniMind, _inputs: &[Tensor]) -> Result<LossParts> {
        anyhow::bail!("this stage does not compute its loss from device inputs")
    }

    // Stages with state of their own (the RL stages: rollout seeds, SPO's value tracker, PPO's
    // critic and old actor) hook into the loop here; the defaults do nothing.

    /// Called before [`loss`](Self::loss) with the run's 0-based micro-step (the same on a
    /// resumed run as on an uninterrupted one) and where the batch came from (data parallel:
    /// where this rank's rows start in the global batch, and whether it is a stand-in).
    fn begin_step(&mut self, _micro_step: u64, _batch: &mm_dataset::BatchInfo) -> Result<()> {
        Ok(())
    }

    /// The gradients of the micro-step's (scaled) loss, for parameters the stage owns itself.
    fn collect_gradients(&mut self, _grads: &GradStore) -> Result<()> {
        Ok(())
    }

    /// Called after each micro-step; `update` is `Some` when the optimizer stepped on it.
    /// `step_in_epoch` counts from 1 (upstream's `step`).
    fn after_step(&mut self, _model: &TrainableModel, _update: Option<&StepUpdate>, _step_in_epoch: u64) -> Result<()> {
        Ok(())
    }

    /// The stage's own state for the resume checkpoint (None: it has none).
    fn state(&self) -> Result<Option<ObjectiveState>> {
        Ok(None)
    }

    /// Puts back what [`state`](Self::state) saved.
    fn restore(&mut self, _state: &ObjectiveState) -> Result<()> {
        Ok(())
    }
}

/// An optimizer step the trainer just took.
#[derive(Debug, Clone, Copy)]
pub struct StepUpdate {
    /// The learning rate it used.
    pub lr: f64,
    /// The run's peak learning rate (`--lr`), for stages scaling their own schedule.
    pub peak_lr: f64,
}

/// A stage's own resume state: tensors (`objective.safetensors`) and JSON (`objective.json`).
#[derive(Debug, Clone, Default)]
pub struct ObjectiveState {
    pub tensors: Vec<(String, Tensor)>,
    pub json: serde_json::Value,
}

/// `[rows, seq_len]` tensors of a batch on `device`: X, Y and the loss mask (f32).
pub fn batch_tensors(batch: &LmBatch, device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let shape = [batch.rows, batch.seq_len];
    Ok((
        mm_model::device::upload(&batch.x, &shape, device)?,
        mm_model::device::upload(&batch.y, &shape, device)?,
        mm_model::device::upload(&batch.loss_mask, &shape, device)?,
    ))
}

/// Upstream's pretrain / full-SFT loss: masked mean cross-entropy plus the MoE aux loss.
pub struct LanguageModeling;

/// [`LanguageModeling`]'s loss of a batch already on the device (X, Y, loss mask as
/// [`batch_tensors`] makes them).
pub fn language_modeling_loss(model: &MiniMind, x: &Tensor, y: &Tensor, mask: &Tensor) -> Result<LossParts> {
    let out = model.forward(x, None, None, Mode::Training)?;
    let ce = masked_mean(&per_token_ce(&out.logits, y)?, mask)?;
    let mut logged = vec![("ce", ce.detach())];
    let loss = match out.aux_loss {
        Some(aux) => {
            logged.push(("aux", aux.detach()));
            ce.broadcast_add(&aux.to_dtype(ce.dtype())?)?
        }
        None => ce,
    };
    Ok(LossParts { loss, logged })
}

impl Objective for LanguageModeling {
    type Batch = LmBatch;

    fn loss(&mut self, model: &MiniMind, batch: &LmBatch, device: &Device) -> Result<LossParts> {
        let (x, y, mask) = batch_tensors(batch, device)?;
        language_modeling_loss(model, &x, &y, &mask)
    }

    fn tokens(&self, batch: &LmBatch) -> usize {
        batch.loss_mask.iter().filter(|&&m| m > 0.0).count()
    }

    fn device_inputs(&self, batch: &LmBatch, device: &Device) -> Result<Option<Vec<Tensor>>> {
        let (x, y, mask) = batch_tensors(batch, device)?;
        Ok(Some(vec![x, y, mask]))
    }

    fn loss_from_inputs(&mut self, model: &MiniMind, inputs: &[Tensor]) -> Result<LossParts> {
        let [x, y, mask] = inputs else { anyhow::bail!("language modeling takes X, Y and the loss mask") };
        language_modeling_loss(model, x, y, mask)
    }
}
