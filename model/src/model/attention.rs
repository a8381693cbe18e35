//! Grouped-query self-attention with rotate-half RoPE and an append-only KV cache.

use candle_core::{DType, Result, Tensor, D};

use super::linear::Linear;

/// Keys and values seen so far by one layer, [batch, kv_heads, positions, head_dim], in
/// buffers with room for more positions: a step writes its keys and values in place instead
/// of concatenating (and so copying) the whole past every step. Cloning copies the buffers,
/// so clones never write into each other's storage.
#[derive(Debug, Default)]
pub struct LayerCache {
    /// (k, v) buffers [batch, kv_heads, capacity, head_dim]; positions `..len` are filled.
    buf: Option<(Tensor, Tensor)>,
    len: usize,
}

/// Buffers grow in steps of this many positions (so a long decode copies its past once per
/// step of growth, not once per token), and at least to what a prefill needs.
const CACHE_GROWTH: usize = 256;

impl Clone for LayerCache {
    fn clone(&self) -> Self {
        let buf = self.buf.as_ref().map(|(k, v)| -> Result<(Tensor, Tensor)> { Ok((k.copy()?, v.copy()?)) });
        match buf.transpose() {
            Ok(buf) => Self { buf, len: self.len },
            // A copy can only fail for lack of memory; a cache that lost its past would give
            // wrong logits silently, so fail loudly instead.
            Err(e) => panic!("copying a KV cache: {e}"),
        }
    }
}

impl LayerCache {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Appends k/v [b, kv_heads, t, head_dim] and returns every cached position, new ones
    /// included (views of the buffers: strided, not contiguous).
    fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let (b, kvh, t, d) = k.dims4()?;
        let needed = self.len + t;
        let capacity = self.buf.as_ref().map_or(0, |(k, _)| k.dim(2).unwrap_or(0));
        if needed > capacity {
            let new_cap = needed.div_ceil(CACHE_GROWTH) * CACHE_GROWTH;
            let nk = Tensor::zeros((b, kvh, new_cap, d), k.dtype(), k.device())?;
            let nv = Tensor::zeros((b, kvh, new_cap, d), v.dtype(), v.device())?;
            if let Some((ok, ov)) = &self.buf {
                nk.slice_set(&ok.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                nv.slice_set(&ov.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            }
            self.buf = Some((nk, nv));
        }
        let (bk, bv) = self.buf.as_ref().expect("allocated above");
        if bk.dims4()? != (b, kvh, bk.dim(2)?, d) {
            candle_core::bail!("KV cache holds {:?}, the step brings {:?}", bk.dims(), k.dims());
        }
        bk.slice_set(&k.contiguous()?, 2, self.len)?;
        bv.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = needed;
        Ok((bk.narrow(2, 0, needed)?, bv.narrow(2, 0, needed)?))
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// How attention is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPath {
    /// candle's fused kernels (no backward): generation.
    Inference,
    /// Differentiable composite ops: training on the CPU, or with a padding mask or cache.
    Composite,
    /// mm's fused kernels with backward (RoPE, causal softmax): training on CUDA. The mask
    /// must be the plain causal one (no cache, no padding); the kernel builds it.
    FusedCausal,
}

/// Applies the rotation to x [b, h, t, d] with cos/sin [t, d/2].
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor, path: AttentionPath) -> Result<Tensor> {
    let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
    if path == AttentionPath::FusedCausal {
        return crate::fused::rope(x, &cos, &sin);
    }
    if path == AttentionPath::Composite {
        candle_nn::rotary_emb::rope_slow(x, &cos, &sin)
    } else {
        candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)
    }
}

/// Repeats each KV head `n_rep` times in place (torch.repeat_interleave on the head axis).
fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kvh, t, d) = x.dims4()?;
    x.unsqueeze(2)?.expand((b, kvh, n_rep, t, d))?.reshape((b, kvh * n_rep, t, d))
}

impl Attention {
    /// x: the `b·t` rows [b·t, hidden] of a [b, t] batch (rows, so the projections need no
    /// reshapes, which in training would each cost a gradient pass); returns rows too.
    /// Positions start at `cache.len()`. `mask` is an additive [b or 1, 1, t, total] bias
    /// built by the caller.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &Tensor,
        (b, t): (usize, usize),
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
        path: AttentionPath,
    ) -> Result<Tensor> {
        // [b·t, heads·d] rows → [b, heads, t, d]. On the fused training path a contiguous copy
        // (fused::swap_middle), whose backward is one coalesced copy too; elsewhere a view.
        let heads = |rows: Tensor, n: usize| -> Result<Tensor> {
            let rows = rows.reshape((b, t, n, self.head_dim))?;
            if path == AttentionPath::FusedCausal {
                crate::fused::swap_middle(&rows)
            } else {
                rows.transpose(1, 2)
            }
        };
        let q = heads(self.q_proj.forward(x)?, self.n_heads)?;
        let k = heads(self.k_proj.forward(x)?, self.n_kv_heads)?;
        let v = heads(self.v_proj.forward(x)?, self.n_kv_heads)?;
        let q = rotate(&q, cos, sin, path)?;
        let mut k = rotate(&k, cos, sin, path)?;
        let mut v = v.contiguous()?;
        if let Some(cache) = cache {
            (k, v) = cache.append(k, v)?;
        }
        let out = self.attend(&q, &k, &v, mask, path)?;
        let out = if path == AttentionPath::FusedCausal { crate::fused::swap_middle(&out)? } else { out.transpose(1, 2)? };
        let out = out.reshape((b * t, self.n_heads * self.head_dim))?;
        self.o_proj.forward(&out)
    }

    /// One decode step of `caches.len()` independent sequences: row i of x [n, hidden] is the
    /// next token of sequence i, at position `caches[i].len()`; `cos`/`sin` [n, head_dim/2] hold
    /// each row's own position. Returns rows [n, hidden].
    ///
    /// The projections and RoPE run once over all n rows. Attention loops over the sequences,
    /// each against its own cache: the caches have different lengths, and a padded batch
    /// would need every cache copied into one padded tensor each step (a copy as large as all
    /// the caches, per layer), and its sums would run over the batch's longest length, so a
    /// sequence's values would change with what else is in the batch. Per sequence, each
    /// product depends on that sequence alone.
    pub fn forward_step_batch(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, caches: &mut [&mut LayerCache]) -> Result<Tensor> {
        let n = caches.len();
        let heads = |proj: &Linear, h: usize| -> Result<Tensor> {
            // [1, heads, n, head_dim]: the n sequences stand where one sequence's positions
            // would, so RoPE takes row i of cos/sin for sequence i.
            proj.forward_batch_invariant(x)?.reshape((1, n, h, self.head_dim))?.transpose(1, 2)
        };
        let path = AttentionPath::Inference;
        let q = rotate(&heads(&self.q_proj, self.n_heads)?, cos, sin, path)?;
        let k = rotate(&heads(&self.k_proj, self.n_kv_heads)?, cos, sin, path)?;
        let v = heads(&self.v_proj, self.n_kv_heads)?.contiguous()?;
        let mut outs = Vec::with_capacity(n);
        for (i, cache) in caches.iter_mut().enumerate() {
            let (k, v) = cache.append(k.narrow(2, i, 1)?.contiguous()?, v.narrow(2, i, 1)?.contiguous()?)?;
            outs.push(self.attend(&q.narrow(2, i, 1)?, &k, &v, None, path)?);
        }
        // [1, heads, n, head_dim] → rows [n, heads·head_dim].
        let out = Tensor::cat(&outs, 2)?.transpose(1, 2)?.reshape((n, self.n_heads * self.head_dim))?;
        self.o_proj.forward_batch_invariant(&out)
    }

    /// softmax(q kᵀ / √d + mask) v for q [b, heads, t, d] and k/v [b, kv_heads, total, d]
    /// (GQA heads repeated here); returns [b, heads, t, d].
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, path: AttentionPath) -> Result<Tensor> {
        let n_rep = self.n_heads / self.n_kv_heads;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        if path == AttentionPath::FusedCausal {
            // Scores in the compute dtype; scale, causal mask and softmax in f32 in one kernel.
            // The n_rep query heads of a KV head (h = kv·n_rep + r, adjacent in q) go in as one
            // block of n_rep·t rows against that head's keys and values, so k and v are neither
            // repeated nor, in the backward, summed back; cuBLAS takes kᵀ as a transposed view.
            let (b, h, t, d) = q.dims4()?;
            let kvh = self.n_kv_heads;
            let grouped = q.contiguous()?.reshape((b, kvh, n_rep * t, d))?;
            let scores = grouped.matmul(&k.t()?)?.reshape((b, h, t, t))?;
            let probs = crate::fused::causal_softmax(&scores, scale as f32)?;
            return probs.reshape((b, kvh, n_rep * t, t))?.matmul(v)?.reshape((b, h, t, d));
        }
        if path == AttentionPath::Inference && q.dim(2)? == 1 {
            // A decode step: each KV head's query heads as one block of rows, against the
            // cache's views, so the whole past is not repeated and copied per head each token.
            let (b, h, _, d) = q.dims4()?;
            let grouped = q.contiguous()?.reshape((b, self.n_kv_heads, n_rep, d))?;
            let mut scores = (grouped.matmul(&k.t()?)? * scale)?;
            if let Some(mask) = mask {
                scores = scores.broadcast_add(&mask.to_dtype(scores.dtype())?)?;
            }
            let dtype = scores.dtype();
            let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?;
            return probs.to_dtype(dtype)?.matmul(v)?.reshape((b, h, 1, d));
        }
        let k = repeat_kv(k, n_rep)?;
        let v = repeat_kv(v, n_rep)?;
        let mut scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(&mask.to_dtype(scores.dtype())?)?;
        }
        // Softmax in f32 like upstream, back to the compute dtype for the value product.
        let dtype = scores.dtype();
        let scores = scores.to_dtype(DType::F32)?;
        let probs = if path == AttentionPath::Composite {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        probs.to_dtype(dtype)?.matmul(&v.contiguous()?)
    }
}

/// The additive attention bias for `t` new positions after `past` cached ones: causal
/// (-inf above the diagonal) plus upstream's `(1 - mask) * -1e9` for padding, where
/// `padding` is [b, past + t] with 1 for real tokens.
pub fn attention_bias(t: usize, past: usize, padding: Option<&Tensor>, device: &candle_core::Device) -> Result<Option<Tensor>> {
    let total = past + t;
    let causal = if t > 1 {
        let data: Vec<f32> = (0..t)
            .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        Some(Tensor::from_vec(data, (1, 1, t, total), device)?)
    } else {
        None
    };
    let pad = match padding {
        None => None,
        Some(m) => {
            let (b, len) = m.dims2()?;
            if len != total {
                candle_core::bail!("attention mask covers {len} positions, the sequence has {total}");
            }
            let m = m.to_dtype(DType::F32)?;
            Some(((1.0 - m)? * -1e9)?.reshape((b, 1, 1, total))?)
        }
    };
    Ok(match (causal, pad) {
        (None, None) => None,
        (Some(c), None) => Some(c),
        (None, Some(p)) => Some(p),
        (Some(c), Some(p)) => Some(c.broadcast_add(&p)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::compare::random;
    use candle_core::{Device, Var};

    /// The fused training path (query heads grouped per KV head, no repeated k/v) against the
    /// composite one (repeat_kv, additive causal mask), forward and gradients, in f32 on the
    /// CPU (the fused ops' CPU forms).
    #[test]
    fn grouped_fused_attention_matches_the_composite_form() {
        let (b, h, kvh, t, d) = (2, 4, 2, 5, 8);
        let attn = Attention {
            q_proj: Linear::new(Tensor::zeros((1, 1), DType::F32, &Device::Cpu).unwrap()),
            k_proj: Linear::new(Tensor::zeros((1, 1), DType::F32, &Device::Cpu).unwrap()),
            v_proj: Linear::new(Tensor::zeros((1, 1), DType::F32, &Device::Cpu).unwrap()),
            o_proj: Linear::new(Tensor::zeros((1, 1), DType::F32, &Device::Cpu).unwrap()),
            n_heads: h,
            n_kv_heads: kvh,
            head_dim: d,
        };
        let q = Var::from_tensor(&random(&[b, h, t, d], 1.0, 81)).unwrap();
        let k = Var::from_tensor(&random(&[b, kvh, t, d], 1.0, 82)).unwrap();
        let v = Var::from_tensor(&random(&[b, kvh, t, d], 1.0, 83)).unwrap();
        let weights = random(&[b, h, t, d], 1.0, 84);
        let mask = attention_bias(t, 0, None, &Device::Cpu).unwrap();
        let run = |path| {
            let out = attn.attend(q.as_tensor(), k.as_tensor(), v.as_tensor(), mask.as_ref().filter(|_| path == AttentionPath::Composite), path).unwrap();
            let grads = (&out * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let g = |x: &Var| grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (out.flatten_all().unwrap().to_vec1::<f32>().unwrap(), g(&q), g(&k), g(&v))
        };
        let fused = run(AttentionPath::FusedCausal);
        let composite = run(AttentionPath::Composite);
        for (what, a, b) in [("out", &fused.0, &composite.0), ("dq", &fused.1, &composite.1), ("dk", &fused.2, &composite.2), ("dv", &fused.3, &composite.3)] {
            let worst = a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "{what}: max |diff| {worst}");
        }
    }

    /// The whole layer (projections, head transposes, RoPE, attention, output projection) on
    /// the fused training path against the composite one, forward and gradients.
    #[test]
    fn fused_attention_layer_matches_the_composite_form() {
        let (b, t, h, kvh, d) = (2, 6, 4, 2, 8);
        let hidden = h * d;
        let w = |rows: usize, seed: u64| Var::from_tensor(&random(&[rows, hidden], 0.2, seed)).unwrap();
        let (wq, wk, wv, wo) = (w(h * d, 101), w(kvh * d, 102), w(kvh * d, 103), w(hidden, 104));
        let attn = Attention {
            q_proj: Linear::new(wq.as_tensor().clone()),
            k_proj: Linear::new(wk.as_tensor().clone()),
            v_proj: Linear::new(wv.as_tensor().clone()),
            o_proj: Linear::new(wo.as_tensor().clone()),
            n_heads: h,
            n_kv_heads: kvh,
            head_dim: d,
        };
        let x = Var::from_tensor(&random(&[b * t, hidden], 1.0, 105)).unwrap();
        let (cos, sin) = (random(&[t, d / 2], 1.0, 106), random(&[t, d / 2], 1.0, 107));
        let weights = random(&[b * t, hidden], 1.0, 108);
        let mask = attention_bias(t, 0, None, &Device::Cpu).unwrap();
        let run = |path| {
            let m = mask.as_ref().filter(|_| path == AttentionPath::Composite);
            let out = attn.forward(x.as_tensor(), (b, t), &cos, &sin, m, None, path).unwrap();
            let grads = (&out * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut all = vec![flat(&out)];
            all.extend([&x, &wq, &wk, &wv, &wo].iter().map(|v| flat(grads.get(v.as_tensor()).unwrap())));
            all
        };
        let (fused, composite) = (run(AttentionPath::FusedCausal), run(AttentionPath::Composite));
        for (what, (a, c)) in ["out", "dx", "dwq", "dwk", "dwv", "dwo"].iter().zip(fused.iter().zip(&composite)) {
            let worst = a.iter().zip(c).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "{what}: max |diff| {worst}");
        }
    }
}
