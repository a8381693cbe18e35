//! The small per-row steps between products, fused so each row is read once: RMSNorm,
//! rotate-half RoPE, SwiGLU and softmax. They cost a few percent of a step; plain loops that
//! the compiler vectorises are enough.

/// `out = x / sqrt(mean(x²) + eps) * weight`, as upstream: normalise in f32, then scale.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert!(x.len() == weight.len() && x.len() == out.len(), "rms_norm: mismatched lengths");
    let sum_sq: f32 = x.iter().map(|v| v * v).sum();
    let scale = 1.0 / (sum_sq / x.len() as f32 + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// Rotates one head vector in place: `v·cos + rotate_half(v)·sin` with `cos`/`sin` the
/// head_dim/2 per-pair values (upstream duplicates them over both halves).
pub fn rope_rotate_half(v: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = v.len() / 2;
    assert!(cos.len() == half && sin.len() == half && v.len() == 2 * half, "rope: mismatched lengths");
    let (lo, hi) = v.split_at_mut(half);
    for i in 0..half {
        let (a, b) = (lo[i], hi[i]);
        lo[i] = a * cos[i] - b * sin[i];
        hi[i] = b * cos[i] + a * sin[i];
    }
}

/// `gate = silu(gate) · up`, in place over `gate`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu: mismatched lengths");
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// Softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_the_formula() {
        let x = [1.0f32, -2.0, 3.0, 0.5];
        let w = [1.0f32, 2.0, 0.5, -1.0];
        let mut out = [0.0; 4];
        rms_norm(&x, &w, 1e-5, &mut out);
        let rms = ((1.0 + 4.0 + 9.0 + 0.25) / 4.0 + 1e-5f64).sqrt();
        for i in 0..4 {
            assert!((out[i] as f64 - x[i] as f64 / rms * w[i] as f64).abs() < 1e-6);
        }
    }

    #[test]
    fn rope_rotates_each_pair_of_halves() {
        let mut v = [1.0f32, 2.0, 3.0, 4.0];
        let (c, s) = (0.3f32.cos(), 0.3f32.sin());
        rope_rotate_half(&mut v, &[c, 1.0], &[s, 0.0]);
        assert!((v[0] - (c - 3.0 * s)).abs() < 1e-6 && (v[2] - (3.0 * c + s)).abs() < 1e-6);
        assert_eq!((v[1], v[3]), (2.0, 4.0));
    }

    #[test]
    fn swiglu_and_softmax() {
        let mut g = [0.0f32, 1.0, -1.0];
        swiglu(&mut g, &[2.0, 2.0, 2.0]);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 2.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
        let mut p = [1.0f32, 2.0, 3.0];
        softmax(&mut p);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6 && p[2] > p[1] && p[1] > p[0]);
    }
}
