//! MNN `tokenizer.mtok`: the reader (`read_mtok`), then `mm inspect` of an MNN directory
//! holding it beside a fixed config.json and a small llm.mnn from the seeds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mm_export::mnn::{inspect, tokenizer_mtok};
use mm_fuzz::{one_thread, put, scratch_dir};

fuzz_target!(init: {
    one_thread();
    let dir = scratch_dir("mnn");
    put(&dir, "config.json", mm_fuzz::TINY_MNN_CONFIG);
    put(&dir, "llm.mnn", mm_fuzz::TINY_MNN_NET);
    put(&dir, "llm_config.json", b"{}");
    put(&dir, "llm.mnn.weight", &[0u8; 64]);
}, |data: &[u8]| {
    let _ = tokenizer_mtok::read_mtok(data);
    let dir = scratch_dir("mnn");
    put(&dir, "tokenizer.mtok", data);
    if let Ok(report) = inspect::inspect_dir(&dir) {
        let _ = report.to_json();
        let _ = report.to_text();
    }
});
