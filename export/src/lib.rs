//! Deployment targets: what each runtime (llama.cpp, ollama, vllm, MNN) needs beyond the
//! checkpoint formats in `mm-converters`.

pub mod llamacpp;
