//! The reference computation: the one float pattern every level reproduces.
//!
//! Every output keeps 8 float lanes, starting at +0, and ends as [`reduce8`] of them.
//! - 32-element blocks, block after block: lane g takes `fma(S_g, dw·da, lane)` where S_g is the
//!   exact integer Σ (q − offset)·a over elements 4g..4g+3; Q4_1/Q5_1 then add their min term
//!   to lane 0: `fma(m, s, lane0)` (s: the activation block's stored d·Σq).
//! - K-quants, super-block after super-block: lane l takes `fma(I_l, d·da, lane)` and then,
//!   for Q4_K/Q5_K, `fma(−M_l, dmin·da, lane)`. I_l is the exact integer Σ over the 8 steps of
//!   32 elements s of scale(s, l)·Σ q·a over elements 32s+4l..32s+4l+3 (Q6_K: minus
//!   32·(sc_2l·bsum_2l + sc_2l+1·bsum_2l+1), its offset); M_l = min_l·(bsum_2l + bsum_2l+1).
//!   This is what `vpmaddubsw` + `vpdpwssd` (or `vpmaddwd`) leave in i32 lane l.
//!
//! A lane never holds −0 (it starts at +0 and a sum only gives −0 from two −0), so a SIMD
//! lane adding a product that is ±0 leaves it unchanged, as the scalar code's skipping does.

use std::ops::Range;

use super::act::ActRow;
use super::blocks::{k_unsigned, q32_unsigned, QMatrix, QType};
use crate::SharedOut;

/// The fixed tree that adds the 8 lanes (as the SIMD code does: halves, then quarters, then
/// the last pair).
#[inline(always)]
pub(crate) fn reduce8(l: [f32; 8]) -> f32 {
    let v = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    let w = [v[0] + v[2], v[1] + v[3]];
    w[0] + w[1]
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

/// The exact lane integers (I_l, M_l) of super-block `b` of row `r` against activation block `b`.
pub(crate) fn k_lanes(w: &QMatrix, r: usize, b: usize, a: &ActRow) -> ([i32; 8], [i32; 8]) {
    let ty = w.qtype();
    let (q, sc, qa) = (w.qblock(r, b), w.scales(r, b), a.qs(b));
    let (mut i, mut m) = ([0i32; 8], [0i32; 8]);
    for s in 0..8 {
        for (l, lane) in i.iter_mut().enumerate() {
            let mut sum = 0;
            let mut scale = 0;
            let first = 32 * s + 4 * l;
            for (e, &x) in (first..first + 4).zip(&qa[first..first + 4]) {
                let (v, sce) = k_unsigned(ty, q, sc, e);
                sum += v * (x as i8 as i32);
                scale = sce;
            }
            *lane += scale * sum;
        }
    }
    for l in 0..8 {
        let (b0, b1) = (a.bsum(b, 2 * l), a.bsum(b, 2 * l + 1));
        if ty == QType::Q6K {
            i[l] -= 32 * (sc[2 * l] as i32 * b0 + sc[2 * l + 1] as i32 * b1);
        } else {
            m[l] = sc[8 + l] as i32 * (b0 + b1);
        }
    }
    (i, m)
}

/// Output (t, r) for activation row `a`.
pub(crate) fn dot(w: &QMatrix, r: usize, a: &ActRow) -> f32 {
    let ty = w.qtype();
    let mut lanes = [0f32; 8];
    for b in 0..w.nb {
        let i = r * w.nb + b;
        if ty.is_k() {
            let (il, ml) = k_lanes(w, r, b, a);
            let dd = w.d[i] * a.d(b);
            for (l, lane) in lanes.iter_mut().enumerate() {
                *lane = (il[l] as f32).mul_add(dd, *lane);
                if ty != QType::Q6K {
                    *lane = (-(ml[l] as f32)).mul_add(w.m[i] * a.d(b), *lane);
                }
            }
        } else {
            let (q, qa, o) = (w.qblock(r, b), a.qs(b), offset32(ty));
            let dd = w.d[i] * a.d(b);
            for (g, lane) in lanes.iter_mut().enumerate() {
                let s: i32 = (4 * g..4 * g + 4)
                    .map(|e| (q32_unsigned(ty, q, e) - o) * (qa[e] as i8 as i32))
                    .sum();
                *lane = (s as f32).mul_add(dd, *lane);
            }
            if ty.has_min() {
                lanes[0] = w.m[i].mul_add(a.s(b), lanes[0]);
            }
        }
    }
    reduce8(lanes)
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
