//! The resume checkpoint: everything a killed run needs to continue exactly where it stopped
//! (weights and adapters in f32, AdamW moments, a half-accumulated gradient, the step counters
//! and the data position). It is a directory written atomically next to the weights:
//! `model/` (an HF MiniMind dir, f32), `lora.safetensors`, `optimizer.safetensors`,
//! `state.json`, and the stage's own `objective.safetensors` / `objective.json` (RL stages).

use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};
use mm_dataset::LoaderState;
use serde::{Deserialize, Serialize};

use mm_converters::hf::{self, HfLayout, DEFAULT_MAX_SHARD_BYTES};
use mm_converters::safetensors_file;
use mm_converters::{atomic::write_output_dir, Checkpoint, Provenance};
use crate::adamw::AdamW;
use crate::objective::ObjectiveState;
use crate::params::TrainableModel;
use crate::trainer::TrainOptions;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeState {
    pub micro_steps: u64,
    pub optimizer_step: u64,
    pub loader: LoaderState,
    pub options: TrainOptions,
    /// Data-parallel ranks of the run that saved it (the global batch is
    /// `world × options.batch_size`; older files are single-process).
    #[serde(default = "one")]
    pub world: usize,
}

fn one() -> usize {
    1
}

impl ResumeState {
    /// Re-expresses the step counters for a run continuing with `batch_size` rows per rank on
    /// `world` ranks (upstream converts its step count when the GPU count changes). The data
    /// position is in samples and carries over; the batch count within the epoch is
    /// recomputed from it for the new global batch, and the micro-step count is scaled by
    /// old global batch / new global batch (unchanged when the global batch is kept). AdamW's
    /// step count is the number of updates actually taken and stays.
    pub fn convert_global_batch(&mut self, batch_size: usize, world: usize) {
        let old = (self.options.batch_size * self.world) as u64;
        let new = (batch_size * world) as u64;
        if new == 0 || (old == new && world == self.world) {
            self.options.batch_size = batch_size;
            self.world = world;
            return;
        }
        self.loader.step_in_epoch = self.loader.position.index / new;
        self.loader.batches = self.loader.batches * old / new;
        self.micro_steps = self.micro_steps * old / new;
        self.options.batch_size = batch_size;
        self.world = world;
    }
}

/// A resume checkpoint read back.
pub struct Resume {
    pub state: ResumeState,
    /// The weights (f32) with config and tokenizer.
    pub model: Checkpoint,
    /// LoRA branches: (module, A, B).
    pub lora: Vec<(String, Tensor, Tensor)>,
    /// `exp_avg.<name>`, `exp_avg_sq.<name>`, `accum.<name>`.
    optimizer: Vec<(String, Tensor)>,
    /// The stage's own state, when it saved one.
    pub objective: Option<ObjectiveState>,
}

const LORA_FILE: &str = "lora.safetensors";
const OBJECTIVE_TENSORS: &str = "objective.safetensors";
const OBJECTIVE_JSON: &str = "objective.json";

#[derive(Serialize, Deserialize)]
struct StateFile {
    format_version: u32,
    #[serde(flatten)]
    state: ResumeState,
}

/// Writes the resume directory; `extra` is the stage's own state (RL: value tracker, critic,
/// old actor), as `objective.safetensors` and `objective.json`.
pub fn write(
    dir: &Path,
    model: &TrainableModel,
    optimizer: &AdamW,
    accumulated: &[Option<Tensor>],
    state: &ResumeState,
    extra: Option<&ObjectiveState>,
) -> Result<()> {
    let ckpt = model.to_checkpoint(DType::F32, Provenance::new("mm train resume", dir))?;
    let cpu = |t: &Tensor| t.to_device(&candle_core::Device::Cpu);
    let mut lora = Vec::new();
    for (module, a, b) in &model.lora {
        lora.push((format!("{module}.lora.A.weight"), cpu(a.as_tensor())?));
        lora.push((format!("{module}.lora.B.weight"), cpu(b.as_tensor())?));
    }
    let mut moments = Vec::new();
    for (i, (name, _)) in model.trainable.iter().enumerate() {
        moments.push((format!("exp_avg.{name}"), cpu(&optimizer.exp_avg[i])?));
        moments.push((format!("exp_avg_sq.{name}"), cpu(&optimizer.exp_avg_sq[i])?));
        if let Some(g) = &accumulated[i] {
            moments.push((format!("accum.{name}"), cpu(g)?));
        }
    }
    let file = StateFile { format_version: FORMAT_VERSION, state: state.clone() };
    // A run with LoRA adapters writes lora.safetensors; the model/ folder is an HF directory.
    let known = |rel: &Path| {
        [LORA_FILE, OBJECTIVE_TENSORS, OBJECTIVE_JSON].iter().any(|f| rel == Path::new(f))
            || rel.strip_prefix("model").is_ok_and(hf::is_hf_output_file)
    };
    let extra_tensors = match extra {
        Some(e) => e.tensors.iter().map(|(n, t)| Ok((n.clone(), cpu(t)?))).collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    write_output_dir(dir, &known, |tmp| {
        hf::write(&ckpt, &tmp.join("model"), HfLayout::MiniMind, DEFAULT_MAX_SHARD_BYTES)?;
        if !lora.is_empty() {
            safetensors_file::write_file(&tmp.join("lora.safetensors"), &lora)?;
        }
        safetensors_file::write_file(&tmp.join("optimizer.safetensors"), &moments)?;
        std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(&file)?)?;
        if let Some(e) = extra {
            if !extra_tensors.is_empty() {
                safetensors_file::write_file(&tmp.join(OBJECTIVE_TENSORS), &extra_tensors)?;
            }
            std::fs::write(tmp.join(OBJECTIVE_JSON), serde_json::to_string_pretty(&e.json)?)?;
        }
        Ok(())
    })
}

pub fn read(dir: &Path) -> Result<Resume> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).with_context(|| format!("cannot read {}", state_path.display()))?;
    let file: StateFile = serde_json::from_str(&text).with_context(|| format!("{}: not a resume state", state_path.display()))?;
    ensure!(
        file.format_version == FORMAT_VERSION,
        "{}: resume format {} (this mm writes {FORMAT_VERSION})",
        state_path.display(),
        file.format_version
    );
    let model = hf::read(&dir.join("model"))?;
    let lora_path = dir.join("lora.safetensors");
    let mut lora = Vec::new();
    if lora_path.exists() {
        let tensors = safetensors_file::read_file(&lora_path)?;
        for (name, a) in &tensors {
            if let Some(module) = name.strip_suffix(".lora.A.weight") {
                let b_name = format!("{module}.lora.B.weight");
                let b = tensors.iter().find(|(n, _)| *n == b_name).with_context(|| format!("{}: {b_name} missing", lora_path.display()))?;
                lora.push((module.to_string(), a.clone(), b.1.clone()));
            }
        }
    }
    let optimizer = safetensors_file::read_file(&dir.join("optimizer.safetensors"))?;
    let json_path = dir.join(OBJECTIVE_JSON);
    let objective = if json_path.exists() {
        let text = std::fs::read_to_string(&json_path).with_context(|| format!("cannot read {}", json_path.display()))?;
        let json = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", json_path.display()))?;
        let tensors_path = dir.join(OBJECTIVE_TENSORS);
        let tensors = if tensors_path.exists() { safetensors_file::read_file(&tensors_path)? } else { Vec::new() };
        Some(ObjectiveState { tensors, json })
    } else {
        None
    };
    Ok(Resume { state: file.state, model, lora, optimizer, objective })
}

/// Puts the saved AdamW moments and partial gradients back for the model's trainable tensors.
pub fn restore_optimizer(resume: &Resume, model: &TrainableModel, optimizer: &mut AdamW, accumulated: &mut [Option<Tensor>]) -> Result<()> {
    let find = |key: String| resume.optimizer.iter().find(|(n, _)| *n == key).map(|(_, t)| t.clone());
    for (i, (name, var)) in model.trainable.iter().enumerate() {
        let device = var.device();
        let m = find(format!("exp_avg.{name}")).with_context(|| format!("resume state has no moments for {name}"))?;
        let v = find(format!("exp_avg_sq.{name}")).with_context(|| format!("resume state has no moments for {name}"))?;
        ensure!(m.dims() == var.dims(), "resume moments for {name} have shape {:?}, not {:?}", m.dims(), var.dims());
        optimizer.exp_avg[i] = m.to_device(device)?;
        optimizer.exp_avg_sq[i] = v.to_device(device)?;
        accumulated[i] = find(format!("accum.{name}")).map(|g| g.to_device(device)).transpose()?;
    }
    optimizer.step = resume.state.optimizer_step;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(batch_size: usize, world: usize, index: u64, step: u64, micro: u64) -> ResumeState {
        let options: TrainOptions = serde_json::from_value(serde_json::json!({
            "save_weight": "pretrain", "epochs": 1, "batch_size": batch_size, "learning_rate": 5e-4,
            "accumulation_steps": 1, "grad_clip": 1.0, "dtype": "f32", "log_interval": 1,
            "save_interval": 1, "out_dir": "out", "seed": 42, "max_steps": null, "progress": false
        }))
        .unwrap();
        ResumeState {
            micro_steps: micro,
            optimizer_step: micro,
            loader: LoaderState {
                position: mm_dataset::Position { epoch: 0, index },
                seed: 42,
                shuffle: true,
                dataset_len: 1000,
                skipped_at_read: 0,
                step_in_epoch: step,
                batches: step,
            },
            options,
            world,
        }
    }

    #[test]
    fn world_change_keeps_the_data_position_and_converts_steps() {
        // 2 GPUs x 4 rows, 13 batches of 8 samples; on 1 GPU x 4 rows the steps double.
        let mut s = state(4, 2, 104, 13, 13);
        s.convert_global_batch(4, 1);
        assert_eq!((s.loader.position.index, s.loader.step_in_epoch, s.micro_steps, s.optimizer_step), (104, 26, 26, 13));
        // Keeping the global batch (1 GPU x 8) keeps the counters.
        let mut s = state(4, 2, 104, 13, 13);
        s.convert_global_batch(8, 1);
        assert_eq!((s.loader.step_in_epoch, s.micro_steps, s.world, s.options.batch_size), (13, 13, 1, 8));
    }

    #[test]
    fn older_state_files_are_single_process() {
        let mut v = serde_json::to_value(state(4, 1, 0, 0, 0)).unwrap();
        v.as_object_mut().unwrap().remove("world");
        let s: ResumeState = serde_json::from_value(v).unwrap();
        assert_eq!(s.world, 1);
    }
}
