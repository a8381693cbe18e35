//! Behaviour of the public `quantize` / `dequantize` pair over every type: shapes and errors,
//! edge rows, round-trip error bounds, and thread-count independence. Byte parity with
//! llama.cpp itself is checked in `converters/tests/quant_golden.rs`.

use super::{dequantize, quantize, GgmlType};

const LENGTHS: [usize; 5] = [32, 256, 512, 704, 1408];

/// Deterministic N(0, sigma) values: a 64-bit LCG feeding Box–Muller.
fn normal(n: usize, seed: u64, sigma: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u1, u2) = (uniform(), uniform());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32 * sigma
        })
        .collect()
}

fn supports(ty: GgmlType, len: usize) -> bool {
    len.is_multiple_of(ty.block_size())
}

#[test]
fn shapes_and_errors_for_every_type_and_length() {
    for ty in GgmlType::ALL {
        for len in LENGTHS {
            let x = normal(3 * len, len as u64, 1.0);
            match quantize(ty, &x, len) {
                Ok(bytes) => {
                    assert!(supports(ty, len), "{ty} accepted rows of {len}");
                    assert_eq!(bytes.len(), 3 * ty.row_bytes(len).unwrap(), "{ty} × {len}");
                    let back = dequantize(ty, &bytes, 3 * len).unwrap();
                    assert_eq!(back.len(), 3 * len);
                    assert!(dequantize(ty, &bytes[1..], 3 * len).is_err(), "{ty}: short input accepted");
                }
                Err(e) => {
                    assert!(!supports(ty, len), "{ty} rejected rows of {len}: {e}");
                    assert!(e.to_string().contains("block size"), "{e}");
                }
            }
        }
        // Data that is not a whole number of rows.
        let bs = ty.block_size().max(32);
        assert!(quantize(ty, &vec![0.5; 3 * bs], 2 * bs).is_err(), "{ty}");
        assert!(quantize(ty, &[], 0).is_err(), "{ty}");
        // An empty tensor is zero rows.
        assert!(quantize(ty, &[], 256).unwrap().is_empty(), "{ty}");
        if ty.block_size() > 1 {
            assert!(dequantize(ty, &[], ty.block_size() + 1).is_err(), "{ty}");
        }
    }
    // The mixture fallbacks exist because of exactly this: 1408 and 704 are no multiple of 256.
    for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        assert!(quantize(ty, &vec![0.0; 1408], 1408).is_err());
        assert!(quantize(ty, &vec![0.0; 704], 704).is_err());
    }
}

/// The largest |x − dequant(quant(x))| a type may leave in a block, relative to the block's
/// largest |x|, on ordinary data. Derived from the formats (step/2 or a full step at the
/// clamped end, plus fp16 rounding of the scales) and, for the K-quants whose 6-bit sub-scales
/// make a closed form awkward, from measurement with a wide margin.
fn max_rel_err(ty: GgmlType) -> f32 {
    let fp16 = 1.0 / 2048.0;
    match ty {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => fp16,
        GgmlType::BF16 => 1.0 / 256.0,
        GgmlType::Q8_0 => (0.5 + 127.0 * fp16) / 127.0,
        GgmlType::Q4_0 => (1.0 + 8.0 * fp16) / 8.0,
        GgmlType::Q5_0 => (1.0 + 16.0 * fp16) / 16.0,
        // range ≤ 2·amax; half a step, plus fp16 error of d (15 or 31 steps) and of the min.
        GgmlType::Q4_1 => 2.0 * (0.5 + 15.0 * fp16) / 15.0 + fp16,
        GgmlType::Q5_1 => 2.0 * (0.5 + 31.0 * fp16) / 31.0 + fp16,
        GgmlType::Q4_K => 0.25,
        GgmlType::Q5_K => 0.12,
        GgmlType::Q6_K => 0.06,
    }
}

/// Round-trip RMSE on N(0, σ), relative to σ: a loose ceiling over ggml's typical values
/// (about 0.07 for Q4_K, 0.035 for Q5_K, 0.017 for Q6_K).
fn max_rel_rmse(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => 3e-4,
        GgmlType::BF16 => 3e-3,
        GgmlType::Q8_0 => 6e-3,
        GgmlType::Q4_0 | GgmlType::Q4_1 => 0.12,
        GgmlType::Q5_0 | GgmlType::Q5_1 => 0.06,
        GgmlType::Q4_K => 0.085,
        GgmlType::Q5_K => 0.045,
        GgmlType::Q6_K => 0.022,
    }
}

fn check_block_errors(ty: GgmlType, x: &[f32], back: &[f32], what: &str) {
    let bs = ty.block_size().max(32);
    for (b, (xb, yb)) in x.chunks(bs).zip(back.chunks(bs)).enumerate() {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let bound = amax * max_rel_err(ty) * 1.0001 + 1e-30;
        for (i, (a, b_)) in xb.iter().zip(yb).enumerate() {
            let err = (a - b_).abs();
            assert!(err <= bound, "{ty} {what}: block {b} value {i}: {a} → {b_} (err {err:e} > {bound:e})");
        }
    }
}

#[test]
fn round_trip_error_on_normal_rows() {
    for ty in GgmlType::ALL {
        for (seed, sigma) in [(1u64, 1.0f32), (2, 0.02), (3, 30.0)] {
            let n_per_row = 512;
            let x = normal(8 * n_per_row, seed, sigma);
            let bytes = quantize(ty, &x, n_per_row).unwrap();
            let back = dequantize(ty, &bytes, x.len()).unwrap();
            check_block_errors(ty, &x, &back, &format!("N(0, {sigma})"));
            let mse = x.iter().zip(&back).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / x.len() as f64;
            let rel = mse.sqrt() / sigma as f64;
            assert!(rel <= max_rel_rmse(ty), "{ty} N(0, {sigma}): relative RMSE {rel:.4}");
        }
    }
}

#[test]
fn heavy_tails_and_uniform_rows() {
    let n = 1024;
    let mut x = normal(n, 7, 1.0);
    for v in x.iter_mut().step_by(37) {
        *v *= 20.0; // outliers
    }
    let uniform: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let positive: Vec<f32> = uniform.iter().map(|v| v + 1.5).collect();
    for ty in GgmlType::ALL {
        for (what, data) in [("outliers", &x), ("uniform", &uniform), ("all positive", &positive)] {
            let back = dequantize(ty, &quantize(ty, data, 256).unwrap(), n).unwrap();
            if !ty.is_quantized() || ty.block_size() == 32 {
                check_block_errors(ty, data, &back, what);
            }
            assert!(back.iter().all(|v| v.is_finite()), "{ty} {what}");
        }
    }
}

#[test]
fn zero_rows_decode_to_zero() {
    for ty in GgmlType::ALL {
        for len in [256, 512] {
            let bytes = quantize(ty, &vec![0.0; 2 * len], len).unwrap();
            let back = dequantize(ty, &bytes, 2 * len).unwrap();
            assert!(back.iter().all(|&v| v == 0.0), "{ty}: zeros came back as {:?}", &back[..4]);
        }
    }
    // Q6_K's all-zero rule writes 210 zero bytes; legacy types write d = +0 or -0 only.
    let q6 = quantize(GgmlType::Q6_K, &[0.0; 256], 256).unwrap();
    assert!(q6.iter().all(|&b| b == 0));
}

#[test]
fn constant_rows() {
    for ty in GgmlType::ALL {
        // Magnitudes that keep every fp16 scale normal: ggml does not rescale, so for small
        // constants (e.g. 1e-3 in Q6_K, d ≈ c/4096) a subnormal d alone costs percents.
        for c in [0.5f32, -0.5, 3.0, -7.0] {
            let x = vec![c; 512];
            let back = dequantize(ty, &quantize(ty, &x, 512).unwrap(), 512).unwrap();
            for &v in &back {
                // A constant is representable up to the fp16 rounding of a scale (and for
                // Q4_K/Q5_K of the 6-bit scale and min codes).
                let tol = if matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K) { 0.02 } else { 2e-3 };
                assert!((v - c).abs() <= c.abs() * tol, "{ty}: constant {c} came back as {v}");
            }
        }
    }
}

#[test]
fn extreme_magnitudes_do_not_panic() {
    // 1e30 overflows every fp16 scale and 1e-30 underflows it; ggml still produces bytes
    // (inf / zero scales) and so must we. Mixed signs exercise the clamp paths too.
    let mut rows = Vec::new();
    for c in [1e30f32, -1e30, 1e-30, -1e-30, 3e38, f32::MIN_POSITIVE / 4.0] {
        rows.push(vec![c; 512]);
        rows.push((0..512).map(|i| if i % 3 == 0 { -c } else { c * (i % 7) as f32 }).collect());
    }
    for ty in GgmlType::ALL {
        for row in &rows {
            let bytes = quantize(ty, row, 256).unwrap();
            let back = dequantize(ty, &bytes, row.len()).unwrap();
            assert_eq!(back.len(), row.len());
            if row[0].abs() <= 1e-30 {
                // Tiny values: anything that comes back is at least as tiny.
                assert!(back.iter().all(|v| v.abs() <= 1e-29), "{ty}: {:?}", &back[..4]);
            }
        }
    }
    // F32 and BF16 keep huge values; F16 saturates to inf like ggml.
    let big = vec![1e30f32; 32];
    assert_eq!(dequantize(GgmlType::F32, &quantize(GgmlType::F32, &big, 32).unwrap(), 32).unwrap(), big);
    let h = dequantize(GgmlType::F16, &quantize(GgmlType::F16, &big, 32).unwrap(), 32).unwrap();
    assert!(h.iter().all(|v| *v == f32::INFINITY));
}

#[test]
fn output_does_not_depend_on_thread_count() {
    let x = normal(64 * 512, 11, 0.05);
    for ty in GgmlType::ALL {
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| quantize(ty, &x, 512).unwrap())
        };
        assert_eq!(run(1), run(3), "{ty}");
    }
}

#[test]
fn rows_are_independent() {
    // Quantizing rows one by one gives the same bytes as the whole matrix at once.
    let x = normal(4 * 256, 5, 1.0);
    for ty in GgmlType::ALL {
        let whole = quantize(ty, &x, 256).unwrap();
        let pieces: Vec<u8> = x.chunks(256).flat_map(|r| quantize(ty, r, 256).unwrap()).collect();
        assert_eq!(whole, pieces, "{ty}");
    }
}

#[test]
fn float_types_are_raw_little_endian() {
    let x = [1.0f32, -2.5, 65504.0, 1e-8];
    assert_eq!(&quantize(GgmlType::F32, &x, 4).unwrap()[..4], &1.0f32.to_le_bytes());
    assert_eq!(&quantize(GgmlType::F16, &x, 4).unwrap()[..4], &[0x00, 0x3C, 0x00, 0xC1]);
    assert_eq!(&quantize(GgmlType::BF16, &x, 4).unwrap()[..4], &[0x80, 0x3F, 0x20, 0xC0]);
    assert_eq!(dequantize(GgmlType::F16, &[0x00, 0x3C], 1).unwrap(), vec![1.0]);
    assert_eq!(dequantize(GgmlType::BF16, &[0x20, 0xC0], 1).unwrap(), vec![-2.5]);
}
