//! Byte parity of `mm_converters::quant` with llama.cpp's own quantizer.
//!
//! `shared/fixtures/llamacpp/` holds an F16 GGUF and llama-quantize's Q4_K_M / Q5_K_M / Q6_K /
//! Q8_0 files made from it (see its README.md). llama-quantize reads the F16 weights as
//! f32(f16), so quantizing the same f32 values must reproduce every quantized tensor byte for
//! byte. Tensors are matched by name; the Q/K permutation is already in both files.
//!
//! The fixtures live outside the repository: `MM_SHARED` points at the shared directory
//! (default `<workspace>/../shared`). Without it the test prints a notice and passes, unless
//! `MM_REQUIRE_SHARED=1`.

#[path = "../../tests/common/skip.rs"]
mod skip;

use std::collections::HashMap;
use std::path::PathBuf;

use mm_converters::quant::{dequantize, quantize, GgmlType};
use serde_json::Value;

const QUANTIZED_FILES: [&str; 4] = ["dense-q4_k_m.gguf", "dense-q5_k_m.gguf", "dense-q6_k.gguf", "dense-q8_0.gguf"];

fn fixtures_dir() -> Option<PathBuf> {
    let shared = std::env::var_os("MM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")));
    let dir = shared.join("fixtures/llamacpp");
    if dir.join("manifest.json").is_file() {
        return Some(dir);
    }
    if std::env::var("MM_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!("MM_REQUIRE_SHARED=1 but {} has no manifest.json", dir.display());
    }
    skip::skipped("llama.cpp quantization goldens", &format!("shared fixtures not found at {} (set MM_SHARED)", dir.display()));
    None
}

struct TensorInfo {
    ty: GgmlType,
    ne: Vec<usize>,
    offset: usize,
    n_bytes: usize,
}

/// A file's tensors by name, from its manifest entry.
fn tensors(entry: &Value) -> HashMap<String, TensorInfo> {
    entry["tensors"]
        .as_array()
        .expect("tensors array")
        .iter()
        .map(|t| {
            let ty_name = t["type"].as_str().unwrap();
            let info = TensorInfo {
                ty: GgmlType::from_name(ty_name).unwrap_or_else(|| panic!("unknown type {ty_name}")),
                ne: t["ne"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect(),
                offset: t["offset"].as_u64().unwrap() as usize,
                n_bytes: t["n_bytes"].as_u64().unwrap() as usize,
            };
            (t["name"].as_str().unwrap().to_string(), info)
        })
        .collect()
}

fn tensor_bytes<'a>(file: &'a [u8], data_offset: usize, t: &TensorInfo) -> &'a [u8] {
    &file[data_offset + t.offset..data_offset + t.offset + t.n_bytes]
}

/// Round-trip RMSE relative to the tensor's RMS: ceilings well above ggml's typical values.
fn max_rel_rmse(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::Q8_0 => 0.01,
        GgmlType::Q6_K => 0.03,
        GgmlType::Q5_K | GgmlType::Q5_0 | GgmlType::Q5_1 => 0.07,
        GgmlType::Q4_K | GgmlType::Q4_0 | GgmlType::Q4_1 => 0.12,
        _ => 0.0,
    }
}

/// Where two byte strings first differ, as "block b, byte i".
fn first_difference(ty: GgmlType, ours: &[u8], theirs: &[u8]) -> String {
    let n_diff = ours.iter().zip(theirs).filter(|(a, b)| a != b).count();
    match ours.iter().zip(theirs).position(|(a, b)| a != b) {
        Some(i) => format!(
            "{n_diff} bytes differ, first in block {} at byte {} ({:#04x} vs llama.cpp {:#04x})",
            i / ty.type_size(),
            i % ty.type_size(),
            ours[i],
            theirs[i]
        ),
        None => format!("lengths {} vs {}", ours.len(), theirs.len()),
    }
}

#[test]
fn quantizers_match_llama_cpp_byte_for_byte() {
    let Some(dir) = fixtures_dir() else { return };
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let files = &manifest["files"];
    let f16_entry = &files["dense-f16.gguf"];
    let f16_tensors = tensors(f16_entry);
    let f16_file = std::fs::read(dir.join("dense-f16.gguf")).unwrap();
    let f16_data = f16_entry["data_section_offset"].as_u64().unwrap() as usize;

    let mut failures = Vec::new();
    let (mut total_compared, mut total_matched) = (0, 0);
    for name in QUANTIZED_FILES {
        let entry = &files[name];
        let file = std::fs::read(dir.join(name)).unwrap();
        let data_offset = entry["data_section_offset"].as_u64().unwrap() as usize;
        let mut by_type: HashMap<GgmlType, (usize, usize)> = HashMap::new();
        let mut quantized: Vec<_> = tensors(entry).into_iter().filter(|(_, t)| t.ty != GgmlType::F32).collect();
        quantized.sort_by(|a, b| a.0.cmp(&b.0));
        for (tensor, t) in &quantized {
            let src = &f16_tensors[tensor];
            assert_eq!(src.ty, GgmlType::F16, "{tensor} in dense-f16.gguf");
            assert_eq!(src.ne, t.ne, "{tensor}: shapes differ between files");
            let n: usize = t.ne.iter().product();
            // llama-quantize's input: the F16 weights widened to f32.
            let x = dequantize(GgmlType::F16, tensor_bytes(&f16_file, f16_data, src), n).unwrap();

            let ours = quantize(t.ty, &x, t.ne[0]).unwrap();
            let theirs = tensor_bytes(&file, data_offset, t);
            let counts = by_type.entry(t.ty).or_default();
            counts.0 += 1;
            if ours == theirs {
                counts.1 += 1;
            } else {
                failures.push(format!("{name} {tensor} ({}): {}", t.ty, first_difference(t.ty, &ours, theirs)));
            }

            // And llama.cpp's bytes decode to something close to the input.
            let back = dequantize(t.ty, theirs, n).unwrap();
            let mse = x.iter().zip(&back).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / n as f64;
            let ms = x.iter().map(|a| (*a as f64).powi(2)).sum::<f64>() / n as f64;
            let rel = (mse / ms).sqrt();
            assert!(rel <= max_rel_rmse(t.ty), "{name} {tensor} ({}): relative RMSE {rel:.4}", t.ty);
        }
        let mut summary: Vec<_> = by_type.iter().map(|(ty, (c, m))| format!("{ty} {m}/{c}")).collect();
        summary.sort();
        let (c, m) = by_type.values().fold((0, 0), |acc, (c, m)| (acc.0 + c, acc.1 + m));
        println!("{name}: {m}/{c} tensors byte-identical ({})", summary.join(", "));
        total_compared += c;
        total_matched += m;
    }
    println!("total: {total_matched}/{total_compared} quantized tensors byte-identical to llama.cpp");
    assert!(total_compared > 0, "no quantized tensors found in the manifest");
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}
