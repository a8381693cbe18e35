//! ollama TEMPLATEs (Go text/template with ollama's functions): parsed, inspected as
//! `mm validate ollama` does, and executed on the request bodies of mm's built-in chat cases.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mm_export::ollama::{self, validate};
use serde_json::Value;

static BODIES: OnceLock<Vec<Value>> = OnceLock::new();

fuzz_target!(init: {
    mm_fuzz::one_thread();
    // A few varied cases: plain, system, tools, thinking (every fourth of the built-in list).
    let bodies = ollama::builtin_cases().iter().step_by(4).filter_map(|c| c.ollama_request().ok()).collect();
    BODIES.set(bodies).unwrap();
}, |data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let Ok(template) = ollama::parse_template(source) else { return };
    let _ = validate::identifiers(&template);
    let _ = validate::tool_tag(&template);
    let _ = validate::thinking_tags(&template);
    let _ = validate::struct_prints(&template);
    for body in BODIES.get().unwrap() {
        let _ = ollama::render_request(&template, body);
    }
});
