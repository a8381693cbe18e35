//! The K-quant scale searches (`make_qkx2_quants`, `make_qx_quants` with rmse_type 1) run on
//! `N` independent groups in lockstep, one group per lane.
//!
//! Byte parity with ggml forbids vectorizing *within* a group (its sums must accumulate in
//! index order), but the sub-blocks of a super-block are fitted independently. So the values are
//! transposed to `x[i][k]` = value `i` of group `k`, and every loop below runs `for i { for k }`:
//! each lane performs exactly the scalar code's sequence of f32 operations, in its order, while
//! the inner `k` loop compiles to SIMD instructions (which round lane by lane exactly like their
//! scalar counterparts; nothing here is reassociated, and Rust never fuses `a*b + c`).
//!
//! The scalar code's data-dependent branches become per-lane selects: both sides are computed
//! (possibly on garbage such as a division by zero, which cannot trap) and the lane keeps the
//! side the branch would have taken. The comparisons are the scalar ones, so NaN behaves as it
//! does there (every comparison with NaN is false). Early returns (`max == min`, an all-zero
//! group) become a final override of the lane's results.
//!
//! Instead of copying the candidate levels whenever a candidate wins, a lane remembers the
//! inputs that produced them (inverse scale and offset) and recomputes the winning levels once
//! at the end; the level function is pure, so these are the same bytes.
//!
//! Everything is `#[inline(always)]` so that it takes the target features of the caller: the
//! K-quant encoders are instantiated once for the baseline target and once with AVX2.

use super::rounding::nearest_int;

/// `nearest_int(f).clamp(lo, hi)` as an f32 (exact: the result is an integer of magnitude
/// ≤ 2²², and clamping commutes with the exact int → f32 conversion).
#[inline(always)]
fn level(f: f32, lo: f32, hi: f32) -> f32 {
    let q = nearest_int(f) as f32;
    let q = if q < lo { lo } else { q };
    if q > hi {
        hi
    } else {
        q
    }
}

/// All ones for true, zero for false: a lane mask for [`blend`].
#[inline(always)]
fn mask(c: bool) -> u32 {
    (c as u32).wrapping_neg()
}

/// `if mask { a } else { b }` by bits, for selects that share one condition (written as a bit
/// blend so that the compiler keeps them as vector blends rather than branching per lane).
#[inline(always)]
fn blend(mask: u32, a: f32, b: f32) -> f32 {
    f32::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
}

/// `make_qkx2_quants(n = 32, nmax, x, w, L, rmin, rdelta, nstep, use_mad = false)` for `N`
/// groups of 32 values: `x[i][k]`, `w[i][k]` are value and weight `i` of group `k`.
/// Writes each group's `(scale, the_min)` to `scale_out[k]`, `min_out[k]` and its levels to
/// `l[i][k]`.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
pub(super) fn qkx2<const N: usize>(
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    x: &[[f32; N]; 32],
    w: &[[f32; N]; 32],
    scale_out: &mut [f32; N],
    min_out: &mut [f32; N],
    l: &mut [[u8; N]; 32],
) {
    let nmaxf = nmax as f32;
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = [0f32; N];
    for k in 0..N {
        sum_x[k] = w[0][k] * x[0][k];
    }
    for i in 1..32 {
        for k in 0..N {
            let v = x[i][k];
            min[k] = if v < min[k] { v } else { min[k] };
            max[k] = if v > max[k] { v } else { max[k] };
            sum_w[k] += w[i][k];
            sum_x[k] += w[i][k] * v;
        }
    }
    let mut scale = [0f32; N];
    let mut iscale = [0f32; N];
    for k in 0..N {
        min[k] = if min[k] > 0.0 { 0.0 } else { min[k] };
        iscale[k] = nmaxf / (max[k] - min[k]);
        scale[k] = 1.0 / iscale[k];
    }
    // The early return `max == min` (decided on this min) overrides the lane at the end.
    let min0 = min;

    let mut best_error = [0f32; N];
    for i in 0..32 {
        for k in 0..N {
            let q = level(iscale[k] * (x[i][k] - min[k]), 0.0, nmaxf);
            let diff = scale[k] * q + min[k] - x[i][k];
            best_error[k] += w[i][k] * (diff * diff);
        }
    }
    // The kept levels are level(best_iscale · (x − best_lmin)).
    let mut best_iscale = iscale;
    let mut best_lmin = min;

    let mut laux = [[0f32; N]; 32];
    for is in 0..=nstep {
        // ggml's `(rmin + rdelta*is + nmax)/(max - min)`, with the lane's current min.
        let num = rmin + rdelta * is as f32 + nmaxf;
        let mut isc = [0f32; N];
        for k in 0..N {
            isc[k] = num / (max[k] - min[k]);
        }
        let mut sum_l = [0f32; N];
        let mut sum_l2 = [0f32; N];
        let mut sum_xl = [0f32; N];
        for i in 0..32 {
            for k in 0..N {
                let q = level(isc[k] * (x[i][k] - min[k]), 0.0, nmaxf);
                laux[i][k] = q;
                let wl = w[i][k] * q;
                sum_l[k] += wl;
                sum_l2[k] += wl * q;
                sum_xl[k] += wl * x[i][k];
            }
        }
        let mut det = [0f32; N];
        let mut this_scale = [0f32; N];
        let mut this_min = [0f32; N];
        for k in 0..N {
            det[k] = sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k];
            let s = (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / det[k];
            let m = (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / det[k];
            let positive = m > 0.0;
            this_min[k] = if positive { 0.0 } else { m };
            this_scale[k] = if positive { sum_xl[k] / sum_l2[k] } else { s };
        }
        let mut cur_error = [0f32; N];
        for i in 0..32 {
            for k in 0..N {
                let diff = this_scale[k] * laux[i][k] + this_min[k] - x[i][k];
                cur_error[k] += w[i][k] * (diff * diff);
            }
        }
        for k in 0..N {
            // `if (det > 0) { …; if (cur_error < best_error) { … } }`
            let take = mask((det[k] > 0.0) & (cur_error[k] < best_error[k]));
            best_error[k] = blend(take, cur_error[k], best_error[k]);
            scale[k] = blend(take, this_scale[k], scale[k]);
            best_iscale[k] = blend(take, isc[k], best_iscale[k]);
            best_lmin[k] = blend(take, min[k], best_lmin[k]);
            min[k] = blend(take, this_min[k], min[k]);
        }
    }

    let mut flat = [false; N];
    for k in 0..N {
        flat[k] = max[k] == min0[k];
        scale_out[k] = if flat[k] { 0.0 } else { scale[k] };
        min_out[k] = if flat[k] { -min0[k] } else { -min[k] };
    }
    for i in 0..32 {
        for k in 0..N {
            // Integer clamp for the bytes: a float → u8 cast would saturate lane by lane.
            let q = nearest_int(best_iscale[k] * (x[i][k] - best_lmin[k])).clamp(0, nmax);
            l[i][k] = if flat[k] { 0 } else { q as u8 };
        }
    }
}

/// Σ w·x·l and Σ w·l·l over a group for levels `level(iscale · x)`, with `wx[i][k]` = w·x and
/// `w[i][k]` = x² precomputed (the same products C forms first: `w*x*l` is `(w*x)*l`).
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn qx_sums<const N: usize>(
    iscale: &[f32; N],
    x: &[[f32; N]; 16],
    w: &[[f32; N]; 16],
    wx: &[[f32; N]; 16],
    lo: f32,
    hi: f32,
) -> ([f32; N], [f32; N]) {
    let mut sumlx = [0f32; N];
    let mut suml2 = [0f32; N];
    for i in 0..16 {
        for k in 0..N {
            let q = level(iscale[k] * x[i][k], lo, hi);
            sumlx[k] += wx[i][k] * q;
            suml2[k] += w[i][k] * q * q;
        }
    }
    (sumlx, suml2)
}

/// `make_qx_quants(n = 16, nmax, x, L, rmse_type = 1, qw = NULL)` for `N` groups of 16 values
/// (`x[i][k]` = value `i` of group `k`): each group's scale goes to `scale_out[k]` and its levels
/// (offset by nmax) to `l[i][k]`. `group_max_eps` is ggml's all-zero threshold.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
pub(super) fn qx_rmse1<const N: usize>(
    nmax: i32,
    group_max_eps: f32,
    x: &[[f32; N]; 16],
    scale_out: &mut [f32; N],
    l: &mut [[u8; N]; 16],
) {
    let lo = -(nmax as f32);
    let hi = (nmax - 1) as f32;
    let mut max = [0f32; N];
    let mut amax = [0f32; N];
    let mut w = [[0f32; N]; 16];
    let mut wx = [[0f32; N]; 16];
    for i in 0..16 {
        for k in 0..N {
            let v = x[i][k];
            let ax = v.abs();
            let larger = ax > amax[k];
            amax[k] = if larger { ax } else { amax[k] };
            max[k] = if larger { v } else { max[k] };
            w[i][k] = v * v;
            wx[i][k] = w[i][k] * v;
        }
    }

    let mut best_iscale = [0f32; N];
    for k in 0..N {
        best_iscale[k] = -(nmax as f32) / max[k];
    }
    let (sumlx, suml2) = qx_sums(&best_iscale, x, &w, &wx, lo, hi);
    let mut scale = [0f32; N];
    let mut best = [0f32; N];
    for k in 0..N {
        scale[k] = if suml2[k] != 0.0 { sumlx[k] / suml2[k] } else { 0.0 };
        best[k] = scale[k] * sumlx[k];
    }
    for is in (-9..=9).filter(|&is| is != 0) {
        let num = -(nmax as f32 + 0.1f32 * is as f32);
        let mut isc = [0f32; N];
        for k in 0..N {
            isc[k] = num / max[k];
        }
        let (sumlx, suml2) = qx_sums(&isc, x, &w, &wx, lo, hi);
        for k in 0..N {
            let take = mask((suml2[k] > 0.0) & (sumlx[k] * sumlx[k] > best[k] * suml2[k]));
            let s = sumlx[k] / suml2[k];
            best_iscale[k] = blend(take, isc[k], best_iscale[k]);
            scale[k] = blend(take, s, scale[k]);
            best[k] = blend(take, s * sumlx[k], best[k]);
        }
    }

    let mut zero = [false; N];
    for k in 0..N {
        zero[k] = amax[k] < group_max_eps;
        scale_out[k] = if zero[k] { 0.0 } else { scale[k] };
    }
    for i in 0..16 {
        for k in 0..N {
            let q = nearest_int(best_iscale[k] * x[i][k]).clamp(-nmax, nmax - 1) + nmax;
            l[i][k] = if zero[k] { 0 } else { q as u8 };
        }
    }
}
