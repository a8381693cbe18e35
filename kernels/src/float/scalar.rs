//! Plain-Rust kernels: the definition the SIMD ones must match bit for bit, and the fallback
//! on CPUs without AVX2.

use super::panel::Panels;
use super::tile::Job;

pub(super) fn matmul(w: &Panels, cols: usize, job: &Job) {
    let mut wr = vec![0f32; cols];
    for r in job.rows.clone() {
        w.row(r, &mut wr);
        for t in 0..job.m {
            let x = &job.x[t * cols..(t + 1) * cols];
            let acc = wr
                .iter()
                .zip(x)
                .fold(0f32, |acc, (&w, &x)| w.mul_add(x, acc));
            // SAFETY: t < m and r < rows.end ≤ ld (checked by the caller); this thread owns row r.
            unsafe { *job.out.row_ptr(t).add(r) = acc };
        }
    }
}

/// Lanes of [`dot`]'s fixed order.
pub(super) const DOT_LANES: usize = 32;

pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut s = [0f32; DOT_LANES];
    let full = a.len() / DOT_LANES * DOT_LANES;
    for (ca, cb) in a[..full]
        .chunks_exact(DOT_LANES)
        .zip(b[..full].chunks_exact(DOT_LANES))
    {
        for j in 0..DOT_LANES {
            s[j] = ca[j].mul_add(cb[j], s[j]);
        }
    }
    if full < a.len() {
        // The zero padding takes part (fma(0, 0, -0.0) is +0.0), as in the SIMD kernels.
        let (mut ta, mut tb) = ([0f32; DOT_LANES], [0f32; DOT_LANES]);
        ta[..a.len() - full].copy_from_slice(&a[full..]);
        tb[..a.len() - full].copy_from_slice(&b[full..]);
        for j in 0..DOT_LANES {
            s[j] = ta[j].mul_add(tb[j], s[j]);
        }
    }
    let mut h = DOT_LANES / 2;
    while h > 0 {
        for j in 0..h {
            s[j] += s[j + h];
        }
        h /= 2;
    }
    s[0]
}

pub(super) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = alpha.mul_add(x, *y);
    }
}

pub(super) fn dot_rows(q: &[f32], k: &[f32], stride: usize, out: &mut [f32]) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot(q, &k[j * stride..j * stride + q.len()]);
    }
}

pub(super) fn axpy_rows(alpha: &[f32], v: &[f32], stride: usize, y: &mut [f32]) {
    let n = y.len();
    for (j, &a) in alpha.iter().enumerate() {
        axpy(a, &v[j * stride..j * stride + n], y);
    }
}
