//! Resuming `mm train reward`: after every `--save-every` steps and every epoch, the trunk, the
//! score head and AdamW's moments go to `state.safetensors` and the position (epoch, next batch,
//! steps, losses, held-out accuracies, and the options that decide the data order) to
//! `state.json`, both in the run's resume directory. `--resume` continues from there and gives
//! the steps an uninterrupted run would have taken.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use mm_converters::atomic::write_file_atomically;
use mm_converters::output_guard::FileKind;
use mm_converters::safetensors_file;

use crate::adamw::AdamW;
use crate::TrainableModel;

/// Where and how often a run saves, and whether it continues a saved one.
#[derive(Debug, Clone)]
pub struct Checkpointing {
    pub dir: PathBuf,
    /// Save after every this many steps (and after every epoch).
    pub every: u64,
    pub resume: bool,
}

/// Where the run stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub step: u64,
    pub epoch: u64,
    /// The next batch of `epoch`.
    pub next_batch: usize,
    pub optimizer_step: u64,
    pub losses: Vec<(u64, f64)>,
    pub epoch_accuracy: Vec<f64>,
    /// What decides the data order and the schedule; a resumed run must match it.
    pub run: RunKey,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunKey {
    pub epochs: u64,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub max_seq_len: usize,
    pub held_out: f64,
    pub seed: u64,
    pub pairs: usize,
}

const TENSORS: &str = "state.safetensors";
const POSITION: &str = "state.json";

fn tensors(model: &TrainableModel, score: &Var, optimizer: &AdamW) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = model.trainable.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    out.push(("score.weight".into(), score.as_tensor().clone()));
    for (i, (m, v)) in optimizer.exp_avg.iter().zip(&optimizer.exp_avg_sq).enumerate() {
        out.push((format!("exp_avg.{i}"), m.clone()));
        out.push((format!("exp_avg_sq.{i}"), v.clone()));
    }
    out
}

/// Writes the state (each file atomically; the position names the step the tensors are of).
pub fn save(dir: &Path, model: &TrainableModel, score: &Var, optimizer: &AdamW, at: &Position) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cpu: Vec<(String, Tensor)> = tensors(model, score, optimizer)
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_device(&candle_core::Device::Cpu)?)))
        .collect::<Result<_>>()?;
    safetensors_file::write_file(&dir.join(TENSORS), &cpu)?;
    let text = serde_json::to_string_pretty(at)?;
    write_file_atomically(&dir.join(POSITION), FileKind::Json, |w| Ok(w.write_all(text.as_bytes())?))
}

/// Restores a saved state into the model, head and optimizer; returns where to continue.
pub fn restore(dir: &Path, model: &TrainableModel, score: &Var, optimizer: &mut AdamW, run: &RunKey) -> Result<Position> {
    let path = dir.join(POSITION);
    let text = mm_converters::limits::read_to_string(&path, mm_converters::limits::MAX_CONFIG_BYTES, "resume state")
        .with_context(|| format!("--resume: cannot read {}", path.display()))?;
    let at: Position = serde_json::from_str(&text).with_context(|| format!("{}: not a reward run's state", path.display()))?;
    ensure!(
        &at.run == run,
        "--resume: {} was saved by a run with other options or data ({:?}); these are {:?}",
        path.display(),
        at.run,
        run
    );
    let saved = safetensors_file::read_file(&dir.join(TENSORS))?;
    let find = |name: &str| -> Result<&Tensor> {
        saved.iter().find(|(n, _)| n == name).map(|(_, t)| t).with_context(|| format!("{}: {name} missing", dir.join(TENSORS).display()))
    };
    for (name, var) in &model.trainable {
        var.set(&find(name)?.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    score.set(&find("score.weight")?.to_device(score.device())?)?;
    for i in 0..optimizer.exp_avg.len() {
        let device = optimizer.exp_avg[i].device().clone();
        optimizer.exp_avg[i] = find(&format!("exp_avg.{i}"))?.to_device(&device)?;
        optimizer.exp_avg_sq[i] = find(&format!("exp_avg_sq.{i}"))?.to_device(&device)?;
    }
    optimizer.step = at.optimizer_step;
    Ok(at)
}
