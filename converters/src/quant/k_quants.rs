//! K-quants in 256-value super-blocks: Q4_K, Q5_K, Q6_K.
//!
//! These are ggml's `quantize_row_q{4,5,6}_K_ref` (the path llama-quantize takes without an
//! importance matrix) and `dequantize_row_q{4,5,6}_K`. Byte parity with llama.cpp depends on
//! the exact f32 operation order, so the code below keeps C's: sums accumulate sequentially in
//! index order, `a*b*c` is `(a*b)*c`, and nothing uses `mul_add` (ggml-base is built without
//! FMA contraction on x86-64; fusing changes the last bit of a sum and then whole blocks).
//! candle's K-quant quantizers follow an older algorithm and are *not* byte-identical.
//!
//! Speed comes from running the scale searches of all sub-blocks of a super-block (two, in
//! fact) in lockstep, one per SIMD lane (`super::lanes`), which keeps every lane's f32
//! operation sequence identical to the scalar code; the encoders are compiled for the baseline
//! target and for AVX2 and picked at run time. The original scalar code is kept, test-only, in
//! `reference`, and `equivalence_tests` checks both kernels against it byte for byte.

use super::float::{f16_bits_to_f32, f32_to_f16_bits};
use super::lanes;
use super::rounding::nearest_int;

#[cfg(test)]
mod equivalence_tests;
#[cfg(test)]
mod reference;

/// Values per super-block.
pub const QK_K: usize = 256;
/// Values below this are "all zero" for make_qx_quants and Q6_K (`GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

pub const Q4_K_BYTES: usize = 144;
pub const Q5_K_BYTES: usize = 176;
pub const Q6_K_BYTES: usize = 210;

/// Search parameters of `make_qkx2_quants` (the `use_mad = false` variant, the only one the
/// Q4_K / Q5_K reference quantizers use).
struct Qkx2 {
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
}

const Q4_K_SEARCH: Qkx2 = Qkx2 { nmax: 15, rmin: -1.0, rdelta: 0.1, nstep: 20 };
const Q5_K_SEARCH: Qkx2 = Qkx2 { nmax: 31, rmin: -0.5, rdelta: 0.1, nstep: 15 };

/// Super-blocks fitted together: the scale searches of all their sub-blocks run in lockstep,
/// one per SIMD lane (see `lanes`). Two super-blocks give 16 lanes for Q4_K / Q5_K (two AVX2
/// registers per value, so two independent chains per sum; one super-block, 8 lanes, measured
/// about 3× slower) and 32 for Q6_K. Four measured no faster than two.
const GROUP: usize = 2;
const Q45_LANES: usize = 8 * GROUP;
const Q6_LANES: usize = 16 * GROUP;

/// Which compilation of the encoders runs. Both give identical bytes; AVX2 only makes the lane
/// loops 8 wide instead of SSE2's 4. (FMA is deliberately not enabled: ggml's reference is
/// built without it, and fused products would change the rounding.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Portable,
    /// Only ever constructed after `is_x86_feature_detected!("avx2")` said yes.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU runs (std caches the CPUID answer).
    #[inline]
    pub(crate) fn best() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Kernel::Avx2;
        }
        Kernel::Portable
    }

    /// Every kernel this CPU can run.
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Kernel> {
        let mut v = vec![Kernel::Portable];
        if Kernel::best() != Kernel::Portable {
            v.push(Kernel::best());
        }
        v
    }
}

/// Sub-block fits for `N / 8` consecutive super-blocks (`x.len() == 32 * N`): sub-block `k`
/// (values `x[32k..32k+32]`) gets weights `sqrt(Σx²/32) + |x|` and `make_qkx2_quants`, its
/// `(scale, the_min)` in `scales[k]`, `mins[k]` and its levels in `l[·][k]`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn fit_qkx2<const N: usize>(p: &Qkx2, x: &[f32], scales: &mut [f32; N], mins: &mut [f32; N], l: &mut [[u8; N]; 32]) {
    let x = &x[..32 * N];
    let mut xt = [[0f32; N]; 32];
    for k in 0..N {
        let xs = &x[32 * k..32 * (k + 1)];
        for i in 0..32 {
            xt[i][k] = xs[i];
        }
    }
    let mut sum_x2 = [0f32; N];
    for i in 0..32 {
        for k in 0..N {
            sum_x2[k] += xt[i][k] * xt[i][k];
        }
    }
    let mut av_x = [0f32; N];
    for k in 0..N {
        av_x[k] = (sum_x2[k] / 32.0).sqrt();
    }
    let mut wt = [[0f32; N]; 32];
    for i in 0..32 {
        for k in 0..N {
            wt[i][k] = av_x[k] + xt[i][k].abs();
        }
    }
    lanes::qkx2(p.nmax, p.rmin, p.rdelta, p.nstep, &xt, &wt, scales, mins, l);
}

/// Decode sub-block j's 6-bit (scale, min) from the 12 packed bytes (`get_scale_min_k4`).
#[inline]
fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The rest of Q4_K / Q5_K after the sub-block fits of one super-block (`sub_scales`,
/// `sub_mins`, levels in `l`): the 6-bit codes packed into `scales` (12 bytes), d/dmin, and the
/// final levels L (0..=nmax). Returns `(d, dmin)` as f16 bits.
#[inline(always)]
fn finish_k_scale_min(
    nmax: i32,
    x: &[f32],
    sub_scales: &[f32],
    sub_mins: &[f32],
    scales: &mut [u8],
    l: &mut [u8; QK_K],
) -> (u16, u16) {
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        if sub_scales[j] > max_scale {
            max_scale = sub_scales[j];
        }
        if sub_mins[j] > max_min {
            max_min = sub_mins[j];
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

/// Q4_K (144 bytes): the nibbles. Each 64-value chunk c: byte 32c+i holds L[64c+i] (low
/// nibble) and L[64c+32+i] (high).
#[inline(always)]
fn pack_q4_k(l: &[u8; QK_K], qs: &mut [u8]) {
    for c in 0..4 {
        for i in 0..32 {
            qs[32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
        }
    }
}

/// Q5_K (176 bytes): qh[32], then the low nibbles as Q4_K's; bit 4 of L[64c+i] goes to bit 2c
/// of qh[i], and bit 4 of L[64c+32+i] to bit 2c+1.
#[inline(always)]
fn pack_q5_k(l: &[u8; QK_K], rest: &mut [u8]) {
    let (qh, qs) = rest.split_at_mut(32);
    qh.fill(0);
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

/// Q4_K / Q5_K for `N / 8` super-blocks: d f16, dmin f16, scales[12], then `pack`'s bytes.
#[inline(always)]
fn quantize_q45_k_group<const N: usize>(
    p: &Qkx2,
    block_bytes: usize,
    pack: impl Fn(&[u8; QK_K], &mut [u8]),
    x: &[f32],
    out: &mut [u8],
) {
    let mut sub_scales = [0f32; N];
    let mut sub_mins = [0f32; N];
    let mut lt = [[0u8; N]; 32];
    fit_qkx2::<N>(p, x, &mut sub_scales, &mut sub_mins, &mut lt);
    let mut l = [0u8; QK_K];
    for (g, (xb, yb)) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(block_bytes)).take(N / 8).enumerate() {
        for j in 0..8 {
            for i in 0..32 {
                l[32 * j + i] = lt[i][8 * g + j];
            }
        }
        let sub = 8 * g..8 * (g + 1);
        let (d, dmin) =
            finish_k_scale_min(p.nmax, xb, &sub_scales[sub.clone()], &sub_mins[sub], &mut yb[4..16], &mut l);
        yb[0..2].copy_from_slice(&d.to_le_bytes());
        yb[2..4].copy_from_slice(&dmin.to_le_bytes());
        pack(&l, &mut yb[16..]);
    }
}

/// Q4_K / Q5_K over whole super-blocks, `GROUP` at a time.
#[inline(always)]
fn quantize_q45_k(
    p: &Qkx2,
    block_bytes: usize,
    pack: impl Fn(&[u8; QK_K], &mut [u8]) + Copy,
    x: &[f32],
    out: &mut [u8],
) {
    let mut xs = x.chunks_exact(GROUP * QK_K);
    let mut ys = out.chunks_exact_mut(GROUP * block_bytes);
    for (xg, yg) in (&mut xs).zip(&mut ys) {
        quantize_q45_k_group::<Q45_LANES>(p, block_bytes, pack, xg, yg);
    }
    let (xr, yr) = (xs.remainder(), ys.into_remainder());
    if !xr.is_empty() {
        // The last < GROUP super-blocks run as a full group padded with zeros (a narrower
        // instantiation would be a second copy of the kernel, and a slower one).
        let mut xpad = [0f32; GROUP * QK_K];
        let mut ypad = [0u8; GROUP * Q5_K_BYTES]; // the larger block
        xpad[..xr.len()].copy_from_slice(xr);
        quantize_q45_k_group::<Q45_LANES>(p, block_bytes, pack, &xpad, &mut ypad[..GROUP * block_bytes]);
        yr.copy_from_slice(&ypad[..yr.len()]);
    }
}

#[inline(always)]
fn quantize_q4_k_impl(x: &[f32], out: &mut [u8]) {
    quantize_q45_k(&Q4_K_SEARCH, Q4_K_BYTES, pack_q4_k, x, out);
}

#[inline(always)]
fn quantize_q5_k_impl(x: &[f32], out: &mut [u8]) {
    quantize_q45_k(&Q5_K_SEARCH, Q5_K_BYTES, pack_q5_k, x, out);
}

/// Q6_K for `N / 16` super-blocks (210 bytes each): ql[128], qh[64], scales[16] (i8), then d
/// f16 **last**.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn quantize_q6_k_group<const N: usize>(x: &[f32], out: &mut [u8]) {
    // Sub-block k (16 values) of the group is lane k.
    let x = &x[..16 * N];
    let mut xt = [[0f32; N]; 16];
    for k in 0..N {
        let xs = &x[16 * k..16 * (k + 1)];
        for i in 0..16 {
            xt[i][k] = xs[i];
        }
    }
    let mut fit_scales = [0f32; N];
    let mut lt = [[0u8; N]; 16];
    lanes::qx_rmse1(32, GROUP_MAX_EPS, &xt, &mut fit_scales, &mut lt);

    let mut l = [0u8; QK_K];
    for (g, (xb, yb)) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q6_K_BYTES)).take(N / 16).enumerate() {
        let sub_scales = &fit_scales[16 * g..16 * (g + 1)];
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for &scale in sub_scales {
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
        for j in 0..16 {
            for i in 0..16 {
                l[16 * j + i] = lt[i][16 * g + j];
            }
        }

        let iscale = -128.0 / max_scale;
        // d is fp16(1/iscale), which can differ in the last bit from max_scale / -128.
        let d = f32_to_f16_bits(1.0 / iscale);
        let (ql, rest) = yb.split_at_mut(128);
        let (qh, rest) = rest.split_at_mut(64);
        let (scales, d_bytes) = rest.split_at_mut(16);
        d_bytes.copy_from_slice(&d.to_le_bytes());
        for (s, &sub) in scales.iter_mut().zip(sub_scales) {
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

#[inline(always)]
fn quantize_q6_k_impl(x: &[f32], out: &mut [u8]) {
    let mut xs = x.chunks_exact(GROUP * QK_K);
    let mut ys = out.chunks_exact_mut(GROUP * Q6_K_BYTES);
    for (xg, yg) in (&mut xs).zip(&mut ys) {
        quantize_q6_k_group::<Q6_LANES>(xg, yg);
    }
    let (xr, yr) = (xs.remainder(), ys.into_remainder());
    if !xr.is_empty() {
        // As for Q4_K / Q5_K: a zero-padded full group.
        let mut xpad = [0f32; GROUP * QK_K];
        let mut ypad = [0u8; GROUP * Q6_K_BYTES];
        xpad[..xr.len()].copy_from_slice(xr);
        quantize_q6_k_group::<Q6_LANES>(&xpad, &mut ypad);
        yr.copy_from_slice(&ypad[..yr.len()]);
    }
}

/// The encoders compiled twice: for the baseline target, and with AVX2 enabled (not FMA).
macro_rules! kernels {
    ($($(#[$doc:meta])* $name:ident, $with:ident => $imp:ident;)*) => {
        mod portable {
            $(pub(super) fn $name(x: &[f32], out: &mut [u8]) {
                super::$imp(x, out)
            })*
        }

        #[cfg(target_arch = "x86_64")]
        mod avx2 {
            $(#[target_feature(enable = "avx2")]
            pub(super) fn $name(x: &[f32], out: &mut [u8]) {
                super::$imp(x, out)
            })*
        }

        $(
            $(#[$doc])*
            pub fn $name(x: &[f32], out: &mut [u8]) {
                $with(Kernel::best(), x, out)
            }

            /// As the public encoder, with the kernel chosen by the caller.
            pub(crate) fn $with(kernel: Kernel, x: &[f32], out: &mut [u8]) {
                match kernel {
                    Kernel::Portable => portable::$name(x, out),
                    // SAFETY: `Kernel::Avx2` exists only once AVX2 was detected on this CPU.
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx2 => unsafe { avx2::$name(x, out) },
                }
            }
        )*
    };
}

kernels! {
    /// Q4_K (144 bytes): d f16, dmin f16, scales[12], qs[128].
    quantize_q4_k, quantize_q4_k_with => quantize_q4_k_impl;
    /// Q5_K (176 bytes): d f16, dmin f16, scales[12], qh[32], qs[128].
    quantize_q5_k, quantize_q5_k_with => quantize_q5_k_impl;
    /// Q6_K (210 bytes): ql[128], qh[64], scales[16] (i8), then d f16 **last**.
    quantize_q6_k, quantize_q6_k_with => quantize_q6_k_impl;
}

/// `dequantize_row_q4_K`: x = (d·sc)·q − dmin·m.
pub fn dequantize_q4_k(bytes: &[u8], out: &mut [f32]) {
    for (yb, xb) in bytes.chunks_exact(Q4_K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        dequantize_scale_min_block(&yb[..16], None, &yb[16..144], xb);
    }
}

/// `dequantize_row_q5_K`: as Q4_K with a fifth bit from qh.
pub fn dequantize_q5_k(bytes: &[u8], out: &mut [f32]) {
    for (yb, xb) in bytes.chunks_exact(Q5_K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        dequantize_scale_min_block(&yb[..16], Some(&yb[16..48]), &yb[48..176], xb);
    }
}

/// One Q4_K/Q5_K super-block: `head` is d, dmin and the 12 scale bytes; `qh` the fifth bits
/// (Q5_K only); `qs` the nibbles.
fn dequantize_scale_min_block(head: &[u8], qh: Option<&[u8]>, qs: &[u8], xb: &mut [f32]) {
    let d = f16_bits_to_f32(u16::from_le_bytes([head[0], head[1]]));
    let dmin = f16_bits_to_f32(u16::from_le_bytes([head[2], head[3]]));
    let scales = &head[4..16];
    let high = |i: usize, bit: usize| qh.map_or(0, |qh| ((qh[i] >> bit) & 1) << 4);
    for c in 0..4 {
        let (sc1, m1) = get_scale_min_k4(2 * c, scales);
        let (sc2, m2) = get_scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        for i in 0..32 {
            let q = qs[32 * c + i];
            xb[64 * c + i] = d1 * ((q & 0x0F) | high(i, 2 * c)) as f32 - m1;
            xb[64 * c + 32 + i] = d2 * ((q >> 4) | high(i, 2 * c + 1)) as f32 - m2;
        }
    }
}

/// `dequantize_row_q6_K`: x = (d·sc)·(q − 32).
pub fn dequantize_q6_k(bytes: &[u8], out: &mut [f32]) {
    for (yb, xb) in bytes.chunks_exact(Q6_K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let (ql, rest) = yb.split_at(128);
        let (qh, rest) = rest.split_at(64);
        let (scales, d_bytes) = rest.split_at(16);
        let d = f16_bits_to_f32(u16::from_le_bytes([d_bytes[0], d_bytes[1]]));
        for h in 0..2 {
            let (ql, qh, sc) = (&ql[64 * h..], &qh[32 * h..], &scales[8 * h..]);
            let xh = &mut xb[128 * h..128 * (h + 1)];
            for i in 0..32 {
                let is = i / 16;
                let q1 = ((ql[i] & 0x0F) | ((qh[i] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[i + 32] & 0x0F) | (((qh[i] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[i] >> 4) | (((qh[i] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[i + 32] >> 4) | (((qh[i] >> 6) & 3) << 4)) as i32 - 32;
                let s = |k: usize| d * (sc[is + k] as i8) as f32;
                xh[i] = s(0) * q1 as f32;
                xh[i + 32] = s(2) * q2 as f32;
                xh[i + 64] = s(4) * q3 as f32;
                xh[i + 96] = s(6) * q4 as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reference::{make_qkx2_quants, make_qx_quants_rmse1, Q4_K_SEARCH};
    use super::*;

    #[test]
    fn scale_min_packing_round_trips() {
        // Pack arbitrary 6-bit pairs the way quantize_k_scale_min does, decode them back.
        let mut scales = [0u8; 12];
        let pairs: Vec<(u8, u8)> = (0..8).map(|j| ((j * 9 + 5) as u8 & 63, (63 - j * 7) as u8 & 63)).collect();
        for (j, &(ls, lm)) in pairs.iter().enumerate() {
            if j < 4 {
                scales[j] = ls;
                scales[j + 4] = lm;
            } else {
                scales[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
                scales[j - 4] |= (ls >> 4) << 6;
                scales[j] |= (lm >> 4) << 6;
            }
        }
        for (j, &pair) in pairs.iter().enumerate() {
            assert_eq!(get_scale_min_k4(j, &scales), pair, "sub-block {j}");
        }
    }

    #[test]
    fn qkx2_fit_is_an_offset_scale_pair() {
        // The fitted offset is clamped to ≤ 0, so the returned `the_min` is never negative,
        // even for an all-positive block (where the first guess uses min = 0).
        let x: Vec<f32> = (0..32).map(|i| 1.0 + i as f32 * 0.1).collect();
        let w = vec![1.0f32; 32];
        let mut l = [0u8; 32];
        let (scale, the_min) = make_qkx2_quants(&Q4_K_SEARCH, &x, &w, &mut l);
        assert!(scale > 0.0 && the_min >= 0.0, "{scale} {the_min}");
        for (&v, &q) in x.iter().zip(&l) {
            assert!(q <= 15);
            assert!((scale * q as f32 - the_min - v).abs() <= scale, "{v} vs level {q}");
        }
        // A constant negative block: scale 0, everything in the offset.
        let (scale, the_min) = make_qkx2_quants(&Q4_K_SEARCH, &[-2.0; 32], &w, &mut l);
        assert_eq!((scale, the_min), (0.0, 2.0));
        assert_eq!(l, [0u8; 32]);
    }

    #[test]
    fn qx_quants_zero_group() {
        let mut l = [7u8; 16];
        assert_eq!(make_qx_quants_rmse1(32, &[0.0; 16], &mut l), 0.0);
        assert_eq!(l, [0u8; 16]);
    }

    #[test]
    fn q6_k_zero_block_is_all_zero_bytes() {
        let mut y = [0xAAu8; Q6_K_BYTES];
        quantize_q6_k(&[0.0; QK_K], &mut y);
        assert!(y.iter().all(|&b| b == 0));
    }
}
