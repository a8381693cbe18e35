//! AVX2 + FMA: `vpmaddubsw` + `vpmaddwd` for the integer dots (Q8_0 with the sign trick, since
//! its unsigned bytes would saturate `vpmaddubsw`).

use std::arch::x86_64::*;

use super::blocks::QMatrix;
use super::simd::{entries, Isa};
use crate::SharedOut;

pub(super) struct Avx2;

impl Isa for Avx2 {
    #[inline(always)]
    unsafe fn dot_off<const O: i32>(start: __m256i, u: __m256i, s: __m256i) -> __m256i {
        let ones = _mm256_set1_epi16(1);
        if O == 128 {
            let ws = _mm256_xor_si256(u, _mm256_set1_epi8(-128));
            let p = _mm256_maddubs_epi16(_mm256_abs_epi8(ws), _mm256_sign_epi8(s, ws));
            _mm256_add_epi32(start, _mm256_madd_epi16(p, ones))
        } else {
            _mm256_add_epi32(start, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), ones))
        }
    }

    #[inline(always)]
    unsafe fn offset_start<const O: i32>(s: __m256i) -> __m256i {
        if O == 0 || O == 128 {
            return _mm256_setzero_si256();
        }
        let sums = _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_set1_epi8(O as i8), s),
            _mm256_set1_epi16(1),
        );
        _mm256_sub_epi32(_mm256_setzero_si256(), sums)
    }

    #[inline(always)]
    unsafe fn dot_i16(acc: __m256i, p: __m256i, c: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, c))
    }

    #[inline(always)]
    unsafe fn add16_where(w: __m256i, qh: __m256i, bit: __m256i) -> __m256i {
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
        _mm256_add_epi8(w, _mm256_and_si256(set, _mm256_set1_epi8(16)))
    }
}

entries!(Avx2, "avx2,fma,f16c", 2, 4);
