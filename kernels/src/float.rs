//! Products with float weights (f32, f16, bf16) and the two vector steps of attention.
//!
//! Every output is one f32 accumulator that starts at 0 and takes `fma(W[r, k], x[t, k], acc)`
//! for k = 0..cols in order. The kernels vectorise across weight rows and tokens, never across
//! k, so the scalar code (`f32::mul_add`), AVX2 and AVX-512 give the same bits, whatever m is,
//! whichever token an output belongs to and however the rows are split between threads.
//! f16 and bf16 weights are widened to f32 exactly before the fma.
//!
//! Weights are repacked once into panels of [`PANEL`] rows interleaved per k (see [`panel`]),
//! so that one aligned load gives the weights of 16 rows at one k. The SIMD kernels keep a tile
//! of a few tokens × a few panels of accumulators in registers ([`tile`]), so each weight is
//! read once per few tokens and the fma units, not the loads, set the pace.

// The SIMD layout and tiles are used only by the x86 kernels elsewhere.
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod panel;
mod scalar;
#[cfg(test)]
mod tests;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod tile;

use std::ops::Range;

use crate::cpu::{self, Level};
use crate::SharedOut;
use panel::Panels;

pub use panel::PANEL;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatKind {
    F32,
    F16,
    BF16,
}

/// A `[rows, cols]` weight matrix in its stored precision, repacked into panels of [`PANEL`]
/// rows. f16/bf16 values are kept as they are and widened exactly when used.
pub struct FMatrix {
    rows: usize,
    cols: usize,
    panels: Panels,
}

impl FMatrix {
    /// `w` is row-major `[rows, cols]`.
    pub fn from_f32(rows: usize, cols: usize, w: &[f32]) -> FMatrix {
        assert_eq!(
            w.len(),
            rows * cols,
            "FMatrix::from_f32: {rows}x{cols} needs {} values",
            rows * cols
        );
        FMatrix {
            rows,
            cols,
            panels: Panels::f32(rows, cols, w),
        }
    }

    pub fn from_f16(rows: usize, cols: usize, w: &[half::f16]) -> FMatrix {
        assert_eq!(
            w.len(),
            rows * cols,
            "FMatrix::from_f16: {rows}x{cols} needs {} values",
            rows * cols
        );
        FMatrix {
            rows,
            cols,
            panels: Panels::f16(rows, cols, w),
        }
    }

    pub fn from_bf16(rows: usize, cols: usize, w: &[half::bf16]) -> FMatrix {
        assert_eq!(
            w.len(),
            rows * cols,
            "FMatrix::from_bf16: {rows}x{cols} needs {} values",
            rows * cols
        );
        FMatrix {
            rows,
            cols,
            panels: Panels::bf16(rows, cols, w),
        }
    }

    pub fn kind(&self) -> FloatKind {
        self.panels.kind()
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Threads are given row ranges whose bounds are multiples of this (or the end).
    pub fn row_align(&self) -> usize {
        PANEL
    }

    /// `y[t, r] = Σ_k W[r, k] · x[t, k]` for r in `rows`, t in 0..m; x is `[m, cols]`
    /// row-major. Writes element (t, r) of `out` (`[m, ld]`) only for r in `rows`.
    pub fn matmul(&self, x: &[f32], m: usize, rows: Range<usize>, out: SharedOut) {
        self.matmul_at(cpu::level(), x, m, rows, out)
    }

    /// [`FMatrix::matmul`] with the kernels of `level` (at most [`cpu::level`]'s detection; for
    /// tests and benchmarks, which compare levels).
    pub fn matmul_at(&self, level: Level, x: &[f32], m: usize, rows: Range<usize>, out: SharedOut) {
        assert_eq!(
            x.len(),
            m * self.cols,
            "matmul: x holds {} values, not {m}x{}",
            x.len(),
            self.cols
        );
        assert!(
            rows.start <= rows.end && rows.end <= self.rows,
            "matmul: rows {rows:?} of {}",
            self.rows
        );
        if m == 0 || rows.is_empty() {
            // A thread's share may be empty, wherever it starts.
            return;
        }
        assert!(
            rows.start.is_multiple_of(PANEL),
            "matmul: row range {rows:?} does not start on a panel"
        );
        assert!(
            rows.end <= out.ld(),
            "matmul: output rows are {} wide, rows end at {}",
            out.ld(),
            rows.end
        );
        // Bounds of every output row written, checked once here.
        out.row_ptr(m - 1);
        let job = tile::Job { x, m, rows, out };
        dispatch!(level, matmul(&self.panels, self.cols, &job))
    }

    /// Row `r` as f32 (embedding lookup).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        assert_eq!(
            out.len(),
            self.cols,
            "row: output holds {}, not {}",
            out.len(),
            self.cols
        );
        self.panels.row(r, out);
    }
}

/// `Σ a[i]·b[i]` with a fixed order: 32 lanes (lane j takes i ≡ j mod 32, zero-padded to a
/// multiple of 32), each an fma chain from 0, then summed pairwise (lanes j and j+16, then
/// j+8, …). Every level computes exactly this, so the bits depend only on the inputs.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_at(cpu::level(), a, b)
}

/// `y[i] = fma(alpha, x[i], y[i])`: per element, so every level gives the same bits.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    axpy_at(cpu::level(), alpha, x, y)
}

/// `out[j] = dot(q, k[j·stride..][..q.len()])`, the same bits as [`dot`] row by row: one
/// query's scores against cached keys, without a call per key.
pub fn dot_rows(q: &[f32], k: &[f32], stride: usize, out: &mut [f32]) {
    dot_rows_at(cpu::level(), q, k, stride, out)
}

/// `axpy(alpha[j], v[j·stride..][..y.len()], y)` for each j in order, the same bits as those
/// calls: the probability-weighted sum of value rows, y kept in registers throughout.
pub fn axpy_rows(alpha: &[f32], v: &[f32], stride: usize, y: &mut [f32]) {
    axpy_rows_at(cpu::level(), alpha, v, stride, y)
}

/// Runs `$f` of the kernels of `level` (scalar, AVX2, AVX-512).
macro_rules! dispatch {
    ($level:expr, $f:ident($($arg:expr),*)) => {{
        let level: Level = $level;
        assert!(level <= cpu::level(), "{level:?} kernels on a CPU without them (or capped by MM_KERNELS)");
        match level {
            Level::Scalar => scalar::$f($($arg),*),
            // SAFETY: the CPU has the level's features (asserted above).
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { avx2::$f($($arg),*) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { avx512::$f($($arg),*) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("SIMD levels are x86-64 only"),
        }
    }};
}
use dispatch;

/// Rows `0..n` of `stride` apart, each `len` long, lie within `have` elements.
fn rows_fit(n: usize, stride: usize, len: usize, have: usize) -> bool {
    n == 0
        || (n - 1)
            .checked_mul(stride)
            .and_then(|s| s.checked_add(len))
            .is_some_and(|e| e <= have)
}

/// [`dot`] with the kernels of `level` (tests and benchmarks).
pub fn dot_at(level: Level, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths {} and {}", a.len(), b.len());
    dispatch!(level, dot(a, b))
}

/// [`axpy`] with the kernels of `level` (tests and benchmarks).
pub fn axpy_at(level: Level, alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(
        x.len(),
        y.len(),
        "axpy: lengths {} and {}",
        x.len(),
        y.len()
    );
    dispatch!(level, axpy(alpha, x, y))
}

/// [`dot_rows`] with the kernels of `level` (tests and benchmarks).
pub fn dot_rows_at(level: Level, q: &[f32], k: &[f32], stride: usize, out: &mut [f32]) {
    assert!(
        rows_fit(out.len(), stride, q.len(), k.len()),
        "dot_rows: {} rows of {} (stride {stride}) do not fit in {}",
        out.len(),
        q.len(),
        k.len()
    );
    dispatch!(level, dot_rows(q, k, stride, out))
}

/// [`axpy_rows`] with the kernels of `level` (tests and benchmarks).
pub fn axpy_rows_at(level: Level, alpha: &[f32], v: &[f32], stride: usize, y: &mut [f32]) {
    assert!(
        rows_fit(alpha.len(), stride, y.len(), v.len()),
        "axpy_rows: {} rows of {} (stride {stride}) do not fit in {}",
        alpha.len(),
        y.len(),
        v.len()
    );
    dispatch!(level, axpy_rows(alpha, v, stride, y))
}
