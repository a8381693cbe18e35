//! Deployment targets: what each runtime (llama.cpp, ollama, vllm, MNN) needs beyond the
//! checkpoint formats in `mm-converters`.

pub mod go_template;
pub mod hf;
pub mod llamacpp;
pub mod mnn;
pub mod ollama;
pub mod tokenizer_json;
pub mod validate_hf;
