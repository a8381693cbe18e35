//! The canonical MiniMind checkpoint and one reader and one writer per format.
//!
//! Data flows one way: a reader produces a [`Checkpoint`], transforms (dtype cast, LoRA
//! merge) map a checkpoint to a checkpoint, and a writer consumes it.

pub mod atomic;
pub mod checkpoint;
pub mod config;
pub mod formats;
pub mod gguf;
pub mod hf;
pub mod limits;
pub mod lora;
pub mod naming;
pub mod output_guard;
pub mod pth;
pub mod quant;
pub mod qwen2_moe;
pub mod safetensors_file;

pub use checkpoint::{Checkpoint, Provenance, TokenizerFiles};
pub use config::MiniMindConfig;
pub use formats::{read_checkpoint, write_checkpoint, Format};
pub use pth::checkpoint::PthHints;
