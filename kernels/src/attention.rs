//! Attention of a group of query heads that share one key/value head, over one sequence's
//! cached positions, fused into one call: at 300 positions × 8 heads × 8 layers a call per
//! position (a dot, then an axpy) cost more than the decode step's products.
//!
//! For each query head i of the group: `scores = K·q_i · scale`, softmax, `out_i = Σ_j p_j V_j`.
//! Keys are cached in blocks of [`KEY_BLOCK`] positions stored transposed (`[dim][16]` per
//! block and head), so 16 scores come out of one vector accumulator with no horizontal sums;
//! values stay one row per position. Every key and value row is read once for all the group's
//! heads. A row's result never depends on other rows or other calls (batch invariance);
//! levels differ from each other by rounding only (bounded in the tests).

use crate::cpu::{self, Level};

/// Positions per key block.
pub const KEY_BLOCK: usize = 16;

/// Where key `dim`-element `i` of position `p` of one head lives in a blocked key buffer whose
/// blocks are `block_stride` floats apart (the head's offset already applied).
pub fn key_index(p: usize, i: usize, block_stride: usize) -> usize {
    (p / KEY_BLOCK) * block_stride + i * KEY_BLOCK + p % KEY_BLOCK
}

/// The inputs of one call.
pub struct HeadGroup<'a> {
    /// `heads` query vectors of `dim`, back to back.
    pub queries: &'a [f32],
    /// Blocked keys of this head: block b's `[dim][KEY_BLOCK]` floats start at
    /// `b * key_block_stride`.
    pub keys: &'a [f32],
    pub key_block_stride: usize,
    /// Value rows: position j's vector starts at `j * value_stride`.
    pub values: &'a [f32],
    pub value_stride: usize,
    /// Positions attended to (0..len).
    pub len: usize,
    pub dim: usize,
    pub scale: f32,
}

/// Runs one group; `scores` holds at least `heads · len` rounded up to [`KEY_BLOCK`] floats
/// of scratch, `out` receives `heads` vectors of `dim`.
pub fn attend(g: &HeadGroup<'_>, scores: &mut [f32], out: &mut [f32]) {
    attend_at(cpu::level(), g, scores, out)
}

/// Scratch floats [`attend`] needs for `heads` heads over `len` positions.
pub fn scores_len(heads: usize, len: usize) -> usize {
    heads * len.div_ceil(KEY_BLOCK) * KEY_BLOCK
}

/// [`attend`] with the kernels of `level` (tests).
pub fn attend_at(level: Level, g: &HeadGroup<'_>, scores: &mut [f32], out: &mut [f32]) {
    let heads = g.queries.len() / g.dim.max(1);
    assert!(g.dim > 0 && g.queries.len() == heads * g.dim, "attend: queries are not whole heads");
    assert!(g.len > 0, "attend: no positions");
    let blocks = g.len.div_ceil(KEY_BLOCK);
    assert!(g.key_block_stride >= g.dim * KEY_BLOCK, "attend: key blocks overlap");
    assert!(
        g.keys.len() >= (blocks - 1) * g.key_block_stride + g.dim * KEY_BLOCK
            && g.values.len() >= (g.len - 1) * g.value_stride + g.dim,
        "attend: {} positions do not fit the cache",
        g.len
    );
    assert!(scores.len() >= scores_len(heads, g.len) && out.len() == heads * g.dim, "attend: scratch or output too small");
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 if g.dim % 16 == 0 => {
            assert!(cpu::level() >= Level::Avx512);
            // SAFETY: AVX-512 detected; bounds checked above.
            unsafe { avx512::attend(g, heads, scores, out) }
        }
        _ => scalar_attend(g, heads, scores, out),
    }
}

fn scalar_attend(g: &HeadGroup<'_>, heads: usize, scores: &mut [f32], out: &mut [f32]) {
    let d = g.dim;
    let padded = g.len.div_ceil(KEY_BLOCK) * KEY_BLOCK;
    for h in 0..heads {
        let q = &g.queries[h * d..(h + 1) * d];
        let s = &mut scores[h * padded..h * padded + g.len];
        for (j, sc) in s.iter_mut().enumerate() {
            let dot: f32 = q.iter().enumerate().map(|(i, qv)| qv * g.keys[key_index(j, i, g.key_block_stride)]).sum();
            *sc = dot * g.scale;
        }
        crate::ops::softmax(s);
        let o = &mut out[h * d..(h + 1) * d];
        o.fill(0.0);
        for (j, &p) in s.iter().enumerate() {
            let v = &g.values[j * g.value_stride..j * g.value_stride + d];
            for (ov, &vv) in o.iter_mut().zip(v) {
                *ov += p * vv;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{HeadGroup, KEY_BLOCK};

    /// Heads handled per pass over the cache (MiniMind's GQA groups are 4 wide).
    const MAX_HEADS: usize = 4;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn attend(g: &HeadGroup<'_>, heads: usize, scores: &mut [f32], out: &mut [f32]) {
        let mut first = 0;
        while first < heads {
            let n = (heads - first).min(MAX_HEADS);
            pass(g, first, n, scores, out);
            first += n;
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn pass(g: &HeadGroup<'_>, first: usize, n: usize, scores: &mut [f32], out: &mut [f32]) {
        let (d, len) = (g.dim, g.len);
        let blocks = len.div_ceil(KEY_BLOCK);
        let padded = blocks * KEY_BLOCK;
        let (kp, vp, qp) = (g.keys.as_ptr(), g.values.as_ptr(), g.queries.as_ptr());
        let sp = scores.as_mut_ptr();
        let scale = _mm512_set1_ps(g.scale);
        // Scores, 16 positions per vector: Σ_i q[i] · K[i][16 positions], the i terms split
        // over two accumulators per head (even and odd i) so the fma chains overlap.
        for b in 0..blocks {
            let kb = kp.add(b * g.key_block_stride);
            let mut even = [_mm512_setzero_ps(); MAX_HEADS];
            let mut odd = [_mm512_setzero_ps(); MAX_HEADS];
            let mut i = 0;
            while i < d {
                let k0 = _mm512_loadu_ps(kb.add(i * KEY_BLOCK));
                let k1 = _mm512_loadu_ps(kb.add((i + 1) * KEY_BLOCK));
                for h in 0..n {
                    let q = qp.add((first + h) * d + i);
                    even[h] = _mm512_fmadd_ps(_mm512_set1_ps(*q), k0, even[h]);
                    odd[h] = _mm512_fmadd_ps(_mm512_set1_ps(*q.add(1)), k1, odd[h]);
                }
                i += 2;
            }
            for h in 0..n {
                _mm512_storeu_ps(sp.add((first + h) * padded + b * KEY_BLOCK), _mm512_mul_ps(_mm512_add_ps(even[h], odd[h]), scale));
            }
        }
        for h in first..first + n {
            softmax(std::slice::from_raw_parts_mut(sp.add(h * padded), len));
        }
        // Weighted sum of the value rows, each read once for the n heads.
        let op = out.as_mut_ptr();
        for c in 0..d / 16 {
            let mut acc = [_mm512_setzero_ps(); MAX_HEADS];
            for j in 0..len {
                let vv = _mm512_loadu_ps(vp.add(j * g.value_stride + c * 16));
                for (h, a) in acc.iter_mut().enumerate().take(n) {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*sp.add((first + h) * padded + j)), vv, *a);
                }
            }
            for (h, a) in acc.iter().enumerate().take(n) {
                _mm512_storeu_ps(op.add((first + h) * d + c * 16), *a);
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn softmax(x: &mut [f32]) {
        let n = x.len();
        let p = x.as_mut_ptr();
        let mut maxv = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i + 16 <= n {
            maxv = _mm512_max_ps(maxv, _mm512_loadu_ps(p.add(i)));
            i += 16;
        }
        let mut max = _mm512_reduce_max_ps(maxv);
        for j in i..n {
            max = max.max(*p.add(j));
        }
        let m = _mm512_set1_ps(max);
        let mut sumv = _mm512_setzero_ps();
        i = 0;
        while i + 16 <= n {
            let e = exp(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), m));
            _mm512_storeu_ps(p.add(i), e);
            sumv = _mm512_add_ps(sumv, e);
            i += 16;
        }
        if i < n {
            let k = ((1u32 << (n - i)) - 1) as u16;
            let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(i)), m));
            _mm512_mask_storeu_ps(p.add(i), k, e);
            sumv = _mm512_add_ps(sumv, _mm512_maskz_mov_ps(k, e));
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sumv));
        i = 0;
        while i + 16 <= n {
            _mm512_storeu_ps(p.add(i), _mm512_mul_ps(_mm512_loadu_ps(p.add(i)), inv));
            i += 16;
        }
        if i < n {
            let k = ((1u32 << (n - i)) - 1) as u16;
            _mm512_mask_storeu_ps(p.add(i), k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p.add(i)), inv));
        }
    }

    /// e^x for x ≤ 0 (softmax inputs), within 2 ulp: x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split
    /// in two for an exact product), e^r by its degree-6 Taylor polynomial, scaled by 2^n.
    #[target_feature(enable = "avx512f")]
    unsafe fn exp(x: __m512) -> __m512 {
        // Below this e^x is 0 in f32 (and -inf - max must give 0, not NaN).
        let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm512_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Keys of one head, row per position, put in the blocked layout (with `heads_between`
    /// other heads' blocks interleaved, as in the engine's cache).
    fn blocked(keys: &[Vec<f32>], dim: usize, heads_between: usize) -> (Vec<f32>, usize) {
        let stride = dim * KEY_BLOCK * (1 + heads_between);
        let mut out = vec![f32::NAN; keys.len().div_ceil(KEY_BLOCK) * stride];
        for (p, k) in keys.iter().enumerate() {
            for (i, &v) in k.iter().enumerate() {
                out[key_index(p, i, stride)] = v;
            }
        }
        // The unused tail of the last block stays NaN: it must not leak into any result.
        (out, stride)
    }

    fn reference(q: &[f32], keys: &[Vec<f32>], values: &[f32], vstride: usize, dim: usize, scale: f32) -> Vec<f64> {
        let heads = q.len() / dim;
        let mut out = vec![0.0f64; heads * dim];
        for h in 0..heads {
            let qh = &q[h * dim..(h + 1) * dim];
            let s: Vec<f64> = keys.iter().map(|k| qh.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale as f64).collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
            let total: f64 = e.iter().sum();
            for (j, w) in e.iter().enumerate() {
                for i in 0..dim {
                    out[h * dim + i] += w / total * values[j * vstride + i] as f64;
                }
            }
        }
        out
    }

    #[test]
    fn every_level_matches_an_f64_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (heads, dim, len, vstride) in [(4, 64, 1, 128), (4, 64, 37, 128), (4, 64, 300, 256), (2, 48, 17, 96), (1, 16, 5, 16), (3, 64, 64, 64), (4, 96, 33, 192)] {
            let q: Vec<f32> = (0..heads * dim).map(|_| rng.random_range(-2.0..2.0)).collect();
            let keys: Vec<Vec<f32>> = (0..len).map(|_| (0..dim).map(|_| rng.random_range(-2.0..2.0)).collect()).collect();
            let values: Vec<f32> = (0..len * vstride).map(|_| rng.random_range(-2.0..2.0)).collect();
            let (kb, kstride) = blocked(&keys, dim, 1);
            let g = HeadGroup { queries: &q, keys: &kb, key_block_stride: kstride, values: &values, value_stride: vstride, len, dim, scale: 0.125 };
            let want = reference(&q, &keys, &values, vstride, dim, 0.125);
            for level in [Level::Scalar, Level::Avx2, Level::Avx512] {
                if level > cpu::level() {
                    continue;
                }
                let mut scores = vec![0.0; scores_len(heads, len)];
                let mut out = vec![0.0; heads * dim];
                attend_at(level, &g, &mut scores, &mut out);
                let worst = out.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
                // f32 sums of ≤ 300 terms of magnitude ≤ 8 and a 2-ulp exp.
                assert!(worst < 2e-5, "{level:?} heads {heads} dim {dim} len {len}: off by {worst}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "do not fit")]
    fn positions_past_the_cache_are_refused() {
        let q = [0.0f32; 64];
        let k = [0.0f32; 64 * KEY_BLOCK];
        let v = [0.0f32; 64 * 3];
        let g = HeadGroup { queries: &q, keys: &k, key_block_stride: 64 * KEY_BLOCK, values: &v, value_stride: 64, len: 4, dim: 64, scale: 1.0 };
        attend(&g, &mut [0.0; KEY_BLOCK], &mut [0.0; 64]);
    }
}
