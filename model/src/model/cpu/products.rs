//! Products of the engine's matrices with rows of activations, run on the kernel thread
//! pool: every product of a group is split by weight rows across all threads in one
//! parallel region; quantized matrices read the rows quantized once per activation format.

use mm_kernels::float::FMatrix;
use mm_kernels::pool::Pool;
use mm_kernels::quant::ActKind;
use mm_kernels::SharedOut;

use super::matrix::{Matrix, Proj};

/// A raw pointer to f32 buffers that threads of one region fill in disjoint parts.
#[derive(Clone, Copy)]
pub struct RawRows(*mut f32);

// SAFETY: used only for disjoint writes inside one pool region (see each use).
unsafe impl Send for RawRows {}
unsafe impl Sync for RawRows {}

impl RawRows {
    pub fn new(buf: &mut [f32]) -> Self {
        Self(buf.as_mut_ptr())
    }

    /// # Safety
    /// `start..start + len` lies in the buffer and no other thread touches it meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

/// Quantized copies of the current input rows, one buffer per activation format in use,
/// reused from step to step.
#[derive(Default)]
pub struct QuantRows {
    bufs: Vec<(ActKind, usize, Vec<u8>)>,
}

impl QuantRows {
    /// Quantizes x [m, cols] for every format the quantized matrices in `ws` read.
    pub fn prepare(&mut self, pool: &Pool, ws: &[&Matrix], x: &[f32], m: usize) {
        for buf in &mut self.bufs {
            buf.1 = 0; // stale
        }
        for w in ws {
            let Matrix::Quant(q) = w else { continue };
            let kind = q.act_kind();
            let row_bytes = q.act_row_bytes();
            let slot = match self.bufs.iter().position(|b| b.0 == kind) {
                Some(i) => i,
                None => {
                    self.bufs.push((kind, 0, Vec::new()));
                    self.bufs.len() - 1
                }
            };
            if self.bufs[slot].1 == row_bytes {
                continue; // done for an earlier matrix of the same format
            }
            let cols = q.cols();
            let buf = &mut self.bufs[slot].2;
            if buf.len() < m * row_bytes {
                buf.resize(m * row_bytes, 0);
            }
            if m < 8 {
                for t in 0..m {
                    q.quantize_act_row(&x[t * cols..(t + 1) * cols], &mut buf[t * row_bytes..(t + 1) * row_bytes]);
                }
            } else {
                let ptr = RawBytes(buf.as_mut_ptr());
                pool.run(&|i, n| {
                    for t in Pool::share(m, 1, i, n) {
                        // SAFETY: row t's bytes, written by this thread only.
                        let out = unsafe { ptr.slice(t * row_bytes, row_bytes) };
                        q.quantize_act_row(&x[t * cols..(t + 1) * cols], out);
                    }
                });
            }
            self.bufs[slot].1 = row_bytes;
        }
    }

    fn get(&self, kind: ActKind) -> &[u8] {
        let (_, _, buf) = self.bufs.iter().find(|b| b.0 == kind && b.1 > 0).expect("activations prepared for this format");
        buf
    }
}

#[derive(Clone, Copy)]
struct RawBytes(*mut u8);
// SAFETY: disjoint rows per thread, see `QuantRows::prepare`.
unsafe impl Send for RawBytes {}
unsafe impl Sync for RawBytes {}

impl RawBytes {
    /// # Safety
    /// In bounds, and no other thread touches these bytes meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, start: usize, len: usize) -> &mut [u8] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

/// Rows `range` of `w · x` for m rows, into `out`.
pub fn product_share(w: &Matrix, x: &[f32], quant: &QuantRows, m: usize, rows: std::ops::Range<usize>, out: SharedOut) {
    if rows.is_empty() {
        return;
    }
    match w {
        Matrix::Float(f) => f.matmul(x, m, rows, out),
        Matrix::Quant(q) => q.matmul(quant.get(q.act_kind()), m, rows, out),
    }
}

/// One product of a group: `out [m, proj.rows()] = proj · x`.
pub struct Product<'a> {
    pub proj: &'a Proj,
    pub out: &'a mut [f32],
}

const MAX_GROUP: usize = 4;

/// Runs `products` over the same input x [m, cols] in one region (plus LoRA branches).
/// `quant` must already hold x quantized for every quantized matrix among them.
pub fn run_group(pool: &Pool, products: &mut [Product<'_>], x: &[f32], quant: &QuantRows, m: usize, lora: &mut LoraScratch) {
    // Fixed arrays, not Vecs: nothing is allocated per decode step.
    assert!(products.len() <= MAX_GROUP, "a product group has at most {MAX_GROUP} members");
    let mut group: [Option<(&Matrix, SharedOut)>; MAX_GROUP] = [None; MAX_GROUP];
    for (slot, p) in group.iter_mut().zip(products.iter_mut()) {
        *slot = Some((&p.proj.w, SharedOut::new(p.out, p.proj.rows())));
    }
    pool.run(&|i, n| {
        for (w, out) in group.iter().flatten() {
            product_share(w, x, quant, m, Pool::share(w.rows(), w.row_align(), i, n), *out);
        }
    });
    for p in products.iter_mut() {
        if let Some((a, b)) = &p.proj.lora {
            lora.apply(pool, a, b, x, m, p.out);
        }
    }
}

/// Buffers for LoRA branches: A x [m, r] and B (A x) [m, out].
#[derive(Default)]
pub struct LoraScratch {
    ax: Vec<f32>,
    bax: Vec<f32>,
}

impl LoraScratch {
    /// out += B (A x).
    fn apply(&mut self, pool: &Pool, a: &FMatrix, b: &FMatrix, x: &[f32], m: usize, out: &mut [f32]) {
        let (r, rows) = (a.rows(), b.rows());
        self.ax.resize(m * r, 0.0);
        self.bax.resize(m * rows, 0.0);
        float_product(pool, a, x, m, &mut self.ax);
        float_product(pool, b, &self.ax, m, &mut self.bax);
        for (o, v) in out[..m * rows].iter_mut().zip(&self.bax) {
            *o += v;
        }
    }
}

/// `out [m, w.rows()] = w · x` for a float matrix, split across the pool.
pub fn float_product(pool: &Pool, w: &FMatrix, x: &[f32], m: usize, out: &mut [f32]) {
    let shared = SharedOut::new(out, w.rows());
    pool.run(&|i, n| {
        let rows = Pool::share(w.rows(), w.row_align(), i, n);
        if !rows.is_empty() {
            w.matmul(x, m, rows, shared);
        }
    });
}
