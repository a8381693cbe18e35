//! mm: the MiniMind toolchain.

pub mod chat;
