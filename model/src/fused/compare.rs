//! Comparing a fused op's results with a reference, for the unit tests and for
//! `mm selftest-fused` (device against CPU): seeded random inputs and a per-dtype tolerance.

use candle_core::{DType, Device, Result, Tensor};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// Normal(0, scale) values of `shape` from `seed`, as an f32 tensor on the CPU (the same
/// numbers whatever device they are moved to).
pub fn random(shape: &[usize], scale: f32, seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0f32, scale).expect("a positive scale");
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).expect("shape matches the data")
}

/// `|got − want| ≤ abs · max|want| + rel · |want|` element-wise: `rel` covers rounding of
/// each value, `abs` values that cancel to near zero.
#[derive(Debug, Clone, Copy)]
pub struct Tol {
    pub rel: f32,
    pub abs: f32,
}

impl Tol {
    /// Forward results: f32 to a few ulps, bf16 to one ulp (2^-7 relative at worst).
    pub fn for_dtype(dtype: DType) -> Self {
        match dtype {
            DType::BF16 => Tol { rel: 8e-3, abs: 1e-3 },
            DType::F16 => Tol { rel: 1e-3, abs: 1e-4 },
            _ => Tol { rel: 1e-5, abs: 1e-6 },
        }
    }

    /// Gradients go through more rounded products: twice the forward tolerance, and more
    /// room for cancellation.
    pub fn grad(self) -> Self {
        Tol { rel: self.rel * 2.0, abs: self.abs * 4.0 }
    }
}

/// How far `got` is from `want`.
#[derive(Debug, Clone, Copy)]
pub struct Comparison {
    pub max_abs_diff: f32,
    pub max_abs_want: f32,
    /// The largest `|got − want| / allowed`; ≤ 1 passes.
    pub worst: f32,
}

impl Comparison {
    pub fn passes(&self) -> bool {
        self.worst <= 1.0
    }
}

/// Compares element-wise in f32 on the CPU. NaN anywhere in `got` where `want` has none fails.
pub fn compare(got: &Tensor, want: &Tensor, tol: Tol) -> Result<Comparison> {
    if got.dims() != want.dims() {
        candle_core::bail!("shapes differ: {:?} vs {:?}", got.dims(), want.dims());
    }
    let to_vec = |t: &Tensor| -> Result<Vec<f32>> { t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1() };
    let (g, w) = (to_vec(got)?, to_vec(want)?);
    let max_abs_want = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let floor = tol.abs * max_abs_want;
    let mut max_abs_diff = 0f32;
    let mut worst = 0f32;
    for (&a, &b) in g.iter().zip(&w) {
        let diff = if a == b || (a.is_nan() && b.is_nan()) { 0.0 } else { (a - b).abs() };
        let ratio = if diff.is_nan() { f32::INFINITY } else { diff / (floor + tol.rel * b.abs()).max(f32::MIN_POSITIVE) };
        max_abs_diff = max_abs_diff.max(if diff.is_nan() { f32::INFINITY } else { diff });
        worst = worst.max(ratio);
    }
    Ok(Comparison { max_abs_diff, max_abs_want, worst })
}

/// Panics with a description when `got` is not within `tol` of `want` (for tests).
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: Tol) {
    let c = compare(got, want, tol).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(c.passes(), "{what}: max |Δ| {} (max |want| {}), {}× the tolerance {tol:?}", c.max_abs_diff, c.max_abs_want, c.worst);
}
