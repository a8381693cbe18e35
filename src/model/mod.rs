//! The MiniMind model in candle: one file per block, the decoder in `minimind.rs`.

mod attention;
pub mod init;
mod linear;
mod minimind;
mod mlp;
mod norm;
pub mod rope;

pub use minimind::{KvCache, MiniMind, Mode, ModelOutput};
