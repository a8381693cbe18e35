//! AVX2 + FMA + F16C kernels: a panel is two ymm; 16 registers hold up to 12 accumulators.

use std::arch::x86_64::*;

use super::panel::{Panels, View};
use super::scalar::DOT_LANES;
use super::tile::{self, Bf16, Format, Job, Simd, Tile, TileFn, F16, F32};

#[derive(Clone, Copy)]
pub(super) struct Avx2;

impl Simd for Avx2 {
    const LANES: usize = 8;
    type V = __m256;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m256 {
        _mm256_broadcast_ss(&*p)
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
    #[inline(always)]
    unsafe fn load_bf16_pair(p: *const u16) -> (__m256, __m256) {
        let v = _mm256_loadu_si256(p.cast());
        let hi = _mm256_and_si256(v, _mm256_set1_epi32(0xffff0000u32 as i32));
        (
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v)),
            _mm256_castsi256_ps(hi),
        )
    }
    #[inline(always)]
    unsafe fn load_bf16_low(p: *const u16) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_loadu_si256(p.cast())))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn store_n(p: *mut f32, v: __m256, n: usize) {
        let mut tmp = [0f32; 8];
        _mm256_storeu_ps(tmp.as_mut_ptr(), v);
        std::ptr::copy_nonoverlapping(tmp.as_ptr(), p, n);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn kernel<F: Format<Avx2>, const T: usize, const Q: usize>(a: &Tile<F::E>) {
    tile::tile::<Avx2, F, T, Q>(a)
}

/// Tokens per block for long x: 6 tokens × 1 panel (2 ymm) = 12 accumulators.
const TMAX: usize = 6;
/// bf16 keeps its 0xffff0000 mask in a register too: 12 accumulators spilled (38 GMAC/s
/// instead of 53 at 5 tokens).
const TMAX_BF16: usize = 5;

/// Panels per tile (Q = 2 per panel) for each block size; decode takes 4 panels, 8 chains.
/// Past 2 tokens × 2 panels the weights of a k pair (2Q registers) and the accumulators no
/// longer fit in 16 registers (3 × 2 panels spilled: 24 GMAC/s against 50 for 2 × 2).
fn pick<F: Format<Avx2>>(t: usize) -> [(usize, TileFn<F::E>); 4] {
    match t {
        1 => [
            (4, kernel::<F, 1, 8>),
            (2, kernel::<F, 1, 4>),
            (1, kernel::<F, 1, 2>),
            (1, kernel::<F, 1, 2>),
        ],
        2 => [
            (2, kernel::<F, 2, 4>),
            (1, kernel::<F, 2, 2>),
            (1, kernel::<F, 2, 2>),
            (1, kernel::<F, 2, 2>),
        ],
        3 => [(1, kernel::<F, 3, 2>); 4],
        4 => [(1, kernel::<F, 4, 2>); 4],
        5 => [(1, kernel::<F, 5, 2>); 4],
        6 => [(1, kernel::<F, 6, 2>); 4],
        _ => unreachable!("token blocks are at most {TMAX}"),
    }
}

/// bf16 also keeps its mask in a register: 2 tokens take one panel.
fn pick_bf16(t: usize) -> [(usize, TileFn<u16>); 4] {
    match t {
        2 => [(1, kernel::<Bf16, 2, 2>); 4],
        t => pick::<Bf16>(t),
    }
}

/// # Safety
/// AVX2, FMA and F16C are available; the job's bounds were checked.
pub(super) unsafe fn matmul(w: &Panels, cols: usize, job: &Job) {
    let stride = w.stride();
    match w.view() {
        View::F32(d) => tile::run(d, stride, cols, job, TMAX, pick::<F32>),
        View::F16(d) => tile::run(d, stride, cols, job, TMAX, pick::<F16>),
        View::BF16(d) => tile::run(d, stride, cols, job, TMAX_BF16, pick_bf16),
    }
}

/// The fixed order of `float::dot`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

/// `out[j] = dot(q, row j of k)`; rows `stride` apart, bounds checked by the caller.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot_rows(q: &[f32], k: &[f32], stride: usize, out: &mut [f32]) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot_body(q, k.get_unchecked(j * stride..j * stride + q.len()));
    }
}

/// Lanes 8j..8j+8 in `s[j]`, then the pairwise sum.
#[inline(always)]
unsafe fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let mut s = [_mm256_setzero_ps(); 4];
    let n = a.len();
    let full = n / DOT_LANES * DOT_LANES;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    while i < full {
        for (j, s) in s.iter_mut().enumerate() {
            *s = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8 * j)),
                _mm256_loadu_ps(pb.add(i + 8 * j)),
                *s,
            );
        }
        i += DOT_LANES;
    }
    if full < n {
        // Zero-padded tail, as the scalar code.
        let (mut ta, mut tb) = ([0f32; DOT_LANES], [0f32; DOT_LANES]);
        ta[..n - full].copy_from_slice(&a[full..]);
        tb[..n - full].copy_from_slice(&b[full..]);
        for (j, s) in s.iter_mut().enumerate() {
            *s = _mm256_fmadd_ps(
                _mm256_loadu_ps(ta.as_ptr().add(8 * j)),
                _mm256_loadu_ps(tb.as_ptr().add(8 * j)),
                *s,
            );
        }
    }
    let s = _mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]));
    let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
}

#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    axpy_rows(&[alpha], x, 0, y)
}

/// `y = fma(alpha[j], row j of v, y)` for j in order, per element; rows `stride` apart, bounds
/// checked by the caller. y stays in registers, 32 elements at a time.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn axpy_rows(alpha: &[f32], v: &[f32], stride: usize, y: &mut [f32]) {
    let n = y.len();
    let (pv, py) = (v.as_ptr(), y.as_mut_ptr());
    let mut i = 0;
    while i + 32 <= n {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (c, a) in acc.iter_mut().enumerate() {
            *a = _mm256_loadu_ps(py.add(i + 8 * c));
        }
        for (j, &w) in alpha.iter().enumerate() {
            let (w, row) = (_mm256_set1_ps(w), pv.add(j * stride + i));
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(row.add(8 * c)), *a);
            }
        }
        for (c, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(py.add(i + 8 * c), *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        let mut a = _mm256_loadu_ps(py.add(i));
        for (j, &w) in alpha.iter().enumerate() {
            a = _mm256_fmadd_ps(
                _mm256_set1_ps(w),
                _mm256_loadu_ps(pv.add(j * stride + i)),
                a,
            );
        }
        _mm256_storeu_ps(py.add(i), a);
        i += 8;
    }
    for e in i..n {
        // With the fma feature this is one vfmadd, the same rounding as the vector lanes.
        let mut a = *py.add(e);
        for (j, &w) in alpha.iter().enumerate() {
            a = w.mul_add(*pv.add(j * stride + e), a);
        }
        *py.add(e) = a;
    }
}
