//! GMAC/s of the quantized products per type × MiniMind shape × m × level, single-threaded.
//! `cargo bench -p mm-kernels --bench quant_kernels [-- FILTER...]`: a FILTER keeps the lines
//! whose type, shape or level contains it (e.g. `Q4K`, `avx512`, `768x2048`). Each figure is
//! the best of several repetitions (the machine is shared); weights stay warm in cache.

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

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
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
}
