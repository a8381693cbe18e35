//! Skipped tests are said so where `cargo test` shows it: libtest captures `println!` and
//! `eprintln!` of passing tests, so a skip notice written that way is never seen and a
//! skipped test looks like a pass. These lines go straight to the process's stderr, and the
//! test binary ends with one summary line of what it skipped and why.
//! (Included by path from every crate's tests: `#[path = "…/tests/common/skip.rs"]`.)
#![allow(dead_code)]

use std::io::Write;
use std::sync::Mutex;

static SKIPPED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Reports that `test` is skipped for `reason`.
pub fn skipped(test: &str, reason: &str) {
    let _ = std::io::stderr().write_all(format!("SKIPPED {test}: {reason}\n").as_bytes());
    let mut list = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    if list.is_empty() {
        // SAFETY: registers a plain function, run once at process exit.
        unsafe {
            libc::atexit(print_summary);
        }
    }
    list.push((test.to_string(), reason.to_string()));
}

extern "C" fn print_summary() {
    let list = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    let mut reasons: Vec<&str> = list.iter().map(|(_, r)| r.as_str()).collect();
    reasons.sort();
    reasons.dedup();
    let binary = std::env::args().next().unwrap_or_default();
    let binary = std::path::Path::new(&binary).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // cargo names test binaries `<name>-<16 hex digits>`.
    let binary = match binary.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => name.to_string(),
        _ => binary,
    };
    let _ = std::io::stderr().write_all(
        format!("note: {binary}: {} test(s) skipped, not passed: {}\n", list.len(), reasons.join("; ")).as_bytes(),
    );
}
