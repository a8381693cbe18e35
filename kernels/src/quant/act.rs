//! Activation rows quantized for the integer dot products, by ggml's reference rules as candle
//! 0.11 implements them (`BlockQ8_0/Q8_1/Q8K::from_float`), in this module's own row layout:
//! - Q8_0: qs[nb·32] i8, then d[nb] f32 (the f16-rounded scale ggml stores)
//! - Q8_1: as Q8_0, then s[nb] f32 (f16(f16(Σq)·f16(d)), candle's rounding of the block sum)
//! - Q8_K: qs[nb·256] i8, then d[nb] f32, then bsums[nb·16] i16 (sums of 16 consecutive qs)
//!
//! All multi-byte values are little-endian; the row needs no alignment.

use half::f16;

use super::blocks::{QK, QK_K};

/// The activation partner of a weight type, as ggml pairs them.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActKind {
    Q8_0,
    Q8_1,
    Q8K,
}

impl ActKind {
    pub fn block_elems(self) -> usize {
        match self {
            ActKind::Q8K => QK_K,
            _ => QK,
        }
    }

    /// Bytes of one quantized row of `cols` elements (a multiple of the block size).
    pub fn row_bytes(self, cols: usize) -> usize {
        let nb = cols / self.block_elems();
        match self {
            ActKind::Q8_0 => nb * (QK + 4),
            ActKind::Q8_1 => nb * (QK + 8),
            ActKind::Q8K => nb * (QK_K + 4 + 32),
        }
    }

    /// Quantizes `x` (a multiple of the block size long) into `out` (`row_bytes` long).
    pub fn quantize_row(self, x: &[f32], out: &mut [u8]) {
        let be = self.block_elems();
        assert!(
            x.len().is_multiple_of(be),
            "activation row of {} is not a multiple of {be}",
            x.len()
        );
        assert_eq!(
            out.len(),
            self.row_bytes(x.len()),
            "activation buffer length"
        );
        let nb = x.len() / be;
        let (qs, rest) = out.split_at_mut(nb * be);
        let (ds, rest) = rest.split_at_mut(nb * 4);
        for (b, (x, q)) in x.chunks_exact(be).zip(qs.chunks_exact_mut(be)).enumerate() {
            let d = match self {
                ActKind::Q8_0 | ActKind::Q8_1 => {
                    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    let mut sum = 0i32;
                    for (q, &v) in q.iter_mut().zip(x) {
                        let v = (v * id).round() as i8;
                        sum += v as i32;
                        *q = v as u8;
                    }
                    let d = f16::from_f32(d);
                    if self == ActKind::Q8_1 {
                        let s = f16::from_f32(sum as f32) * d;
                        rest[4 * b..4 * b + 4].copy_from_slice(&s.to_f32().to_le_bytes());
                    }
                    d.to_f32()
                }
                ActKind::Q8K => {
                    let (mut amax, mut max) = (0f32, 0f32);
                    for &v in x {
                        if amax < v.abs() {
                            amax = v.abs();
                            max = v;
                        }
                    }
                    let bsums = &mut rest[32 * b..32 * b + 32];
                    if amax == 0.0 {
                        q.fill(0);
                        bsums.fill(0);
                        0.0
                    } else {
                        let iscale = -127.0 / max;
                        for (q, &v) in q.iter_mut().zip(x) {
                            *q = (iscale * v).round().clamp(-128.0, 127.0) as i8 as u8;
                        }
                        for (j, s) in bsums.chunks_exact_mut(2).enumerate() {
                            let sum: i32 =
                                q[16 * j..16 * j + 16].iter().map(|&v| v as i8 as i32).sum();
                            s.copy_from_slice(&(sum as i16).to_le_bytes());
                        }
                        1.0 / iscale
                    }
                }
            };
            ds[4 * b..4 * b + 4].copy_from_slice(&d.to_le_bytes());
        }
    }
}

/// Read access to one quantized activation row.
#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub bytes: &'a [u8],
    pub nb: usize,
    pub be: usize,
}

impl<'a> ActRow<'a> {
    pub fn new(kind: ActKind, cols: usize, bytes: &'a [u8]) -> Self {
        let be = kind.block_elems();
        assert!(bytes.len() >= kind.row_bytes(cols));
        ActRow {
            bytes,
            nb: cols / be,
            be,
        }
    }

    pub fn qs(&self, b: usize) -> &'a [u8] {
        &self.bytes[b * self.be..(b + 1) * self.be]
    }

    fn f32_at(&self, off: usize) -> f32 {
        f32::from_le_bytes(self.bytes[off..off + 4].try_into().unwrap())
    }

    pub fn d(&self, b: usize) -> f32 {
        self.f32_at(self.nb * self.be + 4 * b)
    }

    /// Q8_1's f16-rounded d·Σq.
    pub fn s(&self, b: usize) -> f32 {
        self.f32_at(self.nb * (self.be + 4) + 4 * b)
    }

    /// Q8_K's sums of 16 (`j` in 0..16) of block `b`.
    pub fn bsum(&self, b: usize, j: usize) -> i32 {
        let off = self.nb * (self.be + 4) + 32 * b + 2 * j;
        i16::from_le_bytes([self.bytes[off], self.bytes[off + 1]]) as i32
    }
}
