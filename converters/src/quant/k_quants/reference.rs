//! The scalar K-quant quantizers exactly as they were verified against llama.cpp (one
//! sub-block at a time, branchy, in C's operation order). Test-only: the lane kernels in
//! `super::super::lanes` must reproduce these bytes for every input.

use super::super::float::{f16_bits_to_f32, f32_to_f16_bits};
use super::super::rounding::nearest_int;
use super::{get_scale_min_k4, GROUP_MAX_EPS, Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES, QK_K};

/// Search parameters of `make_qkx2_quants` (the `use_mad = false` variant, the only one the
/// Q4_K / Q5_K reference quantizers use).
pub(crate) struct Qkx2 {
    pub nmax: i32,
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
}

pub(crate) const Q4_K_SEARCH: Qkx2 = Qkx2 { nmax: 15, rmin: -1.0, rdelta: 0.1, nstep: 20 };
pub(crate) const Q5_K_SEARCH: Qkx2 = Qkx2 { nmax: 31, rmin: -0.5, rdelta: 0.1, nstep: 15 };

/// Fit `x ≈ scale·L − the_min` with L in 0..=nmax by weighted least squares, trying
/// `nstep + 1` candidate inverse scales around `nmax / (max − min)`.
/// Fills `l` and returns `(scale, the_min)`.
pub(crate) fn make_qkx2_quants(p: &Qkx2, x: &[f32], weights: &[f32], l: &mut [u8]) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    // The offset is only ever subtracted: a block of positives keeps min 0.
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let nmax = p.nmax as f32;
    let mut iscale = nmax / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, p.nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut laux = [0u8; 32];
    let laux = &mut laux[..n];
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, p.nmax);
            laux[i] = q as u8;
            let wl = weights[i] * q as f32;
            sum_l += wl;
            sum_l2 += wl * q as f32;
            sum_xl += wl * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qx_quants(n, nmax, x, L, rmse_type = 1, qw = NULL)`: a symmetric scale with L in
/// 0..2·nmax (stored offset by nmax), weights x², searching 19 inverse scales around
/// `-nmax / max`. Returns the scale (0 for an all-zero group).
pub(crate) fn make_qx_quants_rmse1(nmax: i32, x: &[f32], l: &mut [u8]) -> f32 {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // Σ w·x·l and Σ w·l·l with w = x², in C's association.
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let q = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let fill = |iscale: f32, l: &mut [u8]| {
        for (o, &v) in l.iter_mut().zip(x) {
            *o = (level(iscale, v) + nmax) as u8;
        }
    };

    let iscale = -(nmax as f32) / max;
    fill(iscale, l);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1f32 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            fill(iscale, l);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The common part of Q4_K and Q5_K: per 32-value sub-block (scale, min) fits, their 6-bit
/// codes packed into `scales` (12 bytes), d/dmin, and the final levels L (0..=nmax).
/// Returns `(d, dmin)` as f16 bits.
fn quantize_k_scale_min(p: &Qkx2, x: &[f32], scales: &mut [u8], l: &mut [u8; QK_K]) -> (u16, u16) {
    let mut sub_scales = [0.0f32; 8];
    let mut sub_mins = [0.0f32; 8];
    let mut weights = [0.0f32; 32];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * (j + 1)];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(p, xs, &weights, &mut l[32 * j..32 * (j + 1)]);
        sub_scales[j] = scale;
        sub_mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }

    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    scales.fill(0);
    for j in 0..8 {
        // ggml stores nearest_int into a uint8_t (wrapping) before MIN(63, ·).
        let ls = (nearest_int(inv_scale * sub_scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * sub_mins[j]) as u8).min(63);
        if j < 4 {
            scales[j] = ls;
            scales[j + 4] = lm;
        } else {
            scales[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            scales[j - 4] |= (ls >> 4) << 6;
            scales[j] |= (lm >> 4) << 6;
        }
    }
    let d = f32_to_f16_bits(max_scale / 63.0);
    let dmin = f32_to_f16_bits(max_min / 63.0);

    // Requantize against the scales as they will be decoded.
    let nmax = p.nmax;
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, scales);
        let dj = f16_bits_to_f32(d) * sc as f32;
        if dj == 0.0 {
            // ggml `continue`s here and keeps the levels make_qkx2_quants chose.
            continue;
        }
        let dm = f16_bits_to_f32(dmin) * m as f32;
        for i in 32 * j..32 * (j + 1) {
            l[i] = nearest_int((x[i] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    (d, dmin)
}

/// Q4_K (144 bytes): d f16, dmin f16, scales[12], qs[128].
pub fn quantize_q4_k(x: &[f32], out: &mut [u8]) {
    let mut l = [0u8; QK_K];
    for (xb, yb) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q4_K_BYTES)) {
        let (d, dmin) = quantize_k_scale_min(&Q4_K_SEARCH, xb, &mut yb[4..16], &mut l);
        yb[0..2].copy_from_slice(&d.to_le_bytes());
        yb[2..4].copy_from_slice(&dmin.to_le_bytes());
        let qs = &mut yb[16..144];
        // Each 64-value chunk c: byte 32c+i holds L[64c+i] (low nibble) and L[64c+32+i] (high).
        for c in 0..4 {
            for i in 0..32 {
                qs[32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
            }
        }
    }
}

/// Q5_K (176 bytes): d f16, dmin f16, scales[12], qh[32], qs[128].
pub fn quantize_q5_k(x: &[f32], out: &mut [u8]) {
    let mut l = [0u8; QK_K];
    for (xb, yb) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q5_K_BYTES)) {
        let (d, dmin) = quantize_k_scale_min(&Q5_K_SEARCH, xb, &mut yb[4..16], &mut l);
        yb[0..2].copy_from_slice(&d.to_le_bytes());
        yb[2..4].copy_from_slice(&dmin.to_le_bytes());
        let (qh, qs) = yb[16..].split_at_mut(32);
        qh.fill(0);
        // As Q4_K for the low nibbles; bit 4 of L[64c+i] goes to bit 2c of qh[i], and bit 4 of
        // L[64c+32+i] to bit 2c+1.
        for c in 0..4 {
            for i in 0..32 {
                let l1 = l[64 * c + i];
                let l2 = l[64 * c + 32 + i];
                qh[i] |= ((l1 >> 4) & 1) << (2 * c);
                qh[i] |= ((l2 >> 4) & 1) << (2 * c + 1);
                qs[32 * c + i] = (l1 & 0x0F) | ((l2 & 0x0F) << 4);
            }
        }
    }
}

/// Q6_K (210 bytes): ql[128], qh[64], scales[16] (i8), then d f16 **last**.
pub fn quantize_q6_k(x: &[f32], out: &mut [u8]) {
    let mut l = [0u8; QK_K];
    for (xb, yb) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q6_K_BYTES)) {
        let mut sub_scales = [0.0f32; 16];
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for ib in 0..16 {
            let scale = make_qx_quants_rmse1(32, &xb[16 * ib..16 * (ib + 1)], &mut l[16 * ib..16 * (ib + 1)]);
            sub_scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            // ggml zeroes the whole block (d = +0, not the -0 a naive 1/iscale would give).
            yb.fill(0);
            continue;
        }

        let iscale = -128.0 / max_scale;
        // d is fp16(1/iscale), which can differ in the last bit from max_scale / -128.
        let d = f32_to_f16_bits(1.0 / iscale);
        let (ql, rest) = yb.split_at_mut(128);
        let (qh, rest) = rest.split_at_mut(64);
        let (scales, d_bytes) = rest.split_at_mut(16);
        d_bytes.copy_from_slice(&d.to_le_bytes());
        for (s, &sub) in scales.iter_mut().zip(&sub_scales) {
            *s = nearest_int(iscale * sub).min(127) as i8 as u8;
        }

        for (j, &sc) in scales.iter().enumerate() {
            let dj = f16_bits_to_f32(d) * (sc as i8) as f32;
            if dj == 0.0 {
                continue; // keep make_qx_quants' levels, as ggml does
            }
            for i in 16 * j..16 * (j + 1) {
                l[i] = (nearest_int(xb[i] / dj).clamp(-32, 31) + 32) as u8;
            }
        }

        // Per 128-value half h: ql carries low nibbles of (L[+0], L[+64]) and (L[+32], L[+96]),
        // qh the top two bits of all four.
        for h in 0..2 {
            let lh = &l[128 * h..128 * (h + 1)];
            for i in 0..32 {
                let (a, b, c, e) = (lh[i], lh[i + 32], lh[i + 64], lh[i + 96]);
                ql[64 * h + i] = (a & 0x0F) | ((c & 0x0F) << 4);
                ql[64 * h + i + 32] = (b & 0x0F) | ((e & 0x0F) << 4);
                qh[32 * h + i] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
            }
        }
    }
}
