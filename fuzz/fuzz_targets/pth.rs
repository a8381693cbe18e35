//! `.pth` (torch.save zip): the whole file is fuzzed. Covers the zip reader, the pickle
//! interpreter, tensor views, then what `mm convert x.pth` and `mm lora merge` do with the
//! tensors: config inference, checkpoint validation, LoRA pairing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mm_fuzz::{one_thread, put, scratch_dir};

fuzz_target!(init: { one_thread(); mm_fuzz::small_checkpoint(); }, |data: &[u8]| {
    let path = put(&scratch_dir("pth"), "model.pth", data);
    mm_fuzz::pth_consumers(&path);
});
