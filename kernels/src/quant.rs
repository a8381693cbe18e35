//! Products with ggml block-quantized weights (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K),
//! as in a GGUF file, against activations quantized per row the way ggml does (Q8_0, Q8_1,
//! Q8_K partners).
//!
//! Every output is computed in one fixed pattern, shared by the scalar code, AVX2 and AVX-512
//! and by every tile shape, so the result is bit-identical whatever m is, whichever token it is,
//! however rows are split, and whichever level runs it: 8 float lanes per output, each taking
//! per block `fma(exact integer, weight scale · activation scale, lane)` for the integer sum of
//! a fixed set of elements (the integers are exact, so SIMD may form them in any order), and
//! one fixed tree adding the lanes at the end. [`scalar`] spells the pattern out.
//!
//! Weights are repacked once at construction: f16 scales widened to f32, K-quant 6-bit scales
//! decoded to i16, Q8_0 stored offset by 128 (unsigned, for `vpdpbusd`), Q5_0/Q5_1 values
//! predecoded to bytes; other quant bytes keep ggml's order ([`blocks`]). Activations use this
//! module's own row layout ([`act`]).

mod act;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod blocks;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod simd;
#[cfg(test)]
mod tests;

use std::ops::Range;

use crate::cpu::{self, Level};
use crate::SharedOut;

pub use act::ActKind;
pub use blocks::{QMatrix, QType};

impl QMatrix {
    /// The activation partner of this weight type.
    pub fn act_kind(&self) -> ActKind {
        self.qtype().act_kind()
    }

    /// Bytes of one quantized activation row of `cols` elements.
    pub fn act_row_bytes(&self) -> usize {
        self.act_kind().row_bytes(self.cols())
    }

    /// Quantizes one activation row (`x.len() == cols`) into `out` (`act_row_bytes()` bytes).
    pub fn quantize_act_row(&self, x: &[f32], out: &mut [u8]) {
        assert_eq!(x.len(), self.cols(), "activation row length");
        self.act_kind().quantize_row(x, out);
    }

    /// Threads are given row ranges whose bounds are multiples of this (or the end). Rows are
    /// stored one after another, so any split works.
    pub fn row_align(&self) -> usize {
        1
    }

    /// `y[t, r] = Σ_k W[r, k]·x[t, k]` for r in `rows` and t in 0..m; `act` holds m quantized
    /// rows back to back. Writes element (t, r) of `out` only for r in `rows`.
    pub fn matmul(&self, act: &[u8], m: usize, rows: Range<usize>, out: SharedOut) {
        self.matmul_at(cpu::level(), act, m, rows, out)
    }

    /// [`QMatrix::matmul`] at a given level (tests and benchmarks compare levels).
    pub fn matmul_at(
        &self,
        level: Level,
        act: &[u8],
        m: usize,
        rows: Range<usize>,
        out: SharedOut,
    ) {
        assert!(
            rows.start <= rows.end && rows.end <= self.rows(),
            "rows {rows:?} out of 0..{}",
            self.rows()
        );
        assert!(
            act.len() >= m * self.act_row_bytes(),
            "activation buffer too short for {m} rows"
        );
        assert!(
            rows.end <= out.ld(),
            "output leading dimension {} < {}",
            out.ld(),
            rows.end
        );
        if m == 0 || rows.is_empty() {
            return;
        }
        // Fails here, once, rather than in a kernel if the output is too short.
        let _ = out.row_ptr(m - 1);
        assert!(
            level <= detected_level(),
            "level {level:?} not available on this CPU"
        );
        match level {
            Level::Scalar => scalar::matmul(self, act, m, rows, out),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level was detected on this CPU (asserted above).
            Level::Avx2 => unsafe { avx2::matmul(self, act, m, rows, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Level::Avx512 => unsafe { avx512::matmul(self, act, m, rows, out) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => scalar::matmul(self, act, m, rows, out),
        }
    }
}

/// The best level this CPU has, ignoring `MM_KERNELS`.
pub(crate) fn detected_level() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        if avx2
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
        {
            return Level::Avx512;
        }
        if avx2 {
            return Level::Avx2;
        }
    }
    Level::Scalar
}
