//! llama.cpp: a GGUF with one of llama-quantize's type mixtures, and a summary of what went in.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::Result;
use mm_converters::gguf::checkpoint::{self, GgufOptions, GgufSummary};
use mm_converters::Checkpoint;

/// Writes `ckpt` as a llama.cpp GGUF; `progress(done, total, tensor)` after each tensor.
pub fn export_gguf(
    ckpt: &Checkpoint,
    output: &Path,
    options: &GgufOptions,
    progress: &dyn Fn(usize, usize, &str),
) -> Result<GgufSummary> {
    checkpoint::write(ckpt, output, options, progress)
}

/// Per-type tensor counts, size and bits per weight, as a few lines for the terminal.
pub fn describe(summary: &GgufSummary) -> String {
    let mut by_type: BTreeMap<&str, (usize, u64, u64)> = BTreeMap::new();
    for t in &summary.tensors {
        let e = by_type.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.n_elements;
        e.2 += t.n_bytes;
    }
    let mut out = String::new();
    for (ty, (count, elems, bytes)) in &by_type {
        let _ = writeln!(
            out,
            "  {ty:<5} {count:>4} tensors {:>8.2}M weights {:>9.2} MiB",
            *elems as f64 / 1e6,
            *bytes as f64 / (1 << 20) as f64
        );
    }
    let fallbacks: Vec<_> = summary.tensors.iter().filter_map(|t| t.fallback.as_ref()).collect();
    if !fallbacks.is_empty() {
        let _ = writeln!(out, "  {} tensors took a fallback type (row length not a multiple of 256)", fallbacks.len());
    }
    let _ = write!(
        out,
        "  {:.2} MiB on disk, {:.2} bits per weight",
        summary.file_bytes as f64 / (1 << 20) as f64,
        summary.bits_per_weight()
    );
    out
}
