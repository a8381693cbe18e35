//! GGUF, the file format of llama.cpp: the container, the mapping of MiniMind onto the
//! `llama` / `ernie4_5-moe` architectures, tokenizer metadata and llama-quantize's type mixtures.

pub mod file;
pub mod keys;
pub mod mixture;
pub mod architecture;
pub mod checkpoint;
pub mod vocab;
