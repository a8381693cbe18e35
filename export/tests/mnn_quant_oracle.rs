//! llm.mnn.weight quantization against torch.
//!
//! The bytes (packed values + fp16 `(zero, scale)`) of min/max and HQQ quantization, 4 and 8
//! bits, block 64, were checked byte-identical to a torch 2.11 CPU implementation of
//! llmexport's formulas (`tests/oracle/mnn_quant_torch.py`, run on x86-64) for the matrices
//! below (512×512, 1664×512, 512×1664, 6400×512 and 64×96 with block 32; outliers, a zero
//! block and a constant block included). `golden_hashes` pins those bytes; to re-run the torch
//! check: `ORACLE_DIR=dir cargo test -p mm-export --test mnn_quant_oracle -- --ignored`, then
//! `python3 tests/oracle/mnn_quant_torch.py dir` where torch is installed.

use std::io::Write;

use mm_export::mnn::weights::{quantize, QuantOptions};

/// Deterministic pseudo-normal values (Irwin–Hall of 12 uniforms from an LCG).
fn randn(n: usize, seed: u64, std: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut uniform = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32) / (1u64 << 24) as f32
    };
    (0..n).map(|_| ((0..12).map(|_| uniform()).sum::<f32>() - 6.0) * std).collect()
}

const SHAPES: [(usize, usize, f32); 5] =
    [(512, 512, 0.02), (1664, 512, 0.03), (512, 1664, 0.02), (6400, 512, 0.05), (64, 96, 1.0)];

fn matrix(i: usize) -> (usize, usize, Vec<f32>) {
    let (oc, ic, std) = SHAPES[i];
    let mut w = randn(oc * ic, i as u64 + 100, std);
    w[5] = 0.9;
    w[ic + 7] = -1.3;
    w[2 * ic..2 * ic + 64].fill(0.0);
    w[3 * ic..3 * ic + 64].fill(0.25);
    (oc, ic, w)
}

fn record_bytes(w: &[f32], oc: usize, ic: usize, bits: u8, hqq: bool) -> Vec<u8> {
    let m = quantize(w, oc, ic, &QuantOptions { bits, hqq, ..Default::default() }).unwrap();
    let mut b = m.packed();
    b.extend(m.alpha_bytes(true));
    b
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

#[test]
fn golden_hashes() {
    // (matrix, bits, hqq) -> FNV-1a of the bytes torch produced too.
    let golden: [(usize, u8, bool, u64); 12] = [
        (0, 4, false, 0x7dd62e9a00392dbd),
        (0, 4, true, 0x540d35f7d85bac12),
        (0, 8, false, 0x573e1db9c1c2057b),
        (0, 8, true, 0x17c4df3259aae5a1),
        (1, 4, false, 0xd7a1b73541e4cd04),
        (1, 4, true, 0xa9f8d933b4f78f33),
        (1, 8, false, 0xe392aafc3c801bbf),
        (1, 8, true, 0x3e0cda9b7d692385),
        (4, 4, false, 0xee635d9dd2d6bca7),
        (4, 4, true, 0x00ca6ea9e229bd62),
        (4, 8, false, 0xb76ee02e0f198749),
        (4, 8, true, 0x60f5cca54ffe16d7),
    ];
    let mut report = String::new();
    let mut ok = true;
    for (i, bits, hqq, want) in golden {
        let (oc, ic, w) = matrix(i);
        let got = fnv1a(&record_bytes(&w, oc, ic, bits, hqq));
        report += &format!("        ({i}, {bits}, {hqq}, {got:#018x}),\n");
        ok &= got == want;
    }
    assert!(ok, "quantized bytes changed:\n{report}");
}

/// Writes the matrices and this crate's quantized bytes for the torch check.
#[test]
#[ignore]
fn write_oracle_inputs() {
    let dir = std::path::PathBuf::from(std::env::var("ORACLE_DIR").expect("set ORACLE_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut meta = String::new();
    for i in 0..SHAPES.len() {
        let (oc, ic, w) = matrix(i);
        let raw: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::File::create(dir.join(format!("w{i}.f32"))).unwrap().write_all(&raw).unwrap();
        for bits in [4u8, 8] {
            for hqq in [false, true] {
                let name = format!("q{i}_{bits}_{}.bin", hqq as u8);
                std::fs::write(dir.join(name), record_bytes(&w, oc, ic, bits, hqq)).unwrap();
            }
        }
        meta += &format!("{i} {oc} {ic}\n");
    }
    std::fs::write(dir.join("meta.txt"), meta).unwrap();
}
