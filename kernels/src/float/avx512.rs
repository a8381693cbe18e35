//! AVX-512 kernels: one zmm is one panel of 16 rows; 32 registers hold up to 24 accumulators.

use std::arch::x86_64::*;

use super::avx2::Avx2;
use super::panel::{Panels, View};
use super::scalar::DOT_LANES;
use super::tile::{self, Bf16, Format, Job, Simd, Tile, TileFn, F16, F32};

#[derive(Clone, Copy)]
struct Avx512;

impl Simd for Avx512 {
    const LANES: usize = 16;
    type V = __m512;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m512 {
        _mm512_set1_ps(*p)
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }
    #[inline(always)]
    unsafe fn load_bf16_pair(p: *const u16) -> (__m512, __m512) {
        let v = _mm512_loadu_si512(p.cast());
        let hi = _mm512_and_si512(v, _mm512_set1_epi32(0xffff0000u32 as i32));
        (
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v)),
            _mm512_castsi512_ps(hi),
        )
    }
    #[inline(always)]
    unsafe fn load_bf16_low(p: *const u16) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_loadu_si512(p.cast())))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn store_n(p: *mut f32, v: __m512, n: usize) {
        _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as u16, v)
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn kernel<F: Format<Avx512>, const T: usize, const Q: usize>(a: &Tile<F::E>) {
    tile::tile::<Avx512, F, T, Q>(a)
}

/// Tokens per block for long x: 6 tokens × 4 panels = 24 accumulators, 10 loads per 24 fma.
const TMAX: usize = 6;

/// Fewer tokens take more panels (decode: 1 token × 8 panels, 8 independent fma chains).
/// 3 tokens × 8 panels ran out of registers (36 GMAC/s against 48–57 over 4 panels).
fn pick<F: Format<Avx512>>(t: usize) -> [(usize, TileFn<F::E>); 4] {
    match t {
        1 => [
            (8, kernel::<F, 1, 8>),
            (4, kernel::<F, 1, 4>),
            (2, kernel::<F, 1, 2>),
            (1, kernel::<F, 1, 1>),
        ],
        2 => [
            (8, kernel::<F, 2, 8>),
            (4, kernel::<F, 2, 4>),
            (2, kernel::<F, 2, 2>),
            (1, kernel::<F, 2, 1>),
        ],
        3 => [
            (4, kernel::<F, 3, 4>),
            (2, kernel::<F, 3, 2>),
            (1, kernel::<F, 3, 1>),
            (1, kernel::<F, 3, 1>),
        ],
        4 => [
            (4, kernel::<F, 4, 4>),
            (2, kernel::<F, 4, 2>),
            (1, kernel::<F, 4, 1>),
            (1, kernel::<F, 4, 1>),
        ],
        5 => [
            (4, kernel::<F, 5, 4>),
            (2, kernel::<F, 5, 2>),
            (1, kernel::<F, 5, 1>),
            (1, kernel::<F, 5, 1>),
        ],
        6 => [
            (4, kernel::<F, 6, 4>),
            (2, kernel::<F, 6, 2>),
            (1, kernel::<F, 6, 1>),
            (1, kernel::<F, 6, 1>),
        ],
        _ => unreachable!("token blocks are at most {TMAX}"),
    }
}

/// The AVX2 tile (ymm vectors) with AVX-512's 32 registers.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn kernel_ymm<F: Format<Avx2>, const T: usize, const Q: usize>(a: &Tile<F::E>) {
    tile::tile::<Avx2, F, T, Q>(a)
}

/// f16 for one token: a zmm `vcvtph2ps` issues every other cycle on Zen 4 and with one token
/// per weight it set the pace (29 GMAC/s in cache); two ymm conversions per panel do not (45).
/// Same fma chains, so the same bits. (At two tokens the ymm tile, 4 panels for lack of
/// registers, streamed weights from memory slower than the zmm one over 8.)
fn pick_f16(t: usize) -> [(usize, TileFn<u16>); 4] {
    match t {
        1 => [
            (8, kernel_ymm::<F16, 1, 16>),
            (4, kernel_ymm::<F16, 1, 8>),
            (2, kernel_ymm::<F16, 1, 4>),
            (1, kernel_ymm::<F16, 1, 2>),
        ],
        t => pick::<F16>(t),
    }
}

/// # Safety
/// AVX-512 F/BW/VL, FMA and F16C are available; the job's bounds were checked.
pub(super) unsafe fn matmul(w: &Panels, cols: usize, job: &Job) {
    let stride = w.stride();
    match w.view() {
        View::F32(d) => tile::run(d, stride, cols, job, TMAX, pick::<F32>),
        View::F16(d) => tile::run(d, stride, cols, job, TMAX, pick_f16),
        View::BF16(d) => tile::run(d, stride, cols, job, TMAX, pick::<Bf16>),
    }
}

/// The fixed order of `float::dot`.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

/// `out[j] = dot(q, row j of k)`; rows `stride` apart, bounds checked by the caller.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(super) unsafe fn dot_rows(q: &[f32], k: &[f32], stride: usize, out: &mut [f32]) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot_body(q, k.get_unchecked(j * stride..j * stride + q.len()));
    }
}

/// Lanes 0–15 in `s0`, 16–31 in `s1`, then the pairwise sum.
#[inline(always)]
unsafe fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let n = a.len();
    let full = n / DOT_LANES * DOT_LANES;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    while i < full {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
        s1 = _mm512_fmadd_ps(
            _mm512_loadu_ps(pa.add(i + 16)),
            _mm512_loadu_ps(pb.add(i + 16)),
            s1,
        );
        i += DOT_LANES;
    }
    if full < n {
        // Zero-padded tail, as the scalar code.
        let rest = n - full;
        let m0 = ((1u32 << rest.min(16)) - 1) as u16;
        let m1 = ((1u32 << rest.saturating_sub(16)) - 1) as u16;
        s0 = _mm512_fmadd_ps(
            _mm512_maskz_loadu_ps(m0, pa.add(i)),
            _mm512_maskz_loadu_ps(m0, pb.add(i)),
            s0,
        );
        s1 = _mm512_fmadd_ps(
            _mm512_maskz_loadu_ps(m1, pa.add(i + 16)),
            _mm512_maskz_loadu_ps(m1, pb.add(i + 16)),
            s1,
        );
    }
    // Lanes j + 16, j + 8 (halves through f64 casts: the f32x8 extract is AVX-512 DQ), then
    // j + 4, j + 2, j + 1.
    let s = _mm512_castps_pd(_mm512_add_ps(s0, s1));
    let s = _mm256_add_ps(
        _mm256_castpd_ps(_mm512_castpd512_pd256(s)),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(s)),
    );
    let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
}

#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(super) unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    axpy_rows(&[alpha], x, 0, y)
}

/// `y = fma(alpha[j], row j of v, y)` for j in order, per element; rows `stride` apart, bounds
/// checked by the caller. y stays in registers, 64 elements at a time.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(super) unsafe fn axpy_rows(alpha: &[f32], v: &[f32], stride: usize, y: &mut [f32]) {
    let n = y.len();
    let (pv, py) = (v.as_ptr(), y.as_mut_ptr());
    let mut i = 0;
    while i + 64 <= n {
        let mut acc = [_mm512_setzero_ps(); 4];
        for (c, a) in acc.iter_mut().enumerate() {
            *a = _mm512_loadu_ps(py.add(i + 16 * c));
        }
        for (j, &w) in alpha.iter().enumerate() {
            let (w, row) = (_mm512_set1_ps(w), pv.add(j * stride + i));
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(w, _mm512_loadu_ps(row.add(16 * c)), *a);
            }
        }
        for (c, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(py.add(i + 16 * c), *a);
        }
        i += 64;
    }
    while i < n {
        let mask = ((1u32 << (n - i).min(16)) - 1) as u16;
        let mut a = _mm512_maskz_loadu_ps(mask, py.add(i));
        for (j, &w) in alpha.iter().enumerate() {
            a = _mm512_fmadd_ps(
                _mm512_set1_ps(w),
                _mm512_maskz_loadu_ps(mask, pv.add(j * stride + i)),
                a,
            );
        }
        _mm512_mask_storeu_ps(py.add(i), mask, a);
        i += 16;
    }
}
