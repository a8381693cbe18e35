//! `model.safetensors` of an HF directory whose config.json is a fixed tiny MiniMind config
//! (the seeds' shape): the file reader alone, then `hf::read` (what `mm convert`, `mm inspect`
//! and `mm export` call), which checks the tensors against the config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mm_converters::{hf, safetensors_file};
use mm_fuzz::{one_thread, put, scratch_dir};

fuzz_target!(init: {
    one_thread();
    put(&scratch_dir("hf"), "config.json", mm_fuzz::TINY_CONFIG);
}, |data: &[u8]| {
    let dir = scratch_dir("hf");
    let path = put(&dir, "model.safetensors", data);
    let _ = safetensors_file::read_file(&path);
    let _ = hf::read(&dir);
});
