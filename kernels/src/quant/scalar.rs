//! The reference computation, and the float steps every level shares.
//!
//! K-quants: per super-block, exact integers `sumi` (Σ over sub-blocks of scale × Σ q·a, Q6_K
//! with its −32 folded in through the activation block sums) and `summ` (Q4_K/Q5_K: Σ min ×
//! sum of the sub-block's activations), then [`combine_k`]. 32-element blocks: per group of 4
//! elements an exact integer, accumulated into 8 float lanes with fma, reduced by [`reduce8`].

use std::ops::Range;

use super::act::ActRow;
use super::blocks::{k_unsigned, q32_unsigned, QMatrix, QType};
use crate::SharedOut;

/// One super-block's float step, shared by every level: `acc + (d·da·sumi − dmin·da·summ)`.
#[inline(always)]
pub(crate) fn combine_k(ty: QType, acc: f32, d: f32, dmin: f32, da: f32, sumi: i32, summ: i32) -> f32 {
    if ty == QType::Q6K {
        acc + (d * da) * sumi as f32
    } else {
        acc + ((d * da) * sumi as f32 - (dmin * da) * summ as f32)
    }
}

/// The fixed tree that adds the 8 lanes (as the SIMD code does: halves, then quarters, then
/// the last pair).
#[inline(always)]
pub(crate) fn reduce8(l: [f32; 8]) -> f32 {
    let v = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    let w = [v[0] + v[2], v[1] + v[3]];
    w[0] + w[1]
}

/// Q4_1/Q5_1's min term of one output, `Σ_b m_b·s_b` in block order (every level calls this).
pub(crate) fn min_sum(w: &QMatrix, r: usize, a: &ActRow) -> f32 {
    let mut acc = 0f32;
    for b in 0..w.nb {
        acc += w.m[r * w.nb + b] * a.s(b);
    }
    acc
}

/// Offset subtracted from a 32-element type's unsigned values.
pub(crate) fn offset32(ty: QType) -> i32 {
    match ty {
        QType::Q4_0 => 8,
        QType::Q5_0 => 16,
        QType::Q8_0 => 128,
        _ => 0,
    }
}

/// The exact integers of super-block `b` of row `r` against activation block `b`.
pub(crate) fn k_ints(w: &QMatrix, r: usize, b: usize, a: &ActRow) -> (i32, i32) {
    let ty = w.qtype();
    let (q, sc, qa) = (w.qblock(r, b), w.scales(r, b), a.qs(b));
    let mut sumi = 0i32;
    let mut sub = 0i32;
    let sub_len = if ty == QType::Q6K { 16 } else { 32 };
    for e in 0..256 {
        let (v, _) = k_unsigned(ty, q, sc, e);
        sub += v * (qa[e] as i8 as i32);
        if e % sub_len == sub_len - 1 {
            sumi += sc[e / sub_len] as i32 * sub;
            sub = 0;
        }
    }
    let mut summ = 0i32;
    for j in 0..16 {
        let bs = a.bsum(b, j);
        if ty == QType::Q6K {
            sumi -= 32 * sc[j] as i32 * bs;
        } else {
            summ += sc[8 + j / 2] as i32 * bs;
        }
    }
    (sumi, summ)
}

/// Output (t, r) for activation row `a`.
pub(crate) fn dot(w: &QMatrix, r: usize, a: &ActRow) -> f32 {
    let ty = w.qtype();
    if ty.is_k() {
        let mut acc = 0f32;
        for b in 0..w.nb {
            let (sumi, summ) = k_ints(w, r, b, a);
            let i = r * w.nb + b;
            let dmin = if ty == QType::Q6K { 0.0 } else { w.m[i] };
            acc = combine_k(ty, acc, w.d[i], dmin, a.d(b), sumi, summ);
        }
        return acc;
    }
    let o = offset32(ty);
    let mut lanes = [0f32; 8];
    for b in 0..w.nb {
        let (q, qa) = (w.qblock(r, b), a.qs(b));
        let scale = w.d[r * w.nb + b] * a.d(b);
        for (g, lane) in lanes.iter_mut().enumerate() {
            let s: i32 = (4 * g..4 * g + 4).map(|e| (q32_unsigned(ty, q, e) - o) * (qa[e] as i8 as i32)).sum();
            *lane = (s as f32).mul_add(scale, *lane);
        }
    }
    let total = reduce8(lanes);
    if ty.has_min() {
        total + min_sum(w, r, a)
    } else {
        total
    }
}

pub(crate) fn matmul(w: &QMatrix, act: &[u8], m: usize, rows: Range<usize>, out: SharedOut) {
    let (kind, rb) = (w.act_kind(), w.act_row_bytes());
    for t in 0..m {
        let a = ActRow::new(kind, w.cols(), &act[t * rb..(t + 1) * rb]);
        for r in rows.clone() {
            // SAFETY: this call owns columns `rows` of the output.
            unsafe { out.write(t, r, dot(w, r, &a)) };
        }
    }
}
