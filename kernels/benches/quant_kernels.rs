//! GMAC/s of the quantized products per type × MiniMind shape × m × level, single-threaded.
//! `cargo bench -p mm-kernels --bench quant_kernels [-- FILTER...]`: a FILTER keeps the lines
//! whose type, shape or level contains it (e.g. `Q4K`, `avx512`, `768x2048`). Each figure is
//! the best of several repetitions (the machine is shared); weights stay warm in cache.
//!
//! Then whole decode steps (every matrix of a model once, as a forward pass reads them) for
//! MiniMind2's Q4_K_M mix and MiniMind2-small's Q8_0 and Q4_K_M files: 60 MB of weights stream
//! from memory, the small ones sit at L3's edge. `-- step [avx512]` runs only these.

use std::time::{Duration, Instant};

use mm_kernels::cpu::{self, Level};
use mm_kernels::quant::{QMatrix, QType};
use mm_kernels::SharedOut;

/// Random blocks with sane f16 scales (the kernels' speed does not depend on the values).
fn matrix(ty: QType, rows: usize, cols: usize, seed: &mut u64) -> QMatrix {
    let n = rows * cols / ty.block_elems() * ty.block_bytes();
    let mut bytes: Vec<u8> = (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (*seed >> 33) as u8
        })
        .collect();
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    for b in bytes.chunks_mut(ty.block_bytes()) {
        match ty {
            QType::Q6K => b[208..210].copy_from_slice(&scale),
            QType::Q4_1 | QType::Q5_1 | QType::Q4K | QType::Q5K => {
                b[0..2].copy_from_slice(&scale);
                b[2..4].copy_from_slice(&scale);
            }
            _ => b[0..2].copy_from_slice(&scale),
        }
    }
    QMatrix::new(ty, rows, cols, &bytes).unwrap()
}

/// llama.cpp's Q4_K_M rule for the layers that get more bits (attn_v, ffn_down).
fn more_bits(layer: usize, layers: usize) -> bool {
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
}

/// The matrices of one decode step (attention q,k,v,o, ffn gate,up,down per layer; lm_head).
fn model(
    layers: usize,
    hidden: usize,
    kv: usize,
    ffn: usize,
    attn: impl Fn(usize) -> (QType, QType),
    down: impl Fn(usize) -> QType,
    out: QType,
) -> Vec<(QType, usize, usize)> {
    let mut v = Vec::new();
    for l in 0..layers {
        let (a, av) = attn(l);
        v.extend([
            (a, hidden, hidden),
            (a, kv, hidden),
            (av, kv, hidden),
            (a, hidden, hidden),
            (a, ffn, hidden),
            (a, ffn, hidden),
            (down(l), hidden, ffn),
        ]);
    }
    v.push((out, 6400, hidden));
    v
}

/// Best seconds per call of `f` (one warm-up call, then at least 5 calls and about 1 s).
fn best(mut f: impl FnMut()) -> f64 {
    f();
    let started = Instant::now();
    let mut best = f64::INFINITY;
    let mut reps = 0;
    while reps < 5 || (started.elapsed() < Duration::from_secs(1) && reps < 500) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        reps += 1;
    }
    best
}

fn steps(levels: &[Level]) {
    let (q4k, q6k) = (QType::Q4K, QType::Q6K);
    let models = [
        (
            "MiniMind2 Q4_K_M",
            model(
                16,
                768,
                192,
                2048,
                |l| (q4k, if more_bits(l, 16) { q6k } else { q4k }),
                |l| if more_bits(l, 16) { q6k } else { q4k },
                q6k,
            ),
        ),
        (
            "small Q8_0",
            model(
                8,
                512,
                128,
                1408,
                |_| (QType::Q8_0, QType::Q8_0),
                |_| QType::Q8_0,
                QType::Q8_0,
            ),
        ),
        (
            // 1408 columns are not a multiple of 256: llama.cpp falls back to Q5_0 / Q8_0.
            "small Q4_K_M",
            model(
                8,
                512,
                128,
                1408,
                |l| (q4k, if more_bits(l, 8) { q6k } else { q4k }),
                |l| {
                    if more_bits(l, 8) {
                        QType::Q8_0
                    } else {
                        QType::Q5_0
                    }
                },
                q6k,
            ),
        ),
    ];
    println!("\ndecode step, weights from memory (GB/s of GGUF bytes; ms per step)");
    let mut seed = 7u64;
    for (name, mats) in models {
        let ws: Vec<QMatrix> = mats
            .iter()
            .map(|&(ty, r, c)| matrix(ty, r, c, &mut seed))
            .collect();
        let bytes: usize = ws
            .iter()
            .map(|w| w.rows() * w.cols() / w.qtype().block_elems() * w.qtype().block_bytes())
            .sum();
        let macs: usize = ws.iter().map(|w| w.rows() * w.cols()).sum();
        for &level in levels {
            let mut line = format!(
                "{:<17} {:<7} {:>5.1} MB",
                name,
                format!("{level:?}").to_lowercase(),
                bytes as f64 / 1e6
            );
            for m in [1usize, 2, 4, 16] {
                let acts: Vec<Vec<u8>> = ws
                    .iter()
                    .map(|w| {
                        let rb = w.act_row_bytes();
                        let mut a = vec![0u8; m * rb];
                        for (t, a) in a.chunks_mut(rb).enumerate() {
                            let x: Vec<f32> = (0..w.cols())
                                .map(|i| (((i + t) * 7919 % 1000) as f32 - 500.0) * 0.001)
                                .collect();
                            w.quantize_act_row(&x, a);
                        }
                        a
                    })
                    .collect();
                let mut y = vec![0f32; m * 6400];
                let s = best(|| {
                    for (w, a) in ws.iter().zip(&acts) {
                        let n = w.rows();
                        w.matmul_at(level, a, m, 0..n, SharedOut::new(&mut y[..m * n], n));
                    }
                });
                line += &format!(
                    "  m={m}: {:>5.2} ms {:>5.1} GB/s {:>5.1} GMAC/s",
                    s * 1e3,
                    bytes as f64 / s / 1e9,
                    (m * macs) as f64 / s / 1e9
                );
            }
            println!("{line}");
        }
    }
}

fn main() {
    let mut filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let only_steps = filters.iter().any(|f| f == "step");
    filters.retain(|f| f != "step");
    let types = [
        QType::Q4K,
        QType::Q6K,
        QType::Q5_0,
        QType::Q8_0,
        QType::Q4_0,
        QType::Q4_1,
        QType::Q5_1,
        QType::Q5K,
    ];
    // [rows, cols] of MiniMind2-small (512/1408) and MiniMind2 (768/2048) projections.
    let shapes = [
        (512, 512),
        (1408, 512),
        (512, 1408),
        (768, 768),
        (2048, 768),
        (768, 2048),
        (6400, 512),
    ];
    let levels: Vec<Level> = [Level::Scalar, Level::Avx2, Level::Avx512]
        .into_iter()
        .filter(|&l| l <= cpu::level())
        .collect();
    println!(
        "{:<6} {:>10} {:>4} {:>8} {:>8} {:>8}",
        "type", "shape", "m", "scalar", "avx2", "avx512"
    );
    let step_levels: Vec<Level> = levels
        .iter()
        .copied()
        .filter(|&l| {
            l != Level::Scalar && {
                let n = format!("{l:?}").to_lowercase();
                filters.iter().all(|f| n.contains(f.as_str()))
            }
        })
        .collect();
    if only_steps {
        steps(&step_levels);
        return;
    }
    let mut seed = 1u64;
    for ty in types {
        for (rows, cols) in shapes {
            if cols % ty.block_elems() != 0 {
                continue;
            }
            let w = matrix(ty, rows, cols, &mut seed);
            for m in [1usize, 4, 16, 256] {
                let name = format!("{ty:?} {rows}x{cols} m={m}");
                let wanted = |l: &str| {
                    filters.is_empty()
                        || filters
                            .iter()
                            .all(|f| name.contains(f.as_str()) || l.contains(f.as_str()))
                };
                let x: Vec<f32> = (0..m * cols)
                    .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.001)
                    .collect();
                let rb = w.act_row_bytes();
                let mut act = vec![0u8; m * rb];
                for (x, a) in x.chunks(cols).zip(act.chunks_mut(rb)) {
                    w.quantize_act_row(x, a);
                }
                let mut y = vec![0f32; m * rows];
                let mut cells = Vec::new();
                let mut any = false;
                for level in [Level::Scalar, Level::Avx2, Level::Avx512] {
                    let lname = format!("{level:?}").to_lowercase();
                    // The scalar reference is far too slow for big batches.
                    if !levels.contains(&level)
                        || !wanted(&lname)
                        || (level == Level::Scalar && m > 16)
                    {
                        cells.push("-".to_string());
                        continue;
                    }
                    any = true;
                    let macs = (m * rows * cols) as f64;
                    let mut best = f64::MAX;
                    let started = Instant::now();
                    let mut reps = 0;
                    while reps < 3
                        || (started.elapsed() < Duration::from_millis(300) && reps < 2000)
                    {
                        let t = Instant::now();
                        w.matmul_at(level, &act, m, 0..rows, SharedOut::new(&mut y, rows));
                        best = best.min(t.elapsed().as_secs_f64());
                        reps += 1;
                    }
                    cells.push(format!("{:.1}", macs / best / 1e9));
                }
                if any {
                    println!(
                        "{:<6} {:>10} {:>4} {:>8} {:>8} {:>8}",
                        format!("{ty:?}"),
                        format!("{rows}x{cols}"),
                        m,
                        cells[0],
                        cells[1],
                        cells[2]
                    );
                }
            }
        }
    }
    steps(&step_levels);
}
