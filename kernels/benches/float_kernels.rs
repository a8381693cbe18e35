//! Single-thread throughput of the float products: GMAC/s per level × weight kind × shape × m,
//! then a decode pass over all of MiniMind2-small's matrices (52 MB in f16, more than L3
//! holds), which measures the weight stream from memory.
//!
//! `cargo bench -p mm-kernels --bench float_kernels [-- scalar] [-- f16 …]`: `scalar` adds the
//! scalar level (slow); a kind name (f32, f16, bf16) keeps only the kinds named. Each figure
//! is the best of several timed batches (the box is shared; the best is the least disturbed).

use std::hint::black_box;
use std::time::{Duration, Instant};

use half::{bf16, f16};
use mm_kernels::cpu::{self, Level};
use mm_kernels::float::{axpy_at, axpy_rows_at, dot_at, dot_rows_at, FMatrix, FloatKind};
use mm_kernels::SharedOut;

/// MiniMind2-small's products: (rows, cols).
const SHAPES: [(usize, usize); 5] = [
    (512, 512),
    (128, 512),
    (1408, 512),
    (512, 1408),
    (6400, 512),
];
const MS: [usize; 6] = [1, 2, 3, 4, 16, 256];

fn matrix(kind: FloatKind, rows: usize, cols: usize, seed: u32) -> FMatrix {
    // A cheap deterministic fill; the values do not affect the speed.
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32
                / (1u32 << 24) as f32
                - 0.5
        })
        .collect();
    match kind {
        FloatKind::F32 => FMatrix::from_f32(rows, cols, &v),
        FloatKind::F16 => FMatrix::from_f16(
            rows,
            cols,
            &v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(),
        ),
        FloatKind::BF16 => FMatrix::from_bf16(
            rows,
            cols,
            &v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>(),
        ),
    }
}

/// Best seconds per call of `f` over a few batches of about 50 ms.
fn best(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    f();
    let once = t.elapsed().max(Duration::from_nanos(100));
    let reps = (Duration::from_millis(50).as_secs_f64() / once.as_secs_f64())
        .ceil()
        .max(1.0) as usize;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    best
}

fn bytes_per(kind: FloatKind) -> usize {
    match kind {
        FloatKind::F32 => 4,
        FloatKind::F16 | FloatKind::BF16 => 2,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut levels: Vec<Level> = [Level::Avx2, Level::Avx512]
        .into_iter()
        .filter(|&l| l <= cpu::level())
        .collect();
    if args.iter().any(|a| a == "scalar") {
        levels.insert(0, Level::Scalar);
    }
    let named: Vec<FloatKind> = [
        ("f32", FloatKind::F32),
        ("f16", FloatKind::F16),
        ("bf16", FloatKind::BF16),
    ]
    .into_iter()
    .filter(|(n, _)| args.iter().any(|a| a == n))
    .map(|(_, k)| k)
    .collect();
    let kinds = if named.is_empty() {
        vec![FloatKind::F32, FloatKind::F16, FloatKind::BF16]
    } else {
        named
    };

    println!("single thread, GMAC/s (m=1 also GB/s of weights; a matrix under 32 MB stays in L3)");
    println!(
        "{:<7} {:<5} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}   m=1 GB/s",
        "level", "kind", "rows x k", "m=1", "m=2", "m=3", "m=4", "m=16", "m=256"
    );
    for &level in &levels {
        for &kind in &kinds {
            for (rows, cols) in SHAPES {
                let w = matrix(kind, rows, cols, 1);
                let mut line = format!(
                    "{:<7} {:<5} {:>11}",
                    format!("{level:?}"),
                    format!("{kind:?}"),
                    format!("{rows}x{cols}")
                );
                let mut gbs = 0.0;
                for m in MS {
                    let x: Vec<f32> = (0..m * cols)
                        .map(|i| (i % 7) as f32 * 0.25 - 0.75)
                        .collect();
                    let mut y = vec![0f32; m * rows];
                    let s = best(|| {
                        w.matmul_at(
                            level,
                            black_box(&x),
                            m,
                            0..rows,
                            SharedOut::new(&mut y, rows),
                        )
                    });
                    line += &format!(" {:>8.2}", (m * rows * cols) as f64 / s / 1e9);
                    if m == 1 {
                        gbs = (rows * cols * bytes_per(kind)) as f64 / s / 1e9;
                    }
                }
                println!("{line}   {gbs:.1}");
            }
        }
    }

    // Decode of a whole model: every matrix once per step, as a forward pass reads them.
    println!("\nMiniMind2-small decode step (8 layers: q,k,v,o,gate,up,down; lm_head), weights from memory");
    let mut layer = vec![
        (512, 512),
        (128, 512),
        (128, 512),
        (512, 512),
        (1408, 512),
        (1408, 512),
        (512, 1408),
    ];
    layer = layer.repeat(8);
    layer.push((6400, 512));
    let macs: usize = layer.iter().map(|(r, c)| r * c).sum();
    for &level in &levels {
        for &kind in &kinds {
            let ws: Vec<FMatrix> = layer
                .iter()
                .enumerate()
                .map(|(i, &(r, c))| matrix(kind, r, c, i as u32))
                .collect();
            let mut line = format!(
                "{:<7} {:<5} {:>5.1} MB",
                format!("{level:?}"),
                format!("{kind:?}"),
                (macs * bytes_per(kind)) as f64 / 1e6
            );
            for m in [1, 2, 4, 16] {
                let x = vec![0.5f32; m * 1408];
                let mut y = vec![0f32; m * 6400];
                let s = best(|| {
                    for w in &ws {
                        let x = &x[..m * w.cols()];
                        w.matmul_at(
                            level,
                            black_box(x),
                            m,
                            0..w.rows(),
                            SharedOut::new(&mut y[..m * w.rows()], w.rows()),
                        );
                    }
                });
                line += &format!(
                    "   m={m}: {:>5.2} ms/step {:>5.1} GMAC/s",
                    s * 1e3,
                    (m * macs) as f64 / s / 1e9
                );
                if m == 1 {
                    line += &format!(" {:>5.1} GB/s", (macs * bytes_per(kind)) as f64 / s / 1e9);
                }
            }
            println!("{line}");
        }
    }

    // Attention's vector steps: head_dim 64 (MiniMind), and a long vector.
    println!("\ndot and axpy, ns per call (GFLOP/s)");
    for &level in [Level::Scalar].iter().chain(&levels) {
        let mut line = format!("{:<7}", format!("{level:?}"));
        for n in [64, 4096] {
            let a: Vec<f32> = (0..n).map(|i| (i % 5) as f32 - 2.0).collect();
            let mut b = a.clone();
            let s = best(|| {
                black_box(dot_at(level, black_box(&a), black_box(&b)));
            });
            line += &format!(
                "  dot n={n}: {:>7.1} ({:>5.1})",
                s * 1e9,
                2.0 * n as f64 / s / 1e9
            );
            let s = best(|| axpy_at(level, black_box(1e-3), black_box(&a), &mut b));
            line += &format!(
                "  axpy n={n}: {:>7.1} ({:>5.1})",
                s * 1e9,
                2.0 * n as f64 / s / 1e9
            );
        }
        println!("{line}");
    }

    println!("\none query (head_dim 64) against 256 cached rows: ns per row (GFLOP/s)");
    for &level in [Level::Scalar].iter().chain(&levels) {
        let (d, n) = (64, 256);
        let k: Vec<f32> = (0..n * d).map(|i| (i % 5) as f32 - 2.0).collect();
        let q = vec![0.25f32; d];
        let mut scores = vec![0f32; n];
        let mut y = vec![0f32; d];
        let per = |s: f64| {
            format!(
                "{:>6.2} ({:>5.1})",
                s * 1e9 / n as f64,
                (2 * n * d) as f64 / s / 1e9
            )
        };
        let s_dot = best(|| dot_rows_at(level, black_box(&q), black_box(&k), d, &mut scores));
        let s_axpy = best(|| axpy_rows_at(level, black_box(&scores), black_box(&k), d, &mut y));
        println!(
            "{:<7}  dot_rows: {}  axpy_rows: {}",
            format!("{level:?}"),
            per(s_dot),
            per(s_axpy)
        );
    }
}
