//! The MiniMind model in candle: one file per block, the decoder in `minimind.rs`.

mod attention;
pub mod gguf;
pub mod init;
pub(crate) mod linear;
mod minimind;
mod mlp;
mod norm;
pub mod rope;

pub use gguf::{gguf_holds_quantized, is_gguf_path, GgufModelFile, GgufWeight};
pub use minimind::{KvCache, MiniMind, Mode, ModelOutput};
pub(crate) use minimind::WeightSource;
