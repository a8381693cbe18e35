//! mm: the MiniMind toolchain. This crate is the `mm` command line (`src/cli/`); the parts are
//! workspace crates re-exported here under their module names: `mm-model` (model, CPU engine,
//! fused CUDA kernels, generation), `mm-chat`, `mm-train`, `mm-serve`, `mm-eval`, and the formats
//! (`mm-converters`), deployment targets (`mm-export`) and data loaders (`mm-dataset`).

pub use mm_chat as chat;
pub use mm_model::{cuda_graph, device, fused, generate, loaded, model};
pub use mm_eval as eval;
pub use mm_serve as serve;
pub use mm_train as train;
pub use mm_converters as converters;
pub use mm_export as export;
