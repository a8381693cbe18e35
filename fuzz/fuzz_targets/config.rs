//! `config.json` in all three dialects (MiniMind, Llama, Qwen2-MoE): parsed and validated,
//! written back in each dialect, and read as part of an HF directory (`hf::read`) whose
//! `model.safetensors` is a fixed tiny model, so a config that passes meets real tensors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mm_converters::{hf, MiniMindConfig};
use mm_fuzz::{one_thread, put, scratch_dir};

fuzz_target!(init: {
    one_thread();
    put(&scratch_dir("hf"), "model.safetensors", mm_fuzz::TINY_SAFETENSORS);
}, |data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = MiniMindConfig::flavor_of_json(&value);
    if let Ok(cfg) = MiniMindConfig::from_json(&value) {
        let _ = cfg.to_minimind_json("float32");
        let _ = cfg.to_llama_json("float16");
        let _ = cfg.to_qwen2_moe_json("bfloat16");
        let _ = cfg.head_dim();
    }
    let dir = scratch_dir("hf");
    put(&dir, "config.json", data);
    let _ = hf::read(&dir);
});
