//! The AVX2 and AVX-512 kernels, written once over the few instructions that differ ([`Isa`]).
//!
//! Both use 256-bit vectors: Zen 4 splits 512-bit operations in two anyway, and AVX-512VL gives
//! the 256-bit forms of `vpdpbusd`/`vpdpwssd`, byte masks and 32 registers. A tile of R weight
//! rows × T tokens keeps R·T accumulators in registers, so each weight vector is unpacked once
//! per T tokens and each activation vector is loaded once per R rows. Every tile shape computes
//! each output exactly as the scalar reference does (see the parent module), so the tile
//! choice never changes a bit.

// Tiles index their accumulators [r][t] as the registers they are.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::blocks::{QMatrix, QType, QK_K};
use crate::SharedOut;

/// The operations AVX2 and AVX-512 do differently. All act on 32 bytes / 8 i32 lanes.
pub(super) trait Isa {
    /// `start + Σ (u − O)·s` over each group of 4 bytes: `u` unsigned weights (O = 0, 8, 16 or
    /// 128; u ≤ 31 unless O = 128), `s` signed activations, `start` from [`Isa::offset_start`].
    unsafe fn dot_off<const O: i32>(start: __m256i, u: __m256i, s: __m256i) -> __m256i;
    /// The start value [`Isa::dot_off`] needs for activation vector `s`.
    unsafe fn offset_start<const O: i32>(s: __m256i) -> __m256i;
    /// `acc + p[2i]·c[2i] + p[2i+1]·c[2i+1]` per i32 lane (i16 inputs).
    unsafe fn dot_i16(acc: __m256i, p: __m256i, c: __m256i) -> __m256i;
    /// `w + 16` at the bytes where `qh & bit` is nonzero (`bit` is one bit in every byte).
    unsafe fn add16_where(w: __m256i, qh: __m256i, bit: __m256i) -> __m256i;
}

pub(super) const T_Q4_0: u8 = 0;
pub(super) const T_Q4_1: u8 = 1;
pub(super) const T_Q5_0: u8 = 2;
pub(super) const T_Q5_1: u8 = 3;
pub(super) const T_Q8_0: u8 = 4;
pub(super) const T_Q4K: u8 = 5;
pub(super) const T_Q5K: u8 = 6;
pub(super) const T_Q6K: u8 = 7;

pub(super) fn code(ty: QType) -> u8 {
    match ty {
        QType::Q4_0 => T_Q4_0,
        QType::Q4_1 => T_Q4_1,
        QType::Q5_0 => T_Q5_0,
        QType::Q5_1 => T_Q5_1,
        QType::Q8_0 => T_Q8_0,
        QType::Q4K => T_Q4K,
        QType::Q5K => T_Q5K,
        QType::Q6K => T_Q6K,
    }
}

/// Pointers into one activation row.
#[derive(Clone, Copy)]
struct Act {
    qs: *const u8,
    d: *const u8,
    /// Q8_K: bsums; Q8_1: s.
    extra: *const u8,
}

impl Act {
    unsafe fn new(row: *const u8, nb: usize, be: usize) -> Act {
        Act {
            qs: row,
            d: row.add(nb * be),
            extra: row.add(nb * (be + 4)),
        }
    }
    #[inline(always)]
    unsafe fn d(&self, b: usize) -> f32 {
        (self.d.add(4 * b) as *const f32).read_unaligned()
    }
}

/// How many row tiles ahead the weights are prefetched. This machine's hardware prefetchers
/// barely help a product from memory (one thread reached 7 GB/s without this, 18 with it).
const AHEAD: usize = 4;

/// Prefetches `n` cache lines from byte `from` of an array (`n` is a constant once inlined).
/// Addresses past the array are harmless to a prefetch, hence `wrapping_add`.
#[inline(always)]
unsafe fn prefetch<E>(base: *const E, from: usize, n: usize) {
    let p = (base as *const u8).wrapping_add(from);
    for i in 0..n {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * i) as *const i8);
    }
}

/// [`QType::q_bytes`] of a type code, as a constant.
const fn q_bytes(ty: u8) -> usize {
    match ty {
        T_Q4_0 | T_Q4_1 => 16,
        T_Q4K => 128,
        T_Q5K => 160,
        T_Q6K => 192,
        _ => 32,
    }
}

#[inline(always)]
unsafe fn reduce8_ps(v: __m256) -> f32 {
    let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps(v, v, 1)))
}

/// The 32 unsigned values of a 32-element block (before the type's offset).
#[inline(always)]
unsafe fn unpack32<const TY: u8>(q: *const u8) -> __m256i {
    if TY == T_Q4_0 || TY == T_Q4_1 {
        let x = _mm256_broadcastsi128_si256(_mm_loadu_si128(q as *const __m128i));
        _mm256_and_si256(
            _mm256_srlv_epi64(x, _mm256_set_epi64x(4, 4, 0, 0)),
            _mm256_set1_epi8(0x0F),
        )
    } else {
        _mm256_loadu_si256(q as *const __m256i)
    }
}

/// Rows r0..r0+R × tokens t0..t0+T of a 32-element block type with offset O.
#[inline(always)]
unsafe fn tile32<I: Isa, const TY: u8, const O: i32, const R: usize, const T: usize>(
    w: &QMatrix,
    act: &[u8],
    r0: usize,
    t0: usize,
    out: SharedOut,
) {
    let (nb, qb, rb) = (w.nb, w.qtype().q_bytes(), w.act_row_bytes());
    let a: [Act; T] = std::array::from_fn(|t| Act::new(act.as_ptr().add((t0 + t) * rb), nb, 32));
    let wq = w.q.as_ptr().add(r0 * nb * qb);
    let wd = w.d.as_ptr().add(r0 * nb);
    let min = TY == T_Q4_1 || TY == T_Q5_1;
    let wm = if min { w.m.as_ptr().add(r0 * nb) } else { wd };
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    // As in `tile_k`: the first token tile prefetches the rows AHEAD tiles on.
    let pf = t0 == 0;
    let ahead = AHEAD * R * nb;
    for b in 0..nb {
        if pf {
            prefetch(wq, (ahead + b * R) * qb, (R * q_bytes(TY)).div_ceil(64));
            if b % 4 == 0 {
                prefetch(wd, (ahead + b * R) * 4, 1);
                if min {
                    prefetch(wm, (ahead + b * R) * 4, 1);
                }
            }
        }
        let mut av = [_mm256_setzero_si256(); T];
        let mut start = [_mm256_setzero_si256(); T];
        let mut dav = [_mm256_setzero_ps(); T];
        let mut sv = [_mm256_setzero_ps(); T];
        for t in 0..T {
            av[t] = _mm256_loadu_si256(a[t].qs.add(32 * b) as *const __m256i);
            start[t] = I::offset_start::<O>(av[t]);
            dav[t] = _mm256_set1_ps(a[t].d(b));
            if min {
                sv[t] = _mm256_set1_ps((a[t].extra.add(4 * b) as *const f32).read_unaligned());
            }
        }
        for r in 0..R {
            let wv = unpack32::<TY>(wq.add((r * nb + b) * qb));
            let dw = _mm256_set1_ps(*wd.add(r * nb + b));
            // The min goes to lane 0 only; the other lanes add 0·s = ±0, which changes nothing.
            let mv = if min {
                _mm256_blend_ps(_mm256_setzero_ps(), _mm256_set1_ps(*wm.add(r * nb + b)), 1)
            } else {
                _mm256_setzero_ps()
            };
            for t in 0..T {
                let s = I::dot_off::<O>(start[t], wv, av[t]);
                acc[r][t] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, dav[t]), acc[r][t]);
                if min {
                    acc[r][t] = _mm256_fmadd_ps(mv, sv[t], acc[r][t]);
                }
            }
        }
    }
    for t in 0..T {
        for r in 0..R {
            out.write(t0 + t, r0 + r, reduce8_ps(acc[r][t]));
        }
    }
}

/// Rows r0..r0+R × tokens t0..t0+T of a K-quant.
#[inline(always)]
unsafe fn tile_k<I: Isa, const TY: u8, const R: usize, const T: usize>(
    w: &QMatrix,
    act: &[u8],
    r0: usize,
    t0: usize,
    out: SharedOut,
) {
    let (nb, qb, rb) = (w.nb, w.qtype().q_bytes(), w.act_row_bytes());
    let a: [Act; T] = std::array::from_fn(|t| Act::new(act.as_ptr().add((t0 + t) * rb), nb, QK_K));
    let nib = _mm256_set1_epi8(0x0F);
    let mut accf = [[_mm256_setzero_ps(); T]; R];
    // The first token tile over these rows reads them from memory: it prefetches the rows
    // AHEAD tiles further on, at the pace it reads its own (later token tiles find them cached).
    let pf = t0 == 0;
    let ahead = (r0 + AHEAD * R) * nb;
    for b in 0..nb {
        if pf {
            prefetch(w.q.as_ptr(), (ahead + b * R) * qb, (R * q_bytes(TY)).div_ceil(64));
            prefetch(w.sc.as_ptr(), (ahead + b * R) * 32, R.div_ceil(2));
            if b % 4 == 0 {
                prefetch(w.d.as_ptr(), (ahead + b * R) * 4, 1);
                if TY != T_Q6K {
                    prefetch(w.m.as_ptr(), (ahead + b * R) * 4, 1);
                }
            }
        }
        let q: [*const u8; R] = std::array::from_fn(|r| w.q.as_ptr().add(((r0 + r) * nb + b) * qb));
        let sc: [*const i16; R] =
            std::array::from_fn(|r| w.sc.as_ptr().add(((r0 + r) * nb + b) * 16));
        let qh: [__m256i; R] = std::array::from_fn(|r| {
            if TY == T_Q5K {
                _mm256_loadu_si256(q[r] as *const __m256i)
            } else {
                _mm256_setzero_si256()
            }
        });
        let mut acc = [[_mm256_setzero_si256(); T]; R];
        for s in 0..8 {
            for r in 0..R {
                let wv = if TY == T_Q6K {
                    let (h, k) = (s / 4, s % 4);
                    let x = _mm256_loadu_si256(q[r].add(64 * h + 32 * (k & 1)) as *const __m256i);
                    let lo = if k >= 2 { _mm256_srli_epi16(x, 4) } else { x };
                    let hq = _mm256_loadu_si256(q[r].add(128 + 32 * h) as *const __m256i);
                    let hi = match k {
                        0 => _mm256_slli_epi16(hq, 4),
                        1 => _mm256_slli_epi16(hq, 2),
                        2 => hq,
                        _ => _mm256_srli_epi16(hq, 2),
                    };
                    _mm256_or_si256(
                        _mm256_and_si256(lo, nib),
                        _mm256_and_si256(hi, _mm256_set1_epi8(0x30)),
                    )
                } else {
                    let base = if TY == T_Q5K { 32 } else { 0 };
                    let x = _mm256_loadu_si256(q[r].add(base + 32 * (s / 2)) as *const __m256i);
                    let x = _mm256_and_si256(
                        if s % 2 == 1 {
                            _mm256_srli_epi16(x, 4)
                        } else {
                            x
                        },
                        nib,
                    );
                    if TY == T_Q5K {
                        I::add16_where(x, qh[r], _mm256_set1_epi8(1 << s))
                    } else {
                        x
                    }
                };
                let scv = if TY == T_Q6K {
                    // i16 lanes 0..8 cover sub-block 2s, lanes 8..16 sub-block 2s+1.
                    let pair = _mm256_set1_epi32((sc[r].add(2 * s) as *const i32).read_unaligned());
                    _mm256_shuffle_epi8(
                        pair,
                        _mm256_setr_epi8(
                            0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3,
                            2, 3, 2, 3, 2, 3, 2, 3,
                        ),
                    )
                } else {
                    _mm256_set1_epi16(*sc[r].add(s))
                };
                for t in 0..T {
                    let av = _mm256_loadu_si256(a[t].qs.add(QK_K * b + 32 * s) as *const __m256i);
                    acc[r][t] = I::dot_i16(acc[r][t], _mm256_maddubs_epi16(wv, av), scv);
                }
            }
        }
        let bs: [__m256i; T] =
            std::array::from_fn(|t| _mm256_loadu_si256(a[t].extra.add(32 * b) as *const __m256i));
        let dav: [__m256; T] = std::array::from_fn(|t| _mm256_set1_ps(a[t].d(b)));
        for r in 0..R {
            let i = (r0 + r) * nb + b;
            let dv = _mm256_set1_ps(w.d[i]);
            if TY == T_Q6K {
                // The −32 of every value: −32 · (sc_2l·bsum_2l + sc_2l+1·bsum_2l+1) into lane l.
                let nsc = _mm256_mullo_epi16(
                    _mm256_loadu_si256(sc[r] as *const __m256i),
                    _mm256_set1_epi16(-32),
                );
                for t in 0..T {
                    let ints = I::dot_i16(acc[r][t], nsc, bs[t]);
                    accf[r][t] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(ints),
                        _mm256_mul_ps(dv, dav[t]),
                        accf[r][t],
                    );
                }
            } else {
                // Lane l: min_l against the two bsums of sub-block l.
                let m = _mm256_cvtepu16_epi32(_mm_loadu_si128(sc[r].add(8) as *const __m128i));
                let mdup = _mm256_or_si256(m, _mm256_slli_epi32(m, 16));
                let dmv = _mm256_set1_ps(w.m[i]);
                for t in 0..T {
                    accf[r][t] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(acc[r][t]),
                        _mm256_mul_ps(dv, dav[t]),
                        accf[r][t],
                    );
                    let mm = _mm256_cvtepi32_ps(_mm256_madd_epi16(mdup, bs[t]));
                    accf[r][t] = _mm256_fnmadd_ps(mm, _mm256_mul_ps(dmv, dav[t]), accf[r][t]);
                }
            }
        }
    }
    for t in 0..T {
        for r in 0..R {
            out.write(t0 + t, r0 + r, reduce8_ps(accf[r][t]));
        }
    }
}

#[inline(always)]
unsafe fn tile<I: Isa, const TY: u8, const R: usize, const T: usize>(
    w: &QMatrix,
    act: &[u8],
    r0: usize,
    t0: usize,
    out: SharedOut,
) {
    match TY {
        T_Q4_0 => tile32::<I, TY, 8, R, T>(w, act, r0, t0, out),
        T_Q5_0 => tile32::<I, TY, 16, R, T>(w, act, r0, t0, out),
        T_Q8_0 => tile32::<I, TY, 128, R, T>(w, act, r0, t0, out),
        T_Q4_1 | T_Q5_1 => tile32::<I, TY, 0, R, T>(w, act, r0, t0, out),
        _ => tile_k::<I, TY, R, T>(w, act, r0, t0, out),
    }
}

/// The whole product for type TY, in tiles of RM rows × TM tokens (and smaller at the edges).
#[inline(always)]
pub(super) unsafe fn run<I: Isa, const TY: u8, const RM: usize, const TM: usize>(
    w: &QMatrix,
    act: &[u8],
    m: usize,
    rows: Range<usize>,
    out: SharedOut,
) {
    // Rows go in chunks: the chunk's weights stay in cache while every token passes, and each
    // token tile writes a contiguous run of the chunk's outputs.
    const CHUNK: usize = 64;
    let mut c = rows.start;
    while c < rows.end {
        let c_end = (c + CHUNK).min(rows.end);
        let mut t = 0;
        while t < m {
            let left = m - t;
            let step = if left >= TM {
                TM
            } else if left >= 2 {
                2
            } else {
                1
            };
            let mut r = c;
            while r < c_end {
                let full = c_end - r >= RM;
                match (full, step) {
                    (true, s) if s == TM => tile::<I, TY, RM, TM>(w, act, r, t, out),
                    (true, 2) => tile::<I, TY, RM, 2>(w, act, r, t, out),
                    (true, _) => tile::<I, TY, RM, 1>(w, act, r, t, out),
                    (false, s) if s == TM => tile::<I, TY, 1, TM>(w, act, r, t, out),
                    (false, 2) => tile::<I, TY, 1, 2>(w, act, r, t, out),
                    (false, _) => tile::<I, TY, 1, 1>(w, act, r, t, out),
                }
                r += if full { RM } else { 1 };
            }
            t += step;
        }
        c = c_end;
    }
}

/// Generates the per-type entry points of one level (each one function with its features).
macro_rules! entries {
    ($isa:ty, $features:literal, $rm:literal, $tm:literal) => {
        pub(crate) unsafe fn matmul(
            w: &QMatrix,
            act: &[u8],
            m: usize,
            rows: std::ops::Range<usize>,
            out: SharedOut,
        ) {
            use super::simd::*;
            #[target_feature(enable = $features)]
            unsafe fn go<const TY: u8>(
                w: &QMatrix,
                act: &[u8],
                m: usize,
                rows: std::ops::Range<usize>,
                out: SharedOut,
            ) {
                run::<$isa, TY, $rm, $tm>(w, act, m, rows, out)
            }
            match code(w.qtype()) {
                T_Q4_0 => go::<T_Q4_0>(w, act, m, rows, out),
                T_Q4_1 => go::<T_Q4_1>(w, act, m, rows, out),
                T_Q5_0 => go::<T_Q5_0>(w, act, m, rows, out),
                T_Q5_1 => go::<T_Q5_1>(w, act, m, rows, out),
                T_Q8_0 => go::<T_Q8_0>(w, act, m, rows, out),
                T_Q4K => go::<T_Q4K>(w, act, m, rows, out),
                T_Q5K => go::<T_Q5K>(w, act, m, rows, out),
                _ => go::<T_Q6K>(w, act, m, rows, out),
            }
        }
    };
}
pub(super) use entries;
