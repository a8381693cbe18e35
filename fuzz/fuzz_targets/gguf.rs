//! GGUF: the container parser (header, metadata, tensor infos), then the whole MiniMind
//! reader (`mm convert x.gguf`): hyperparameters, vocabulary, tensor plan, dequantization.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mm_converters::gguf;
use mm_fuzz::{one_thread, put, scratch_dir};

fuzz_target!(init: { one_thread(); }, |data: &[u8]| {
    if gguf::file::parse(data).is_err() {
        return;
    }
    let path = put(&scratch_dir("gguf"), "model.gguf", data);
    let _ = gguf::checkpoint::read(&path);
});
