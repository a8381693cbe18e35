//! The `data.pkl` pickle of a `.pth`, inside a well-formed archive (the zip CRC would stop
//! almost every mutation of a whole file before the pickle): the input is the pickle, the
//! archive also holds storages `0`..`3` of 64 bytes each. Same consumers as `pth`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mm_fuzz::{one_thread, scratch_dir};

fuzz_target!(init: { one_thread(); mm_fuzz::small_checkpoint(); }, |data: &[u8]| {
    let path = scratch_dir("pickle").join("f.pth");
    mm_fuzz::write_torch_zip(&path, "f", data, &[vec![0x3c; 64], vec![0; 64], vec![0xff; 64], vec![1; 64]]);
    mm_fuzz::pth_consumers(&path);
});
