//! The 32-value "legacy" blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
//!
//! Each follows ggml's `quantize_row_*_ref` / `dequantize_row_*` (ggml/src/ggml-quants.c).
//! Arithmetic is plain f32 in C's evaluation order; Rust never fuses `a*b + c`, which is what
//! the x86-64 build of ggml-base (compiled without FMA contraction) computes too.
//!
//! Every function here takes whole blocks: `x.len()` a multiple of 32 and `out` exactly
//! `x.len() / 32` blocks long (checked by the caller).

use super::float::{f16_bits_to_f32, f32_to_f16_bits};
use super::rounding::trunc_to_i32;

pub const QK: usize = 32;
const HALF: usize = QK / 2;

/// The signed value with the largest magnitude; the first one wins ties (strict `<`).
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Block min and max, starting from ±FLT_MAX with plain compares (as `quantize_row_q4_1_ref`).
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `d ? 1/d : 0` — C's truthiness, so NaN counts as non-zero.
#[inline]
fn inverse_or_zero(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Q4_0 (18 bytes): d f16, then 16 bytes of nibbles, byte j = q[j] | q[j+16] << 4.
pub fn quantize_q4_0(x: &[f32], out: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(QK).zip(out.chunks_exact_mut(18)) {
        let d = signed_absmax(xb) / -8.0;
        let id = inverse_or_zero(d);
        yb[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
        for j in 0..HALF {
            // ggml: MIN(15, (int8_t)(x*id + 8.5f)) — truncation, then a signed min.
            let q0 = (trunc_to_i32(xb[j] * id + 8.5) as i8).min(15) as u8;
            let q1 = (trunc_to_i32(xb[j + HALF] * id + 8.5) as i8).min(15) as u8;
            yb[2 + j] = q0 | (q1 << 4);
        }
    }
}

/// Q4_1 (20 bytes): d f16, m f16 (the block min), 16 bytes of nibbles.
pub fn quantize_q4_1(x: &[f32], out: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(QK).zip(out.chunks_exact_mut(20)) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 15.0;
        let id = inverse_or_zero(d);
        yb[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
        yb[2..4].copy_from_slice(&f32_to_f16_bits(min).to_le_bytes());
        for j in 0..HALF {
            let q0 = (trunc_to_i32((xb[j] - min) * id + 0.5) as i8).min(15) as u8;
            let q1 = (trunc_to_i32((xb[j + HALF] - min) * id + 0.5) as i8).min(15) as u8;
            yb[4 + j] = q0 | (q1 << 4);
        }
    }
}

/// Q5_0 (22 bytes): d f16, qh u32 LE (bit j = bit 4 of q[j]), 16 bytes of low nibbles.
pub fn quantize_q5_0(x: &[f32], out: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(QK).zip(out.chunks_exact_mut(22)) {
        let d = signed_absmax(xb) / -16.0;
        let id = inverse_or_zero(d);
        yb[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
        let mut qh = 0u32;
        for j in 0..HALF {
            let q0 = (trunc_to_i32(xb[j] * id + 16.5) as i8).min(31) as u8;
            let q1 = (trunc_to_i32(xb[j + HALF] * id + 16.5) as i8).min(31) as u8;
            yb[6 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + HALF);
        }
        yb[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

/// Q5_1 (24 bytes): d f16, m f16, qh u32 LE, 16 bytes of low nibbles.
pub fn quantize_q5_1(x: &[f32], out: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(QK).zip(out.chunks_exact_mut(24)) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 31.0;
        let id = inverse_or_zero(d);
        yb[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
        yb[2..4].copy_from_slice(&f32_to_f16_bits(min).to_le_bytes());
        let mut qh = 0u32;
        for j in 0..HALF {
            // Unlike Q4_1 there is no MIN(31, …) here: ggml casts straight to uint8_t.
            let q0 = trunc_to_i32((xb[j] - min) * id + 0.5) as u8;
            let q1 = trunc_to_i32((xb[j + HALF] - min) * id + 0.5) as u8;
            yb[8 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + HALF);
        }
        yb[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

/// Q8_0 (34 bytes): d f16, 32 × i8 with q = roundf(x/d) (half away from zero, not `nearest_int`).
pub fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(QK).zip(out.chunks_exact_mut(34)) {
        // ggml's MAX(a, b) is `a > b ? a : b`; unlike f32::max it lets a NaN through.
        let amax = xb.iter().fold(0.0f32, |a, v| if a > v.abs() { a } else { v.abs() });
        let d = amax / 127.0;
        let id = inverse_or_zero(d);
        yb[0..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
        for (q, &v) in yb[2..].iter_mut().zip(xb) {
            *q = trunc_to_i32((v * id).round()) as i8 as u8;
        }
    }
}

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

#[inline]
fn qh_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn dequantize_q4_0(bytes: &[u8], out: &mut [f32]) {
    for (yb, xb) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(yb, 0);
        for j in 0..HALF {
            let q = yb[2 + j];
            xb[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
            xb[j + HALF] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

pub fn dequantize_q4_1(bytes: &[u8], out: &mut [f32]) {
    for (yb, xb) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(yb, 0);
        let m = f16_at(yb, 2);
        for j in 0..HALF {
            let q = yb[4 + j];
            xb[j] = (q & 0x0F) as f32 * d + m;
            xb[j + HALF] = (q >> 4) as f32 * d + m;
        }
    }
}

/// The fifth bits of q[j] and q[j+16], from qh.
#[inline]
fn high_bits(qh: u32, j: usize) -> (u8, u8) {
    let h0 = ((qh >> j) << 4) as u8 & 0x10;
    let h1 = (qh >> (j + 12)) as u8 & 0x10;
    (h0, h1)
}

pub fn dequantize_q5_0(bytes: &[u8], out: &mut [f32]) {
    for (yb, xb) in bytes.chunks_exact(22).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(yb, 0);
        let qh = qh_at(yb, 2);
        for j in 0..HALF {
            let q = yb[6 + j];
            let (h0, h1) = high_bits(qh, j);
            xb[j] = (((q & 0x0F) | h0) as i32 - 16) as f32 * d;
            xb[j + HALF] = (((q >> 4) | h1) as i32 - 16) as f32 * d;
        }
    }
}

pub fn dequantize_q5_1(bytes: &[u8], out: &mut [f32]) {
    for (yb, xb) in bytes.chunks_exact(24).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(yb, 0);
        let m = f16_at(yb, 2);
        let qh = qh_at(yb, 4);
        for j in 0..HALF {
            let q = yb[8 + j];
            let (h0, h1) = high_bits(qh, j);
            xb[j] = ((q & 0x0F) | h0) as f32 * d + m;
            xb[j + HALF] = ((q >> 4) | h1) as f32 * d + m;
        }
    }
}

pub fn dequantize_q8_0(bytes: &[u8], out: &mut [f32]) {
    for (yb, xb) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(yb, 0);
        for (o, &q) in xb.iter_mut().zip(&yb[2..]) {
            *o = (q as i8) as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(scale: f32) -> Vec<f32> {
        (0..QK).map(|i| (i as f32 - 15.5) * scale).collect()
    }

    #[test]
    fn q4_0_layout_by_hand() {
        // |x| peaks at 3.875 for i = 0 (-3.875) and i = 31 (+3.875); the first wins, so
        // max = -3.875 and d = max / -8 = 0.484375 > 0.
        let x = ramp(0.25);
        let mut y = [0u8; 18];
        quantize_q4_0(&x, &mut y);
        assert_eq!(f16_at(&y, 0), 3.875 / 8.0);
        // x[0]·id = -8 → (int8)(0.5) = 0; x[16] = 0.125 → (int8)(8.758) = 8;
        // x[31]·id = 8 → (int8)(16.5) = 16, clamped to 15.
        assert_eq!(y[2] & 0x0F, 0);
        assert_eq!(y[2] >> 4, 8);
        assert_eq!(y[2 + 15] >> 4, 15);
        let mut back = [0f32; QK];
        dequantize_q4_0(&y, &mut back);
        assert_eq!(back[0], -3.875);
    }

    #[test]
    fn q5_high_bits_round_trip() {
        let x = ramp(1.0 / 16.0);
        for (quant, dequant, size) in [
            (quantize_q5_0 as fn(&[f32], &mut [u8]), dequantize_q5_0 as fn(&[u8], &mut [f32]), 22usize),
            (quantize_q5_1, dequantize_q5_1, 24),
        ] {
            let mut y = vec![0u8; size];
            quant(&x, &mut y);
            let mut back = vec![0f32; QK];
            dequant(&y, &mut back);
            for (a, b) in x.iter().zip(&back) {
                assert!((a - b).abs() <= 0.0625, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn q8_0_rounds_half_away_from_zero() {
        // amax 127 → d = 1, id = 1; 2.5 must become 3 (roundf), not 2 (nearest-even).
        let mut x = [0.0f32; QK];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        let mut y = [0u8; 34];
        quantize_q8_0(&x, &mut y);
        assert_eq!(y[2 + 1] as i8, 3);
        assert_eq!(y[2 + 2] as i8, -3);
    }
}
