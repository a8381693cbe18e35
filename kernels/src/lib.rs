//! CPU inference kernels for mm's own runtime (`mm generate`, `mm chat`, `mm serve`, `mm bench`).
//!
//! Every product here is `y[t, r] = Σ_k W[r, k] · x[t, k]` over a weight matrix W [rows, cols]
//! kept in its stored format, for m activation rows x. Each output is computed the same way
//! whatever m is and however the rows are split between threads, so a sequence decoded in a
//! batch gets exactly the logits it gets alone.

pub mod attention;
pub mod cpu;
pub mod float;
pub mod ops;
pub mod pool;
pub mod quant;

/// The output of a product, `[m, ld]` row-major f32, shared by threads that each write their
/// own disjoint set of columns (the weight rows they were given).
#[derive(Clone, Copy, Debug)]
pub struct SharedOut {
    ptr: *mut f32,
    len: usize,
    ld: usize,
}

// SAFETY: threads write disjoint elements (see `SharedOut::row_ptr`'s contract).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// `y` holds `m` rows of `ld` floats.
    pub fn new(y: &mut [f32], ld: usize) -> Self {
        Self { ptr: y.as_mut_ptr(), len: y.len(), ld }
    }

    pub fn ld(&self) -> usize {
        self.ld
    }

    /// Pointer to element (t, 0). Bounds are checked here; the caller then writes only
    /// elements (t, c) with c < ld that no other thread writes.
    pub fn row_ptr(&self, t: usize) -> *mut f32 {
        assert!((t + 1) * self.ld <= self.len, "output row {t} out of range");
        // SAFETY: in bounds, checked above.
        unsafe { self.ptr.add(t * self.ld) }
    }

    /// Writes element (t, c).
    ///
    /// # Safety
    /// No other thread may read or write element (t, c) meanwhile.
    pub unsafe fn write(&self, t: usize, c: usize, v: f32) {
        assert!(c < self.ld);
        *self.row_ptr(t).add(c) = v;
    }
}
