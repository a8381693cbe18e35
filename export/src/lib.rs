//! Deployment targets (llama.cpp, ollama, vllm, MNN): filled by the export issues.
