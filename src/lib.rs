//! mm: the MiniMind toolchain. The model, generation and the CLI live here; formats in
//! `mm-converters`, deployment targets in `mm-export`, data loaders in `mm-dataset`.

pub mod eval;
pub mod serve;
pub mod train;

pub use mm_chat as chat;
pub use mm_model::{device, fused, generate, loaded, model};
pub use mm_converters as converters;
pub use mm_export as export;
