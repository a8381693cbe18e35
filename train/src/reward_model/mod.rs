//! Reward models mm runs itself: the MiniMind trunk with a scalar score head, scoring a
//! conversation at its last non-pad token as transformers' `LlamaForSequenceClassification`
//! (`num_labels: 1`) does, stored in that class's HF layout so transformers loads it too.
//!
//! * [`model`]: the pooling rule and the scoring forward (training and inference share it).
//! * [`hf`]: the HF directory (config.json with `architectures:
//!   ["LlamaForSequenceClassification"]`, `model.safetensors` with the Llama-named trunk and
//!   `score.weight` [1, hidden], tokenizer files), written atomically and read back.
//! * [`remote`]: the client for a remote scorer speaking vLLM's `/pooling` API (`--reward-url`).
//! * [`scorer`]: both as [`Scorer`](crate::rewards::Scorer)s of an RL run (`--reward-model`,
//!   `--reward-url`), with upstream's ±3 clip and reasoning blend.
//! * [`train`]: `mm train reward`: the Bradley–Terry loss `−log σ(r_chosen − r_rejected)` on
//!   DPO-format pairs, with a held-out split and its pairwise accuracy.

pub mod hf;
pub mod model;
pub mod remote;
pub mod resume;
pub mod scorer;
pub mod train;

pub use model::{last_non_pad, pooled_scores, RewardModel};
