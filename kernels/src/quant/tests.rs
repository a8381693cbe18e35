//! Quantized products: every level against the scalar reference (bit for bit), the scalar
//! reference against an f64 product of the dequantized operands, batch and row-split
//! invariance, activation quantization and dequantization against candle 0.11, and input
//! validation.

use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::act::ActRow;
use super::blocks::{k_unsigned, q32_unsigned};
use super::scalar::offset32;
use super::*;

/// An f16 scale of random sign and magnitude (1e-4 .. 3).
fn scale(rng: &mut StdRng) -> [u8; 2] {
    let mag = 10f32.powf(rng.random_range(-4.0..0.5));
    let s = if rng.random_bool(0.5) { -mag } else { mag };
    f16::from_f32(s).to_le_bytes()
}

/// One random GGUF block of `ty` (random quants, random scales).
fn random_block(ty: QType, rng: &mut StdRng, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + ty.block_bytes(), 0);
    let b = &mut out[start..];
    rng.fill(&mut b[..]);
    match ty {
        QType::Q4_0 | QType::Q5_0 | QType::Q8_0 => b[0..2].copy_from_slice(&scale(rng)),
        QType::Q4_1 | QType::Q5_1 | QType::Q4K | QType::Q5K => {
            b[0..2].copy_from_slice(&scale(rng));
            b[2..4].copy_from_slice(&scale(rng));
        }
        QType::Q6K => b[208..210].copy_from_slice(&scale(rng)),
    }
}

fn random_matrix(ty: QType, rows: usize, cols: usize, rng: &mut StdRng) -> (QMatrix, Vec<u8>) {
    let mut bytes = Vec::new();
    for _ in 0..rows * cols / ty.block_elems() {
        random_block(ty, rng, &mut bytes);
    }
    (QMatrix::new(ty, rows, cols, &bytes).unwrap(), bytes)
}

/// Activation rows of varied scale, with exact zeros, repeated values and an all-zero block.
fn random_acts(m: usize, cols: usize, rng: &mut StdRng) -> Vec<f32> {
    let mut x = vec![0f32; m * cols];
    for (t, row) in x.chunks_mut(cols).enumerate() {
        let s = 10f32.powf(rng.random_range(-3.0..2.0));
        for v in row.iter_mut() {
            *v = match rng.random_range(0..20) {
                0 => 0.0,
                1 => s,
                _ => s * rng.random_range(-1.0..1.0f32),
            };
        }
        if t % 5 == 1 {
            row[..256.min(cols)].fill(0.0);
        }
    }
    x
}

fn quantize_acts(w: &QMatrix, x: &[f32]) -> Vec<u8> {
    let rb = w.act_row_bytes();
    let m = x.len() / w.cols();
    let mut a = vec![0u8; m * rb];
    for (x, a) in x.chunks(w.cols()).zip(a.chunks_mut(rb)) {
        w.quantize_act_row(x, a);
    }
    a
}

fn levels() -> Vec<Level> {
    [Level::Scalar, Level::Avx2, Level::Avx512]
        .into_iter()
        .filter(|&l| l <= detected_level())
        .collect()
}

fn run(w: &QMatrix, level: Level, act: &[u8], m: usize, splits: &[usize]) -> Vec<f32> {
    let mut y = vec![f32::NAN; m * w.rows()];
    let out = SharedOut::new(&mut y, w.rows());
    let mut bounds = vec![0];
    bounds.extend(splits.iter().copied().filter(|&s| s < w.rows()));
    bounds.push(w.rows());
    for r in bounds.windows(2) {
        w.matmul_at(level, act, m, r[0]..r[1], out);
    }
    y
}

/// W[r, e] as (value, |part| sum): the value the product uses, split into the terms whose
/// magnitudes bound the float error.
fn weight(w: &QMatrix, r: usize, e: usize) -> (f64, f64) {
    let ty = w.qtype();
    let be = ty.block_elems();
    let (b, i) = (e / be, r * w.nb + e / be);
    let q = w.qblock(r, b);
    let d = w.d[i] as f64;
    if ty.is_k() {
        let (v, s) = k_unsigned(ty, q, w.scales(r, b), e % be);
        if ty == QType::Q6K {
            let x = d * s as f64 * (v - 32) as f64;
            (x, x.abs())
        } else {
            let (a, c) = (
                d * s as f64 * v as f64,
                w.m[i] as f64 * w.scales(r, b)[8 + (e % be) / 32] as f64,
            );
            (a - c, a.abs() + c.abs())
        }
    } else {
        let a = d * (q32_unsigned(ty, q, e % be) - offset32(ty)) as f64;
        let c = if ty.has_min() { w.m[i] as f64 } else { 0.0 };
        (a + c, a.abs() + c.abs())
    }
}

/// The quantized activation row, dequantized (Q8_1 uses its stored s for the block sum, as the
/// product does, so that element is corrected by the rounding of s).
fn act_values(w: &QMatrix, a: &[u8]) -> Vec<f64> {
    let row = ActRow::new(w.act_kind(), w.cols(), a);
    (0..w.cols())
        .map(|e| row.qs(e / row.be)[e % row.be] as i8 as f64 * row.d(e / row.be) as f64)
        .collect()
}

fn check(ty: QType, rows: usize, cols: usize, m: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (w, _) = random_matrix(ty, rows, cols, &mut rng);
    let x = random_acts(m, cols, &mut rng);
    let act = quantize_acts(&w, &x);
    let rb = w.act_row_bytes();
    let reference = run(&w, Level::Scalar, &act, m, &[]);

    // (b) the scalar result against f64 sums of the dequantized operands.
    let wv: Vec<Vec<(f64, f64)>> = (0..rows)
        .map(|r| (0..cols).map(|e| weight(&w, r, e)).collect())
        .collect();
    for t in 0..m {
        let a = &act[t * rb..(t + 1) * rb];
        let av = act_values(&w, a);
        let row = ActRow::new(w.act_kind(), cols, a);
        for r in 0..rows {
            let (mut exact, mut mag) = (0f64, 0f64);
            for e in 0..cols {
                let (v, p) = wv[r][e];
                if ty.has_min() && !ty.is_k() {
                    // Q4_1/Q5_1: the min meets the block's stored s, not Σ of its values.
                    let min = w.m[r * w.nb + e / 32] as f64;
                    exact += (v - min) * av[e];
                    mag += (p - min.abs()) * av[e].abs();
                } else {
                    exact += v * av[e];
                    mag += p * av[e].abs();
                }
            }
            if ty.has_min() && !ty.is_k() {
                for b in 0..w.nb {
                    let t = w.m[r * w.nb + b] as f64 * row.s(b) as f64;
                    exact += t;
                    mag += t.abs();
                }
            }
            let got = reference[t * rows + r] as f64;
            // Rounding: the f32 scale product, one rounding per block term and per addition
            // over ≤ 64 blocks (and 8 lanes): well under 1e-5 of the magnitude sum.
            let tol = 1e-5 * mag + 1e-30;
            assert!(
                (got - exact).abs() <= tol,
                "{ty:?} {rows}x{cols} m={m} (t={t}, r={r}): {got} vs exact {exact} (tol {tol})"
            );
        }
    }

    for level in levels() {
        // (a) every level gives the scalar bits.
        let y = run(&w, level, &act, m, &[]);
        for (i, (a, b)) in y.iter().zip(&reference).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{ty:?} {level:?} {rows}x{cols} m={m}: element {i}: {a} vs scalar {b}"
            );
        }
        // (c) alone (m = 1) and in a batch, and however rows are split.
        for t in [0, m / 2, m - 1] {
            let y1 = run(&w, level, &act[t * rb..(t + 1) * rb], 1, &[]);
            assert_eq!(
                bits(&y1),
                bits(&y[t * rows..(t + 1) * rows]),
                "{ty:?} {level:?} token {t} alone vs in m={m}"
            );
        }
        let split = run(&w, level, &act, m, &[1, 2, rows / 2 + 1]);
        assert_eq!(bits(&split), bits(&y), "{ty:?} {level:?} row splits");
    }
}

fn bits(y: &[f32]) -> Vec<u32> {
    y.iter().map(|v| v.to_bits()).collect()
}

fn shapes(ty: QType) -> Vec<usize> {
    [512, 768, 1408, 2048]
        .into_iter()
        .filter(|c| c % ty.block_elems() == 0)
        .collect()
}

#[test]
fn levels_agree_with_scalar_and_exact_sums() {
    for (i, ty) in QType::ALL.into_iter().enumerate() {
        for (j, cols) in shapes(ty).into_iter().enumerate() {
            check(ty, 11, cols, 3, (i * 10 + j) as u64);
        }
        check(ty, 7, 512, 1, 100 + i as u64);
        check(ty, 13, 768, 16, 200 + i as u64);
    }
}

#[test]
fn large_batches() {
    for (i, ty) in QType::ALL.into_iter().enumerate() {
        check(ty, 6, 512, 37, 300 + i as u64);
        check(
            ty,
            5,
            256 * (ty.block_elems() / 32).max(2),
            256,
            400 + i as u64,
        );
    }
}

/// An odd number of blocks per row, and a single row.
#[test]
fn odd_shapes() {
    for (i, ty) in QType::ALL.into_iter().enumerate() {
        let cols = if ty.is_k() { 768 } else { 96 };
        check(ty, 1, cols, 5, 500 + i as u64);
        check(ty, 9, cols, 2, 600 + i as u64);
    }
}

#[test]
fn rejects_bad_sizes() {
    for ty in QType::ALL {
        let be = ty.block_elems();
        let bytes = vec![0u8; 3 * 2 * ty.block_bytes()];
        assert!(QMatrix::new(ty, 3, 2 * be, &bytes).is_ok());
        assert!(QMatrix::new(ty, 3, 2 * be, &bytes[1..])
            .unwrap_err()
            .contains("bytes"));
        assert!(QMatrix::new(ty, 4, 2 * be, &bytes).is_err());
        assert!(QMatrix::new(ty, 3, 2 * be + 16, &bytes)
            .unwrap_err()
            .contains("multiple"));
        assert!(QMatrix::new(ty, usize::MAX, 2 * be, &bytes).is_err());
        assert!(QMatrix::new(ty, 0, 2 * be, &[]).is_ok());
        assert_eq!(QType::from_ggml_id(ty.ggml_id()), Some(ty));
    }
    assert_eq!(QType::from_ggml_id(0), None);
    assert_eq!(QType::from_ggml_id(10), None);
}

mod candle_parity {
    use candle_core::quantized::k_quants::*;

    use super::*;

    fn blocks<B: GgmlType>(bytes: &[u8]) -> Vec<B> {
        let n = bytes.len() / std::mem::size_of::<B>();
        assert_eq!(n * std::mem::size_of::<B>(), bytes.len());
        let mut v: Vec<B> = Vec::with_capacity(n);
        // SAFETY: candle's blocks are repr(C) plain data of exactly these bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, bytes.len());
            v.set_len(n);
        }
        v
    }

    fn block_bytes<B>(b: &[B]) -> &[u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u8, std::mem::size_of_val(b)) }
    }

    fn from_float<B: GgmlType>(x: &[f32]) -> Vec<B> {
        let mut v = blocks::<B>(&vec![
            0u8;
            x.len() / B::BLCK_SIZE * std::mem::size_of::<B>()
        ]);
        B::from_float(x, &mut v);
        v
    }

    /// (d) Activation quantization gives candle's blocks, field by field.
    #[test]
    fn act_quantization_matches_candle() {
        let mut rng = StdRng::seed_from_u64(7);
        for cols in [256, 512, 768, 2048] {
            let x = random_acts(6, cols, &mut rng);
            for x in x.chunks(cols) {
                for kind in [ActKind::Q8_0, ActKind::Q8_1, ActKind::Q8K] {
                    let mut mine = vec![0u8; kind.row_bytes(cols)];
                    kind.quantize_row(x, &mut mine);
                    let row = ActRow::new(kind, cols, &mine);
                    let (theirs, bsz): (Vec<u8>, usize) = match kind {
                        ActKind::Q8_0 => (block_bytes(&from_float::<BlockQ8_0>(x)).to_vec(), 34),
                        ActKind::Q8_1 => (block_bytes(&from_float::<BlockQ8_1>(x)).to_vec(), 36),
                        ActKind::Q8K => (block_bytes(&from_float::<BlockQ8K>(x)).to_vec(), 292),
                    };
                    for (b, c) in theirs.chunks(bsz).enumerate() {
                        match kind {
                            ActKind::Q8_0 | ActKind::Q8_1 => {
                                assert_eq!(
                                    f16::from_f32(row.d(b)).to_bits(),
                                    u16::from_le_bytes([c[0], c[1]]),
                                    "{kind:?} d"
                                );
                                let off = if kind == ActKind::Q8_1 { 4 } else { 2 };
                                assert_eq!(
                                    row.qs(b),
                                    &c[off..off + 32],
                                    "{kind:?} qs of block {b}"
                                );
                                assert_eq!(row.d(b), f16::from_f32(row.d(b)).to_f32());
                                if kind == ActKind::Q8_1 {
                                    assert_eq!(
                                        f16::from_f32(row.s(b)).to_bits(),
                                        u16::from_le_bytes([c[2], c[3]]),
                                        "Q8_1 s"
                                    );
                                }
                            }
                            ActKind::Q8K => {
                                assert_eq!(
                                    row.d(b).to_bits(),
                                    f32::from_le_bytes(c[0..4].try_into().unwrap()).to_bits(),
                                    "Q8_K d"
                                );
                                assert_eq!(row.qs(b), &c[4..260], "Q8_K qs of block {b}");
                                for j in 0..16 {
                                    assert_eq!(
                                        row.bsum(b, j),
                                        i16::from_le_bytes([c[260 + 2 * j], c[261 + 2 * j]]) as i32
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn candle_check<B: GgmlType>(ty: QType, rng: &mut StdRng) {
        let (rows, cols) = (3, 512);
        let (w, bytes) = random_matrix(ty, rows, cols, rng);
        let cb = blocks::<B>(&bytes);
        let nb = cols / B::BLCK_SIZE;
        let x = random_acts(2, cols, rng);
        let act = quantize_acts(&w, &x);
        let ours = run(&w, Level::Scalar, &act, 2, &[]);
        for r in 0..rows {
            let mut deq = vec![0f32; cols];
            B::to_float(&cb[r * nb..(r + 1) * nb], &mut deq);
            let mut mine = vec![0f32; cols];
            w.dequantize_row(r, &mut mine);
            assert_eq!(bits(&mine), bits(&deq), "{ty:?} dequantize_row {r}");
            for t in 0..2 {
                let xa = from_float::<B::VecDotType>(&x[t * cols..(t + 1) * cols]);
                let theirs = B::vec_dot_unopt(cols, &cb[r * nb..(r + 1) * nb], &xa);
                let mag: f32 = deq
                    .iter()
                    .zip(&x[t * cols..])
                    .map(|(a, b)| (a * b).abs())
                    .sum();
                let got = ours[t * rows + r];
                assert!(
                    (got - theirs).abs() <= 1e-5 * mag + 1e-30,
                    "{ty:?} ({t}, {r}): {got} vs candle {theirs}"
                );
            }
        }
    }

    /// Dequantization is candle's bit for bit, and the products agree with candle's dots.
    #[test]
    fn blocks_match_candle() {
        let mut rng = StdRng::seed_from_u64(9);
        candle_check::<BlockQ4_0>(QType::Q4_0, &mut rng);
        candle_check::<BlockQ4_1>(QType::Q4_1, &mut rng);
        candle_check::<BlockQ5_0>(QType::Q5_0, &mut rng);
        candle_check::<BlockQ5_1>(QType::Q5_1, &mut rng);
        candle_check::<BlockQ8_0>(QType::Q8_0, &mut rng);
        candle_check::<BlockQ4K>(QType::Q4K, &mut rng);
        candle_check::<BlockQ5K>(QType::Q5K, &mut rng);
        candle_check::<BlockQ6K>(QType::Q6K, &mut rng);
    }
}
