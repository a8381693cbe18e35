//! The register-tiled product shared by the SIMD levels, written once over a [`Simd`] vector
//! type and a weight [`Format`].
//!
//! A tile is T tokens × Q vectors of rows (Q/vpp panels): T·Q accumulators held in registers
//! while k runs over all columns. Each k step loads Q weight vectors and broadcasts T
//! activations, so a weight is read once per T tokens and an activation once per Q vectors.
//! The broadcasts come straight from the T rows of x (T streams of a few KB, in L1); packing x
//! per token block cost more than it saved.
//!
//! Order of work: panels in chunks (a few hundred KB of weights, kept in L2), and inside a
//! chunk every block of tokens, so weights come from memory once per call whatever m is.

use std::ops::Range;

use super::panel::PANEL;
use crate::SharedOut;

/// A product to compute: x `[m, cols]`, output rows `rows` (starting on a panel).
pub(super) struct Job<'a> {
    pub x: &'a [f32],
    pub m: usize,
    pub rows: Range<usize>,
    pub out: SharedOut,
}

/// One f32 SIMD register and the operations the kernels need.
pub(super) trait Simd {
    const LANES: usize;
    type V: Copy;
    unsafe fn zero() -> Self::V;
    /// All lanes `*p`.
    unsafe fn splat(p: *const f32) -> Self::V;
    /// `a·b + c`, one rounding.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn load_f32(p: *const f32) -> Self::V;
    unsafe fn load_f16(p: *const u16) -> Self::V;
    /// LANES u32 of bf16 pairs: (low halves, high halves) widened.
    unsafe fn load_bf16_pair(p: *const u16) -> (Self::V, Self::V);
    /// The low halves only.
    unsafe fn load_bf16_low(p: *const u16) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// The first `n` (< LANES) lanes.
    unsafe fn store_n(p: *mut f32, v: Self::V, n: usize);
}

/// How a weight format is read. In every format a pair of k spans 32 elements of a panel.
pub(super) trait Format<S: Simd> {
    type E: Copy;
    /// Elements from the start of a k pair to row `i` of the panel.
    fn offset(i: usize) -> usize;
    /// Rows [i, i + LANES) at k = 2j and 2j + 1, `p` pointing at row i of pair j.
    unsafe fn load2(p: *const Self::E) -> (S::V, S::V);
    /// The same rows at k = 2j only (the last k of an odd cols).
    unsafe fn load1(p: *const Self::E) -> S::V;
}

pub(super) struct F32;
pub(super) struct F16;
pub(super) struct Bf16;

impl<S: Simd> Format<S> for F32 {
    type E = f32;
    #[inline(always)]
    fn offset(i: usize) -> usize {
        i
    }
    #[inline(always)]
    unsafe fn load2(p: *const f32) -> (S::V, S::V) {
        (S::load_f32(p), S::load_f32(p.add(PANEL)))
    }
    #[inline(always)]
    unsafe fn load1(p: *const f32) -> S::V {
        S::load_f32(p)
    }
}

impl<S: Simd> Format<S> for F16 {
    type E = u16;
    #[inline(always)]
    fn offset(i: usize) -> usize {
        i
    }
    #[inline(always)]
    unsafe fn load2(p: *const u16) -> (S::V, S::V) {
        (S::load_f16(p), S::load_f16(p.add(PANEL)))
    }
    #[inline(always)]
    unsafe fn load1(p: *const u16) -> S::V {
        S::load_f16(p)
    }
}

impl<S: Simd> Format<S> for Bf16 {
    type E = u16;
    #[inline(always)]
    fn offset(i: usize) -> usize {
        2 * i
    }
    #[inline(always)]
    unsafe fn load2(p: *const u16) -> (S::V, S::V) {
        S::load_bf16_pair(p)
    }
    #[inline(always)]
    unsafe fn load1(p: *const u16) -> S::V {
        S::load_bf16_low(p)
    }
}

/// One call of a tile kernel.
pub(super) struct Tile<E> {
    /// The tile's first panel.
    pub w: *const E,
    /// Elements from one panel to the next.
    pub stride: usize,
    pub cols: usize,
    /// The tile's first token (x row-major, `cols` apart).
    pub x: *const f32,
    /// Output element (first token, first row of the tile).
    pub out: *mut f32,
    pub ld: usize,
    /// Rows of the tile to store, from its first (more than the tile's means all).
    pub valid: usize,
}

pub(super) type TileFn<E> = unsafe fn(&Tile<E>);

/// For a block of `t` tokens: kernels by the panels they take, most first, the last taking
/// one. Panels left over by the widest go to the next that fits (a thread's share of 44
/// panels: 5×8 + 4, not 5×8 + 4×1, whose single fma chains would wait on its latency).
pub(super) type Pick<E> = fn(t: usize) -> [(usize, TileFn<E>); 4];

/// The tile kernel of T tokens × Q vectors; ISA modules wrap it in a `#[target_feature]` fn.
///
/// # Safety
/// The ISA's features are enabled; `a` describes in-bounds panels, x rows and output.
#[inline(always)]
pub(super) unsafe fn tile<S: Simd, F: Format<S>, const T: usize, const Q: usize>(a: &Tile<F::E>) {
    let vpp = PANEL / S::LANES;
    let mut acc = [[S::zero(); Q]; T];
    let mut wp = [a.w; Q];
    for (q, p) in wp.iter_mut().enumerate() {
        *p = a.w.add(q / vpp * a.stride + F::offset(q % vpp * S::LANES));
    }
    let mut xt = [a.x; T];
    for (t, p) in xt.iter_mut().enumerate() {
        *p = a.x.add(t * a.cols);
    }
    for kk in 0..a.cols / 2 {
        let mut w0 = [S::zero(); Q];
        let mut w1 = [S::zero(); Q];
        for q in 0..Q {
            (w0[q], w1[q]) = F::load2(wp[q]);
            wp[q] = wp[q].add(2 * PANEL);
        }
        for t in 0..T {
            let b = S::splat(xt[t].add(2 * kk));
            for q in 0..Q {
                acc[t][q] = S::fma(w0[q], b, acc[t][q]);
            }
        }
        for t in 0..T {
            let b = S::splat(xt[t].add(2 * kk + 1));
            for q in 0..Q {
                acc[t][q] = S::fma(w1[q], b, acc[t][q]);
            }
        }
    }
    if a.cols % 2 == 1 {
        let mut w0 = [S::zero(); Q];
        for q in 0..Q {
            w0[q] = F::load1(wp[q]);
        }
        for t in 0..T {
            let b = S::splat(xt[t].add(a.cols - 1));
            for q in 0..Q {
                acc[t][q] = S::fma(w0[q], b, acc[t][q]);
            }
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        let o = a.out.add(t * a.ld);
        for (q, &v) in acc.iter().enumerate() {
            let r = q * S::LANES;
            if r + S::LANES <= a.valid {
                S::store(o.add(r), v);
            } else if r < a.valid {
                S::store_n(o.add(r), v, a.valid - r);
            }
        }
    }
}

/// Panels per chunk: the weights a chunk's token blocks share from L2. Every main kernel's
/// panel count divides it.
const CHUNK: usize = 8;

/// Runs `job` over panels `w` (`stride` elements apart) with tile kernels from `pick`, token
/// blocks of at most `tmax`.
///
/// # Safety
/// The kernels `pick` gives are runnable on this CPU; `w` holds the panels of the job's rows,
/// and the job's bounds were checked (`FMatrix::matmul_at`).
pub(super) unsafe fn run<E>(
    w: &[E],
    stride: usize,
    cols: usize,
    job: &Job,
    tmax: usize,
    pick: Pick<E>,
) {
    let (m, rows) = (job.m, &job.rows);
    let (p0, p1) = (rows.start / PANEL, rows.end.div_ceil(PANEL));
    assert!(p1 * stride <= w.len(), "panels out of range");
    for c0 in (p0..p1).step_by(CHUNK) {
        let c1 = (c0 + CHUNK).min(p1);
        let mut t0 = 0;
        while t0 < m {
            let tb = tmax.min(m - t0);
            let kernels = pick(tb);
            let out = job.out.row_ptr(t0);
            let mut p = c0;
            while p < c1 {
                let (n, kernel) = *kernels
                    .iter()
                    .find(|(n, _)| p + n <= c1)
                    .expect("a one-panel kernel");
                let tile = Tile {
                    w: w.as_ptr().add(p * stride),
                    stride,
                    cols,
                    x: job.x.as_ptr().add(t0 * cols),
                    out: out.add(p * PANEL),
                    ld: job.out.ld(),
                    valid: rows.end - p * PANEL,
                };
                kernel(&tile);
                p += n;
            }
            t0 += tb;
        }
    }
}
