//! AVX-512 (VL, BW, VNNI) on 256-bit vectors: `vpdpbusd` for the 32-element blocks (the
//! weights' offset is taken off through a per-token start value), `vpmaddubsw` + `vpdpwssd`
//! for the K-quants' scaled sub-blocks, byte masks for Q5_K's fifth bits.

use std::arch::x86_64::*;

use super::blocks::QMatrix;
use super::simd::{entries, Isa};
use crate::SharedOut;

pub(super) struct Avx512;

impl Isa for Avx512 {
    #[inline(always)]
    unsafe fn dot_off<const O: i32>(start: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(start, u, s)
    }

    #[inline(always)]
    unsafe fn offset_start<const O: i32>(s: __m256i) -> __m256i {
        if O == 0 {
            return _mm256_setzero_si256();
        }
        let sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(O as u8 as i8), s);
        _mm256_sub_epi32(_mm256_setzero_si256(), sums)
    }

    #[inline(always)]
    unsafe fn dot_i16(acc: __m256i, p: __m256i, c: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, p, c)
    }

    #[inline(always)]
    unsafe fn add16_where(w: __m256i, qh: __m256i, bit: __m256i) -> __m256i {
        _mm256_mask_add_epi8(w, _mm256_test_epi8_mask(qh, bit), w, _mm256_set1_epi8(16))
    }
}

entries!(
    Avx512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    4,
    4
);
