//! Modelfiles, read as `mm validate ollama` reads them: ollama's line parser, the PARAMETER
//! type checks, the TEMPLATE parsed and run on mm's chat cases (no jinja comparison). The
//! file sits beside a small GGUF (`model.gguf`) that the seeds' FROM lines name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mm_export::ollama::{self, modelfile};
use mm_fuzz::{one_thread, put, scratch_dir};

fuzz_target!(init: {
    one_thread();
    put(&scratch_dir("ollama"), "model.gguf", mm_fuzz::TINY_GGUF);
}, |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(commands) = modelfile::parse(text) {
        for c in &commands {
            if c.is_parameter {
                let _ = modelfile::check_param(&c.name, &c.args);
            }
            let _ = modelfile::quote(&c.args);
            let _ = modelfile::quote_always(&c.args);
        }
    }
    let path = put(&scratch_dir("ollama"), "Modelfile", data);
    if let Ok(report) = ollama::validate(&path, None) {
        let _ = report.to_text();
        let _ = report.to_json();
    }
});
