//! The canonical MiniMind checkpoint and one reader and one writer per format.

pub mod atomic;
pub mod config;
pub mod pth;
