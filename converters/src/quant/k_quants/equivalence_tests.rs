//! The lane kernels against the scalar reference, byte for byte, on random super-blocks built
//! to hit every branch of the scale searches (flat and zero sub-blocks, all-positive data,
//! tiny and huge magnitudes, outliers, non-finite values), with every kernel this CPU runs.

use super::super::lanes;
use super::reference;
use super::{
    quantize_q4_k_with, quantize_q5_k_with, quantize_q6_k_with, Kernel, Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES, QK_K,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }
    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

/// Fill one sub-block (16 or 32 values) with a randomly chosen pattern.
fn fill_sub_block(rng: &mut Rng, xs: &mut [f32]) {
    let sigma = [0.02f32, 1.0, 30.0][rng.below(3)];
    match rng.below(16) {
        // Plain normal data dominates, as in real weights.
        0..=5 => xs.iter_mut().for_each(|v| *v = rng.normal() * sigma),
        // Values that went through f16, as exported weights do.
        6 => xs.iter_mut().for_each(|v| *v = half::f16::from_f32(rng.normal() * sigma).to_f32()),
        7 => xs.fill(0.0),
        8 => {
            let c = [0.5f32, -0.5, 3.0, -7.0, 1e-3, -0.0, 1e-30][rng.below(7)];
            xs.fill(c);
        }
        // All positive (the min clamps to 0) and all negative.
        9 => xs.iter_mut().for_each(|v| *v = rng.normal().abs() * sigma + 0.1 * sigma),
        10 => xs.iter_mut().for_each(|v| *v = -(rng.normal().abs() * sigma) - 0.1 * sigma),
        // Outliers.
        11 => {
            xs.iter_mut().for_each(|v| *v = rng.normal() * sigma);
            let i = rng.below(xs.len());
            xs[i] *= 50.0;
        }
        // Tiny (down to subnormal) and huge magnitudes.
        12 => {
            let scale = [1e-30f32, f32::MIN_POSITIVE / 4.0, 1e-18, 1e-14][rng.below(4)];
            xs.iter_mut().for_each(|v| *v = rng.normal() * scale);
        }
        13 => {
            let scale = [1e30f32, 3e38, 1e5][rng.below(3)];
            xs.iter_mut().for_each(|v| *v = rng.normal() * scale);
        }
        // Few distinct values (exact ties in levels and sums), some exact zeros.
        14 => xs.iter_mut().for_each(|v| *v = (rng.below(5) as f32 - 2.0) * 0.25 * sigma),
        // Non-finite values: ggml's behaviour is whatever its comparisons give; ours must agree.
        _ => {
            xs.iter_mut().for_each(|v| *v = rng.normal() * sigma);
            let i = rng.below(xs.len());
            xs[i] = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN][rng.below(3)];
        }
    }
}

/// `n_blocks` random super-blocks made of `sub`-value sub-blocks; some super-blocks are a single
/// pattern throughout (one pattern for all lanes).
fn random_blocks(seed: u64, n_blocks: usize, sub: usize) -> Vec<f32> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut x = vec![0f32; n_blocks * QK_K];
    for block in x.chunks_exact_mut(QK_K) {
        if rng.below(8) == 0 {
            fill_sub_block(&mut rng, block);
        } else {
            for xs in block.chunks_exact_mut(sub) {
                fill_sub_block(&mut rng, xs);
            }
        }
    }
    x
}

type Encoder = fn(&[f32], &mut [u8]);
type KernelEncoder = fn(Kernel, &[f32], &mut [u8]);

fn check(name: &str, bytes: usize, sub: usize, reference: Encoder, lanes: KernelEncoder) {
    // Odd block counts exercise the one-super-block remainder path as well as the groups.
    for (seed, n_blocks) in [(1u64, 1usize), (2, 2), (3, 3), (4, 4001), (5, 4000)] {
        let x = random_blocks(seed, n_blocks, sub);
        let mut want = vec![0u8; n_blocks * bytes];
        reference(&x, &mut want);
        for kernel in Kernel::available() {
            let mut got = vec![0xA5u8; n_blocks * bytes];
            lanes(kernel, &x, &mut got);
            if got != want {
                let b = (0..n_blocks).find(|&b| got[b * bytes..(b + 1) * bytes] != want[b * bytes..(b + 1) * bytes]);
                let b = b.unwrap();
                panic!(
                    "{name} {kernel:?} seed {seed}: block {b} differs\nx = {:?}\nwant {:?}\ngot  {:?}",
                    &x[b * QK_K..(b + 1) * QK_K],
                    &want[b * bytes..(b + 1) * bytes],
                    &got[b * bytes..(b + 1) * bytes]
                );
            }
        }
    }
}

#[test]
fn q4_k_lanes_match_scalar_reference() {
    check("Q4_K", Q4_K_BYTES, 32, reference::quantize_q4_k, quantize_q4_k_with);
}

#[test]
fn q5_k_lanes_match_scalar_reference() {
    check("Q5_K", Q5_K_BYTES, 32, reference::quantize_q5_k, quantize_q5_k_with);
}

#[test]
fn q6_k_lanes_match_scalar_reference() {
    check("Q6_K", Q6_K_BYTES, 16, reference::quantize_q6_k, quantize_q6_k_with);
}

#[test]
fn kernels_cover_this_cpu() {
    let kernels = Kernel::available();
    assert_eq!(kernels[0], Kernel::Portable);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        assert!(kernels.contains(&Kernel::Avx2), "{kernels:?}");
    }
}

/// Not a check: `cargo test --release -p mm-converters --lib kernel_speed -- --ignored --nocapture`
/// prints the single-thread speed of the reference and of each kernel.
#[test]
#[ignore]
fn kernel_speed() {
    let n_blocks = 500;
    let mut rng = Rng(42);
    let x: Vec<f32> = (0..n_blocks * QK_K).map(|_| rng.normal() * 0.02).collect();
    let time = |f: &dyn Fn(&mut [u8]), bytes: usize| {
        let mut out = vec![0u8; n_blocks * bytes];
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            f(&mut out);
            best = best.min(t.elapsed().as_secs_f64());
        }
        best * 1e9 / (n_blocks * QK_K) as f64
    };
    type Case = (&'static str, usize, Encoder, KernelEncoder);
    let cases: [Case; 3] = [
        ("Q4_K", Q4_K_BYTES, reference::quantize_q4_k, quantize_q4_k_with),
        ("Q5_K", Q5_K_BYTES, reference::quantize_q5_k, quantize_q5_k_with),
        ("Q6_K", Q6_K_BYTES, reference::quantize_q6_k, quantize_q6_k_with),
    ];
    for (name, bytes, reference, lanes) in cases {
        let r = time(&|out| reference(&x, out), bytes);
        print!("{name}: reference {r:.1} ns/value");
        for kernel in Kernel::available() {
            let t = time(&|out| lanes(kernel, &x, out), bytes);
            print!(", {kernel:?} {t:.1} ns/value ({:.1}×)", r / t);
        }
        println!();
    }
}

/// Same bits, or both NaN (a NaN's payload is not part of the contract).
fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

type Qkx2Kernel = fn(&[[f32; 16]; 32], &[[f32; 16]; 32], &mut [f32; 16], &mut [f32; 16], &mut [[u8; 16]; 32]);
type QxKernel = fn(&[[f32; 32]; 16], &mut [f32; 32], &mut [[u8; 32]; 16]);

fn qkx2_portable(
    x: &[[f32; 16]; 32],
    w: &[[f32; 16]; 32],
    s: &mut [f32; 16],
    m: &mut [f32; 16],
    l: &mut [[u8; 16]; 32],
) {
    lanes::qkx2(15, -1.0, 0.1, 20, x, w, s, m, l)
}

fn qx_portable(x: &[[f32; 32]; 16], s: &mut [f32; 32], l: &mut [[u8; 32]; 16]) {
    lanes::qx_rmse1(32, 1e-15, x, s, l)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn qkx2_avx2(x: &[[f32; 16]; 32], w: &[[f32; 16]; 32], s: &mut [f32; 16], m: &mut [f32; 16], l: &mut [[u8; 16]; 32]) {
    lanes::qkx2(15, -1.0, 0.1, 20, x, w, s, m, l)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn qx_avx2(x: &[[f32; 32]; 16], s: &mut [f32; 32], l: &mut [[u8; 32]; 16]) {
    lanes::qx_rmse1(32, 1e-15, x, s, l)
}

fn fit_kernels() -> Vec<(&'static str, Qkx2Kernel, QxKernel)> {
    let mut v: Vec<(&'static str, Qkx2Kernel, QxKernel)> = vec![("portable", qkx2_portable, qx_portable)];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present.
        v.push(("avx2", |x, w, s, m, l| unsafe { qkx2_avx2(x, w, s, m, l) }, |x, s, l| unsafe { qx_avx2(x, s, l) }));
    }
    v
}

/// The fits themselves, lane by lane against the scalar functions: stricter than the bytes,
/// where later steps can hide a differing scale (NaN and infinite cases in particular).
#[test]
fn qkx2_lanes_match_scalar_fit() {
    let x = random_blocks(11, 400, 32);
    let mut rng = Rng(99);
    for (name, qkx2, _) in fit_kernels() {
        for (c, chunk) in x.chunks_exact(16 * 32).enumerate() {
            // ggml's weights (av_x + |x|) for most chunks; arbitrary ones, zeros included, else.
            let ggml_weights = c % 4 != 0;
            let mut w = vec![0f32; chunk.len()];
            for (ws, xs) in w.chunks_exact_mut(32).zip(chunk.chunks_exact(32)) {
                let av_x = (xs.iter().fold(0f32, |s, v| s + v * v) / 32.0).sqrt();
                for (w, v) in ws.iter_mut().zip(xs) {
                    *w = if ggml_weights { av_x + v.abs() } else { [0.0, 1.0, rng.uniform() as f32][rng.below(3)] };
                }
            }
            let (mut xt, mut wt) = ([[0f32; 16]; 32], [[0f32; 16]; 32]);
            for k in 0..16 {
                for i in 0..32 {
                    xt[i][k] = chunk[32 * k + i];
                    wt[i][k] = w[32 * k + i];
                }
            }
            let (mut s, mut m, mut l) = ([0f32; 16], [0f32; 16], [[0u8; 16]; 32]);
            qkx2(&xt, &wt, &mut s, &mut m, &mut l);
            for k in 0..16 {
                let mut want_l = [0u8; 32];
                let xs = &chunk[32 * k..32 * (k + 1)];
                let (want_s, want_m) =
                    reference::make_qkx2_quants(&reference::Q4_K_SEARCH, xs, &w[32 * k..32 * (k + 1)], &mut want_l);
                let got_l: Vec<u8> = (0..32).map(|i| l[i][k]).collect();
                assert!(
                    same_f32(s[k], want_s) && same_f32(m[k], want_m) && got_l == want_l,
                    "{name} chunk {c} lane {k}: got ({}, {}, {got_l:?}), want ({want_s}, {want_m}, {want_l:?})\nx = {xs:?}",
                    s[k],
                    m[k]
                );
            }
        }
    }
}

#[test]
fn qx_lanes_match_scalar_fit() {
    let x = random_blocks(12, 400, 16);
    for (name, _, qx) in fit_kernels() {
        for (c, chunk) in x.chunks_exact(32 * 16).enumerate() {
            let mut xt = [[0f32; 32]; 16];
            for k in 0..32 {
                for i in 0..16 {
                    xt[i][k] = chunk[16 * k + i];
                }
            }
            let (mut s, mut l) = ([0f32; 32], [[0u8; 32]; 16]);
            qx(&xt, &mut s, &mut l);
            for k in 0..32 {
                let mut want_l = [0u8; 16];
                let xs = &chunk[16 * k..16 * (k + 1)];
                let want_s = reference::make_qx_quants_rmse1(32, xs, &mut want_l);
                let got_l: Vec<u8> = (0..16).map(|i| l[i][k]).collect();
                assert!(
                    same_f32(s[k], want_s) && got_l == want_l,
                    "{name} chunk {c} lane {k}: got ({}, {got_l:?}), want ({want_s}, {want_l:?})\nx = {xs:?}",
                    s[k]
                );
            }
        }
    }
}
