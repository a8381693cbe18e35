//! mm: the MiniMind toolchain. The model, generation and the CLI live here; formats in
//! `mm-converters`, deployment targets in `mm-export`, data loaders in `mm-dataset`.

pub mod device;
pub mod eval;
pub mod fused;
pub mod generate;
pub mod loaded;
pub mod model;
pub mod serve;
pub mod train;

pub use mm_chat as chat;
pub use mm_converters as converters;
pub use mm_export as export;
