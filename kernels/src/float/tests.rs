// A list of one row range is a product computed in one piece.
#![allow(clippy::single_range_in_vec_init)]

use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn levels() -> Vec<Level> {
    [Level::Scalar, Level::Avx2, Level::Avx512]
        .into_iter()
        .filter(|&l| l <= cpu::level())
        .collect()
}

const KINDS: [FloatKind; 3] = [FloatKind::F32, FloatKind::F16, FloatKind::BF16];

/// Weights of one kind with varied exponents (f16 subnormals included), and the same values
/// as f32 row-major (exact).
fn weights(kind: FloatKind, rows: usize, cols: usize, rng: &mut StdRng) -> (FMatrix, Vec<f32>) {
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| {
            let mag = 2f32.powi(rng.random_range(-20..3));
            rng.random_range(-1.0f32..1.0) * mag
        })
        .collect();
    match kind {
        FloatKind::F32 => (FMatrix::from_f32(rows, cols, &v), v),
        FloatKind::F16 => {
            let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
            let v = h.iter().map(|x| x.to_f32()).collect();
            (FMatrix::from_f16(rows, cols, &h), v)
        }
        FloatKind::BF16 => {
            let h: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
            let v = h.iter().map(|x| x.to_f32()).collect();
            (FMatrix::from_bf16(rows, cols, &h), v)
        }
    }
}

fn acts(m: usize, cols: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..m * cols)
        .map(|_| rng.random_range(-2.0f32..2.0))
        .collect()
}

/// Output rows [m, ld] with ld = rows + 5, NaN-filled; `splits` are the row ranges computed.
fn product(w: &FMatrix, level: Level, x: &[f32], m: usize, splits: &[Range<usize>]) -> Vec<f32> {
    let ld = w.rows() + 5;
    let mut y = vec![f32::NAN; m * ld];
    let out = SharedOut::new(&mut y, ld);
    for r in splits {
        w.matmul_at(level, x, m, r.clone(), out);
    }
    y
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Bits of the outputs of rows `rows` (in order, token-major).
fn block(y: &[f32], ld: usize, ts: Range<usize>, rows: Range<usize>) -> Vec<f32> {
    ts.flat_map(|t| y[t * ld + rows.start..t * ld + rows.end].to_vec())
        .collect()
}

const SHAPES: [(usize, usize); 10] = [
    (128, 512),
    (512, 512),
    (1408, 512),
    (512, 1408),
    (512, 768),
    (128, 2048),
    (100, 64),
    (8, 512),
    (6400, 512),
    (45, 37),
];

#[test]
fn every_level_matches_scalar_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(1);
    for kind in KINDS {
        for (rows, cols) in SHAPES {
            let (w, _) = weights(kind, rows, cols, &mut rng);
            for m in [1, 2, 3, 16, 37, 256] {
                // The scalar product of big shapes is slow: check a slice of rows there,
                // including the last panel.
                let checked = if rows * m > 1 << 16 {
                    vec![0..32, rows - rows % 16..rows]
                } else {
                    vec![0..rows]
                };
                let x = acts(m, cols, &mut rng);
                let want = product(&w, Level::Scalar, &x, m, &checked);
                for level in levels() {
                    let got = product(&w, level, &x, m, &[0..rows]);
                    for r in &checked {
                        let (a, b) = (
                            block(&got, rows + 5, 0..m, r.clone()),
                            block(&want, rows + 5, 0..m, r.clone()),
                        );
                        assert!(
                            same_bits(&a, &b),
                            "{kind:?} {rows}x{cols} m={m} {level:?} rows {r:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn a_token_gets_the_same_bits_alone_or_in_a_batch() {
    let mut rng = StdRng::seed_from_u64(2);
    for kind in KINDS {
        for (rows, cols) in [(512, 512), (100, 64), (1408, 512), (45, 37)] {
            let (w, _) = weights(kind, rows, cols, &mut rng);
            let x = acts(256, cols, &mut rng);
            let ld = rows + 5;
            for level in levels() {
                let all = product(&w, level, &x, 256, &[0..rows]);
                for m in [1, 2, 3, 16, 37] {
                    // Tokens 100..100+m as their own batch.
                    let sub = product(&w, level, &x[100 * cols..(100 + m) * cols], m, &[0..rows]);
                    assert!(
                        same_bits(
                            &block(&sub, ld, 0..m, 0..rows),
                            &block(&all, ld, 100..100 + m, 0..rows)
                        ),
                        "{kind:?} {rows}x{cols} {level:?}: batch of {m} differs from inside 256"
                    );
                }
            }
        }
    }
}

#[test]
fn row_splits_do_not_change_the_bits() {
    let mut rng = StdRng::seed_from_u64(3);
    for kind in KINDS {
        let (rows, cols) = (1408, 512);
        let (w, _) = weights(kind, rows, cols, &mut rng);
        for m in [1, 5, 16] {
            let x = acts(m, cols, &mut rng);
            for level in levels() {
                let whole = product(&w, level, &x, m, &[0..rows]);
                for splits in [
                    vec![0..704, 704..1408],
                    vec![0..16, 16..48, 48..1392, 1392..1408],
                    vec![0..1392, 1392..1408, 1408..1408],
                ] {
                    let split = product(&w, level, &x, m, &splits);
                    assert!(
                        same_bits(&whole, &split),
                        "{kind:?} m={m} {level:?} split {splits:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn writes_only_the_rows_it_is_given() {
    let mut rng = StdRng::seed_from_u64(4);
    for kind in KINDS {
        let (w, _) = weights(kind, 100, 64, &mut rng);
        let x = acts(7, 64, &mut rng);
        for level in levels() {
            // Empty shares anywhere (a thread left with nothing) write nothing.
            let y = product(&w, level, &x, 7, &[32..70, 70..70, 100..100]);
            for t in 0..7 {
                for c in 0..105 {
                    assert_eq!(
                        (32..70).contains(&c),
                        !y[t * 105 + c].is_nan(),
                        "{kind:?} {level:?} ({t}, {c})"
                    );
                }
            }
        }
    }
}

/// Against an f64 product: an fma chain of n steps is within n·2⁻²⁴·Σ|w·x| (one rounding per
/// step, each at most 2⁻²⁴ of a partial sum bounded by Σ|w·x|).
#[test]
fn close_to_an_f64_product() {
    let mut rng = StdRng::seed_from_u64(5);
    for kind in KINDS {
        for (rows, cols) in [(100, 64), (128, 2048), (64, 1408)] {
            let (w, wf) = weights(kind, rows, cols, &mut rng);
            let m = 3;
            let x = acts(m, cols, &mut rng);
            let y = product(&w, cpu::level(), &x, m, &[0..rows]);
            for t in 0..m {
                for r in 0..rows {
                    let (mut exact, mut mag) = (0f64, 0f64);
                    for k in 0..cols {
                        let p = wf[r * cols + k] as f64 * x[t * cols + k] as f64;
                        exact += p;
                        mag += p.abs();
                    }
                    let err = (y[t * (rows + 5) + r] as f64 - exact).abs();
                    let bound = cols as f64 * 2f64.powi(-24) * mag;
                    assert!(
                        err <= bound,
                        "{kind:?} {rows}x{cols} ({t}, {r}): error {err:e} > {bound:e}"
                    );
                }
            }
        }
    }
}

#[test]
fn row_gives_the_stored_values() {
    let mut rng = StdRng::seed_from_u64(6);
    for kind in KINDS {
        let (w, wf) = weights(kind, 45, 37, &mut rng);
        assert_eq!((w.kind(), w.rows(), w.cols()), (kind, 45, 37));
        let mut out = vec![0f32; 37];
        for r in [0, 15, 16, 44] {
            w.row(r, &mut out);
            assert!(
                same_bits(&out, &wf[r * 37..(r + 1) * 37]),
                "{kind:?} row {r}"
            );
        }
    }
}

#[test]
fn dot_and_axpy_give_the_same_bits_at_every_level() {
    let mut rng = StdRng::seed_from_u64(7);
    for n in (0..70).chain([64, 128, 1000, 1023]) {
        let a = acts(1, n, &mut rng);
        let b = acts(1, n, &mut rng);
        let want = dot_at(Level::Scalar, &a, &b);
        let (exact, mag) = a.iter().zip(&b).fold((0f64, 0f64), |(e, g), (&x, &y)| {
            let p = x as f64 * y as f64;
            (e + p, g + p.abs())
        });
        // Each lane chain rounds ⌈n/32⌉ times and the pairwise sum 5 more.
        let bound = (n.div_ceil(32) + 5) as f64 * 2f64.powi(-24) * mag;
        assert!(
            (want as f64 - exact).abs() <= bound,
            "dot n={n}: {want} vs {exact}"
        );
        for level in levels() {
            assert_eq!(
                dot_at(level, &a, &b).to_bits(),
                want.to_bits(),
                "dot n={n} {level:?}"
            );
            let alpha = rng.random_range(-2.0f32..2.0);
            let mut y0 = b.clone();
            axpy_at(Level::Scalar, alpha, &a, &mut y0);
            let mut y = b.clone();
            axpy_at(level, alpha, &a, &mut y);
            assert!(same_bits(&y, &y0), "axpy n={n} {level:?}");
            assert!(y0
                .iter()
                .zip(&a)
                .zip(&b)
                .all(|((&y, &x), &b)| y == alpha.mul_add(x, b)));
        }
    }
}

/// The fixed order is observable: a sum that cancels differently in another order.
#[test]
fn dot_sums_in_its_stated_order() {
    let mut a = vec![0f32; 64];
    let b = vec![1f32; 64];
    // Lane 0 gets 1e8 then -1e8 (exact 0), lane 1 gets 1.0 twice: 2.0. A sequential sum
    // 1e8 + 1 + ... would lose the ones.
    a[0] = 1e8;
    a[1] = 1.0;
    a[32] = -1e8;
    a[33] = 1.0;
    for level in levels() {
        assert_eq!(dot_at(level, &a, &b), 2.0, "{level:?}");
    }
}

#[test]
fn dot_rows_and_axpy_rows_are_their_single_calls_in_order() {
    let mut rng = StdRng::seed_from_u64(8);
    for len in [1, 7, 16, 33, 64, 100, 128] {
        for rows in [0, 1, 5, 37] {
            let stride = len + 3;
            let k = acts(1, rows * stride, &mut rng);
            let q = acts(1, len, &mut rng);
            let want: Vec<f32> = (0..rows)
                .map(|j| dot_at(Level::Scalar, &q, &k[j * stride..j * stride + len]))
                .collect();
            let alpha = acts(1, rows, &mut rng);
            let y0 = acts(1, len, &mut rng);
            let mut want_y = y0.clone();
            for (j, &a) in alpha.iter().enumerate() {
                axpy_at(
                    Level::Scalar,
                    a,
                    &k[j * stride..j * stride + len],
                    &mut want_y,
                );
            }
            for level in levels() {
                let mut got = vec![f32::NAN; rows];
                dot_rows_at(level, &q, &k, stride, &mut got);
                assert!(
                    same_bits(&got, &want),
                    "dot_rows len={len} rows={rows} {level:?}"
                );
                let mut y = y0.clone();
                axpy_rows_at(level, &alpha, &k, stride, &mut y);
                assert!(
                    same_bits(&y, &want_y),
                    "axpy_rows len={len} rows={rows} {level:?}"
                );
            }
        }
    }
}

#[test]
#[should_panic(expected = "do not fit")]
fn dot_rows_checks_its_bounds() {
    let mut out = [0f32; 3];
    // Rows at 0, 10, 20, each 8 long: 28 values needed, 27 given.
    dot_rows(&[0.0; 8], &[0.0; 27], 10, &mut out);
}
