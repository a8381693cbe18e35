//! The packed weight layout: panels of [`PANEL`] rows, the weights of all rows of a panel at one
//! k side by side, so a kernel reads a panel front to back and one aligned load gives 16 rows.
//!
//! f32 and f16: element (row p·16 + i, k) at `p·stride + k·16 + i`, stride = cols·16.
//! bf16: k in pairs, one u32 per row holding k = 2j in its low half and k = 2j + 1 in its high
//! half, at u16 index `p·stride + j·32 + 2i (+1)`, stride = ⌈cols/2⌉·32. Widening a bf16 is a
//! shift into the high half of an f32, so `x << 16` and `x & 0xffff0000` on one load give the
//! rows at both k. Rows past the end of the last panel (and the odd k of bf16) are zero.

use std::marker::PhantomData;

use super::FloatKind;

/// Rows per panel: one AVX-512 vector of f32, two AVX2 vectors.
pub const PANEL: usize = 16;

/// A cache line; storage is a `Vec` of these, so every panel starts 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// `len` elements of `T` (f32 or u16) in 64-byte aligned storage.
struct Aligned<T> {
    lines: Vec<Line>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Copy + Default> Aligned<T> {
    fn zeroed(len: usize) -> Self {
        let bytes = len * size_of::<T>();
        // All-zero bytes are 0.0 for f32 and the zero bits of f16/bf16.
        Aligned {
            lines: vec![Line([0; 64]); bytes.div_ceil(64)],
            len,
            _t: PhantomData,
        }
    }

    fn as_slice(&self) -> &[T] {
        // SAFETY: the lines hold at least `len` elements of T (f32/u16: any bits valid), aligned.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`, and `self` is borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

enum Data {
    F32(Aligned<f32>),
    /// f16 bits.
    F16(Aligned<u16>),
    /// bf16 bits, in pairs of k (see the module doc).
    BF16(Aligned<u16>),
}

pub(super) struct Panels {
    data: Data,
    /// Elements from one panel to the next.
    stride: usize,
}

/// Borrowed view of the panels of one format, what the kernels take.
#[derive(Clone, Copy)]
pub(super) enum View<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
    BF16(&'a [u16]),
}

impl Panels {
    pub(super) fn f32(rows: usize, cols: usize, w: &[f32]) -> Panels {
        let stride = cols * PANEL;
        let mut d = Aligned::zeroed(rows.div_ceil(PANEL) * stride);
        interleave(rows, cols, d.as_mut_slice(), |i| w[i]);
        Panels {
            data: Data::F32(d),
            stride,
        }
    }

    pub(super) fn f16(rows: usize, cols: usize, w: &[half::f16]) -> Panels {
        let stride = cols * PANEL;
        let mut d = Aligned::zeroed(rows.div_ceil(PANEL) * stride);
        interleave(rows, cols, d.as_mut_slice(), |i| w[i].to_bits());
        Panels {
            data: Data::F16(d),
            stride,
        }
    }

    pub(super) fn bf16(rows: usize, cols: usize, w: &[half::bf16]) -> Panels {
        let stride = cols.div_ceil(2) * 2 * PANEL;
        let mut d = Aligned::zeroed(rows.div_ceil(PANEL) * stride);
        let dst = d.as_mut_slice();
        for r in 0..rows {
            let base = r / PANEL * stride + 2 * (r % PANEL);
            for (k, v) in w[r * cols..(r + 1) * cols].iter().enumerate() {
                dst[base + k / 2 * 2 * PANEL + k % 2] = v.to_bits();
            }
        }
        Panels {
            data: Data::BF16(d),
            stride,
        }
    }

    pub(super) fn kind(&self) -> FloatKind {
        match self.data {
            Data::F32(_) => FloatKind::F32,
            Data::F16(_) => FloatKind::F16,
            Data::BF16(_) => FloatKind::BF16,
        }
    }

    pub(super) fn stride(&self) -> usize {
        self.stride
    }

    pub(super) fn view(&self) -> View<'_> {
        match &self.data {
            Data::F32(d) => View::F32(d.as_slice()),
            Data::F16(d) => View::F16(d.as_slice()),
            Data::BF16(d) => View::BF16(d.as_slice()),
        }
    }

    /// W[r, k] as f32, exactly.
    pub(super) fn get(&self, r: usize, k: usize) -> f32 {
        let (p, i) = (r / PANEL, r % PANEL);
        match &self.data {
            Data::F32(d) => d.as_slice()[p * self.stride + k * PANEL + i],
            Data::F16(d) => {
                half::f16::from_bits(d.as_slice()[p * self.stride + k * PANEL + i]).to_f32()
            }
            Data::BF16(d) => {
                bf16_to_f32(d.as_slice()[p * self.stride + k / 2 * 2 * PANEL + 2 * i + k % 2])
            }
        }
    }

    pub(super) fn row(&self, r: usize, out: &mut [f32]) {
        for (k, o) in out.iter_mut().enumerate() {
            *o = self.get(r, k);
        }
    }
}

/// bf16 bits to f32: the same shift the SIMD kernels do (half's own conversion sets the quiet
/// bit of a NaN; a shift keeps every value's bits).
pub(super) fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Writes element (r, k) of a row-major matrix, `src(r·cols + k)`, to its f32/f16 panel slot.
fn interleave<T: Copy>(rows: usize, cols: usize, dst: &mut [T], src: impl Fn(usize) -> T) {
    for r in 0..rows {
        let base = r / PANEL * cols * PANEL + r % PANEL;
        for k in 0..cols {
            dst[base + k * PANEL] = src(r * cols + k);
        }
    }
}
