//! The MiniMind model (`model`, with the CPU inference engine in `model::cpu`), mm's fused CUDA
//! kernels with their backward (`fused`), generation and sampling (`generate`), a model ready
//! to talk (`loaded`: weights, tokenizer, chat template) and device helpers (`device`).
//! Re-exported by the `mm` crate under the same module names.

pub mod cuda_graph;
pub mod device;
pub mod fused;
pub mod generate;
pub mod loaded;
pub mod logprob;
pub mod model;

pub use mm_chat as chat;
pub use mm_converters as converters;
