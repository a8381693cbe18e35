//! The ggml block types, and the repacked form a [`QMatrix`] keeps them in.
//!
//! Each row keeps its blocks in order. Per block, the quant bytes go to `q`, in ggml's order
//! except as listed below; f16 scales are widened to f32
//! (`d`, and `m` for the second scale: Q4_1/Q5_1's min, Q4_K/Q5_K's dmin); K-quant sub-block
//! scales are decoded to i16 (`sc`). Per-block `q` layouts:
//! - Q4_0, Q4_1: qs[16] (byte j: element j in the low nibble, j+16 in the high one)
//! - Q5_0, Q5_1: 32 bytes, the 5-bit values (predecoded: unpacking the fifth bits cost a
//!   fifth of the product's time, and these types are rare)
//! - Q8_0: 32 bytes, element + 128
//! - Q4_K: qs[128] (32-byte chunk c: elements 64c.. low nibbles, 64c+32.. high nibbles)
//! - Q5_K: qh[32] (bit s of byte l: element 32s+l's fifth bit), qs[128] as Q4_K
//! - Q6_K: ql[128], qh[64] as ggml (half h: ql[64h..], qh[32h..])
//!
//! and `sc` per super-block: Q4_K/Q5_K 8 scales then 8 mins, Q6_K its 16 signed scales.

use half::f16;

use super::act::ActKind;

pub(crate) const QK: usize = 32;
pub(crate) const QK_K: usize = 256;

#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl QType {
    pub const ALL: [QType; 8] = [
        QType::Q4_0,
        QType::Q4_1,
        QType::Q5_0,
        QType::Q5_1,
        QType::Q8_0,
        QType::Q4K,
        QType::Q5K,
        QType::Q6K,
    ];

    /// ggml's type id (`enum ggml_type`).
    pub fn from_ggml_id(id: u32) -> Option<QType> {
        Some(match id {
            2 => QType::Q4_0,
            3 => QType::Q4_1,
            6 => QType::Q5_0,
            7 => QType::Q5_1,
            8 => QType::Q8_0,
            12 => QType::Q4K,
            13 => QType::Q5K,
            14 => QType::Q6K,
            _ => return None,
        })
    }

    pub fn ggml_id(self) -> u32 {
        match self {
            QType::Q4_0 => 2,
            QType::Q4_1 => 3,
            QType::Q5_0 => 6,
            QType::Q5_1 => 7,
            QType::Q8_0 => 8,
            QType::Q4K => 12,
            QType::Q5K => 13,
            QType::Q6K => 14,
        }
    }

    pub fn block_elems(self) -> usize {
        if self.is_k() {
            QK_K
        } else {
            QK
        }
    }

    /// Bytes of one block in a GGUF file.
    pub fn block_bytes(self) -> usize {
        match self {
            QType::Q4_0 => 18,
            QType::Q4_1 => 20,
            QType::Q5_0 => 22,
            QType::Q5_1 => 24,
            QType::Q8_0 => 34,
            QType::Q4K => 144,
            QType::Q5K => 176,
            QType::Q6K => 210,
        }
    }

    pub(crate) fn is_k(self) -> bool {
        matches!(self, QType::Q4K | QType::Q5K | QType::Q6K)
    }

    pub fn act_kind(self) -> ActKind {
        match self {
            QType::Q4_0 | QType::Q5_0 | QType::Q8_0 => ActKind::Q8_0,
            QType::Q4_1 | QType::Q5_1 => ActKind::Q8_1,
            QType::Q4K | QType::Q5K | QType::Q6K => ActKind::Q8K,
        }
    }

    /// Bytes of one block in [`QMatrix::q`].
    pub(crate) fn q_bytes(self) -> usize {
        match self {
            QType::Q4_0 | QType::Q4_1 => 16,
            QType::Q5_0 | QType::Q5_1 | QType::Q8_0 => 32,
            QType::Q4K => 128,
            QType::Q5K => 160,
            QType::Q6K => 192,
        }
    }

    /// i16 sub-block scales per block in [`QMatrix::sc`].
    pub(crate) fn sc_len(self) -> usize {
        if self.is_k() {
            16
        } else {
            0
        }
    }

    /// Whether the block has a second f32 scale in [`QMatrix::m`].
    pub(crate) fn has_min(self) -> bool {
        matches!(self, QType::Q4_1 | QType::Q5_1 | QType::Q4K | QType::Q5K)
    }
}

/// A [rows, cols] weight matrix of ggml blocks, repacked (see the module docs).
pub struct QMatrix {
    ty: QType,
    rows: usize,
    cols: usize,
    /// Blocks per row.
    pub(crate) nb: usize,
    pub(crate) q: Vec<u8>,
    pub(crate) d: Vec<f32>,
    pub(crate) m: Vec<f32>,
    pub(crate) sc: Vec<i16>,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({:?}, [{}, {}])", self.ty, self.rows, self.cols)
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_K/Q5_K's 12 packed bytes → (8 scales, 8 mins), 6 bits each.
fn k4_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        if j < 4 {
            sc[j] = s[j] & 63;
            mn[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
            mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    (sc, mn)
}

impl QMatrix {
    /// Repacks `bytes` (rows × cols/block_elems blocks, row-major, as in a GGUF tensor).
    pub fn new(ty: QType, rows: usize, cols: usize, bytes: &[u8]) -> Result<QMatrix, String> {
        let be = ty.block_elems();
        if !cols.is_multiple_of(be) {
            return Err(format!(
                "{ty:?} matrix: {cols} columns is not a multiple of the block size {be}"
            ));
        }
        let nb = cols / be;
        let want = rows
            .checked_mul(nb)
            .and_then(|n| n.checked_mul(ty.block_bytes()));
        if want != Some(bytes.len()) {
            return Err(format!(
                "{ty:?} matrix [{rows}, {cols}]: {} bytes given, {} expected",
                bytes.len(),
                want.map_or("more than usize".to_string(), |w| w.to_string())
            ));
        }
        let n = rows * nb;
        let mut q = Vec::with_capacity(n * ty.q_bytes());
        let mut d = Vec::with_capacity(n);
        let mut m = Vec::with_capacity(if ty.has_min() { n } else { 0 });
        let mut sc = Vec::with_capacity(n * ty.sc_len());
        for b in bytes.chunks_exact(ty.block_bytes()) {
            match ty {
                QType::Q4_0 => {
                    d.push(f16_at(b, 0));
                    q.extend_from_slice(&b[2..18]);
                }
                QType::Q4_1 => {
                    d.push(f16_at(b, 0));
                    m.push(f16_at(b, 2));
                    q.extend_from_slice(&b[4..20]);
                }
                QType::Q5_0 | QType::Q5_1 => {
                    d.push(f16_at(b, 0));
                    let at = if ty == QType::Q5_1 {
                        m.push(f16_at(b, 2));
                        4
                    } else {
                        2
                    };
                    let qh = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
                    let qs = &b[at + 4..at + 20];
                    q.extend((0..32).map(|e| {
                        let nib = if e < 16 { qs[e] & 0xF } else { qs[e - 16] >> 4 };
                        nib | (((qh >> e) & 1) as u8) << 4
                    }));
                }
                QType::Q8_0 => {
                    d.push(f16_at(b, 0));
                    q.extend(b[2..34].iter().map(|&x| x ^ 0x80));
                }
                QType::Q4K | QType::Q5K => {
                    d.push(f16_at(b, 0));
                    m.push(f16_at(b, 2));
                    let (s, mn) = k4_scales(&b[4..16]);
                    sc.extend(s.iter().chain(mn.iter()).map(|&x| x as i16));
                    q.extend_from_slice(&b[16..]);
                }
                QType::Q6K => {
                    q.extend_from_slice(&b[..192]);
                    sc.extend(b[192..208].iter().map(|&x| x as i8 as i16));
                    d.push(f16_at(b, 208));
                }
            }
        }
        Ok(QMatrix {
            ty,
            rows,
            cols,
            nb,
            q,
            d,
            m,
            sc,
        })
    }

    pub fn qtype(&self) -> QType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Block `b` of row `r`: its quant bytes.
    pub(crate) fn qblock(&self, r: usize, b: usize) -> &[u8] {
        let qb = self.ty.q_bytes();
        let i = (r * self.nb + b) * qb;
        &self.q[i..i + qb]
    }

    pub(crate) fn scales(&self, r: usize, b: usize) -> &[i16] {
        let n = self.ty.sc_len();
        let i = (r * self.nb + b) * n;
        &self.sc[i..i + n]
    }

    /// Row `r`, dequantized (the token-embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "row {r} out of 0..{}", self.rows);
        assert_eq!(out.len(), self.cols, "dequantize_row output length");
        let be = self.ty.block_elems();
        for (b, y) in out.chunks_exact_mut(be).enumerate() {
            let i = r * self.nb + b;
            let d = self.d[i];
            let q = self.qblock(r, b);
            match self.ty {
                QType::Q8_0 => {
                    for (y, &x) in y.iter_mut().zip(q) {
                        *y = ((x ^ 0x80) as i8) as f32 * d;
                    }
                }
                QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q5_1 => {
                    // As ggml: no `+ 0.0` for the types without a min (it would turn −0 into +0).
                    for (e, y) in y.iter_mut().enumerate() {
                        let v = q32_unsigned(self.ty, q, e);
                        *y = match self.ty {
                            QType::Q4_0 => (v - 8) as f32 * d,
                            QType::Q5_0 => (v - 16) as f32 * d,
                            _ => v as f32 * d + self.m[i],
                        };
                    }
                }
                QType::Q4K | QType::Q5K | QType::Q6K => {
                    let sc = self.scales(r, b);
                    for (e, y) in y.iter_mut().enumerate() {
                        let (v, s) = k_unsigned(self.ty, q, sc, e);
                        *y = match self.ty {
                            QType::Q6K => d * s as f32 * (v - 32) as f32,
                            _ => d * s as f32 * v as f32 - self.m[i] * sc[8 + e / 32] as f32,
                        };
                    }
                }
            }
        }
    }
}

/// Element `e` of a 32-element block's repacked bytes, unsigned (before the type's offset).
pub(crate) fn q32_unsigned(ty: QType, q: &[u8], e: usize) -> i32 {
    match ty {
        QType::Q4_0 | QType::Q4_1 => (if e < 16 { q[e] & 0xF } else { q[e - 16] >> 4 }) as i32,
        QType::Q5_0 | QType::Q5_1 | QType::Q8_0 => q[e] as i32,
        _ => unreachable!("not a 32-element block type"),
    }
}

/// Element `e` of a K-quant super-block, unsigned (Q6_K before its −32), and its sub-block scale.
pub(crate) fn k_unsigned(ty: QType, q: &[u8], sc: &[i16], e: usize) -> (i32, i32) {
    match ty {
        QType::Q4K | QType::Q5K => {
            let qs = if ty == QType::Q5K { &q[32..] } else { q };
            let (c, u, l) = (e / 64, (e / 32) % 2, e % 32);
            let mut v = ((qs[32 * c + l] >> (4 * u)) & 0xF) as i32;
            if ty == QType::Q5K {
                v |= (((q[l] >> (e / 32)) & 1) as i32) << 4;
            }
            (v, sc[e / 32] as i32)
        }
        QType::Q6K => {
            let (h, k, l) = (e / 128, (e / 32) % 4, e % 32);
            let lo = (q[64 * h + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 0xF;
            let hi = (q[128 + 32 * h + l] >> (2 * k)) & 3;
            ((lo | (hi << 4)) as i32, sc[e / 16] as i32)
        }
        _ => unreachable!("not a K-quant"),
    }
}
