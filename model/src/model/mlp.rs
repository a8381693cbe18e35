//! SwiGLU feed-forward and upstream's mixture of experts (softmax router, top-k,
//! renormalised weights, shared experts added ungated, sequence-level aux loss).

use candle_core::{DType, Result, Tensor, D};

use super::linear::Linear;

#[derive(Debug, Clone)]
pub struct FeedForward {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl FeedForward {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, false)
    }

    /// `invariant`: rows x [m, hidden] whose outputs must not depend on m
    /// ([`Linear::forward_batch_invariant`]), for batched decoding.
    pub fn forward_with(&self, x: &Tensor, invariant: bool) -> Result<Tensor> {
        let lin = |l: &Linear, x: &Tensor| if invariant { l.forward_batch_invariant(x) } else { l.forward(x) };
        if super::fused_for(x) {
            let hidden = crate::fused::swiglu(&lin(&self.gate_proj, x)?, &lin(&self.up_proj, x)?)?;
            return lin(&self.down_proj, &hidden);
        }
        let gate = candle_nn::ops::silu(&lin(&self.gate_proj, x)?)?;
        lin(&self.down_proj, &(gate * lin(&self.up_proj, x)?)?)
    }
}

#[derive(Debug, Clone)]
pub struct MoeFeedForward {
    pub experts: Vec<FeedForward>,
    pub shared_experts: Vec<FeedForward>,
    /// Router weight [n_routed_experts, hidden].
    pub gate: Tensor,
    pub top_k: usize,
    pub norm_topk_prob: bool,
    pub aux_loss_alpha: f64,
    pub seq_aux: bool,
}

/// The result of one MoE layer; `aux_loss` is a scalar only in training mode.
pub struct MoeOutput {
    pub y: Tensor,
    pub aux_loss: Option<Tensor>,
}

/// Indices of the k largest scores of each row (ties: the lower index first).
fn top_k_rows(scores: &[f32], n_experts: usize, k: usize) -> Vec<Vec<usize>> {
    scores
        .chunks(n_experts)
        .map(|row| {
            let mut idx: Vec<usize> = (0..n_experts).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            idx.truncate(k);
            idx
        })
        .collect()
}

impl MoeFeedForward {
    /// `training` reproduces upstream's train-mode path: expert outputs pass through a
    /// float16 buffer, and the aux loss is computed.
    pub fn forward(&self, x: &Tensor, training: bool) -> Result<MoeOutput> {
        self.forward_with(x, training, false)
    }

    /// `invariant`: each row's output must not depend on the other rows (batched decoding):
    /// the router and every expert run through [`Linear::forward_batch_invariant`].
    pub fn forward_with(&self, x: &Tensor, training: bool, invariant: bool) -> Result<MoeOutput> {
        let (b, t, h) = x.dims3()?;
        let n = b * t;
        let n_experts = self.experts.len();
        let flat = x.reshape((n, h))?;
        let logits = if invariant {
            Linear::new(self.gate.clone()).forward_batch_invariant(&flat)?
        } else {
            flat.matmul(&self.gate.t()?)?
        };
        let scores = candle_nn::ops::softmax(&logits, D::Minus1)?;
        let host_scores = scores.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let chosen = top_k_rows(&host_scores, n_experts, self.top_k);

        let idx: Vec<u32> = chosen.iter().flatten().map(|&e| e as u32).collect();
        let idx_t = Tensor::from_vec(idx, (n, self.top_k), x.device())?;
        let mut weights = scores.gather(&idx_t, 1)?;
        if self.top_k > 1 && self.norm_topk_prob {
            let denom = (weights.sum_keepdim(1)? + 1e-20)?;
            weights = weights.broadcast_div(&denom)?;
        }
        let flat_weights = weights.flatten_all()?;

        let mut y = flat.zeros_like()?;
        for (e, expert) in self.experts.iter().enumerate() {
            let mut rows = Vec::new();
            let mut slots = Vec::new();
            for (row, picks) in chosen.iter().enumerate() {
                if let Some(slot) = picks.iter().position(|&p| p == e) {
                    rows.push(row as u32);
                    slots.push((row * self.top_k + slot) as u32);
                }
            }
            if rows.is_empty() {
                continue;
            }
            let m = rows.len();
            let rows = Tensor::from_vec(rows, m, x.device())?;
            let slots = Tensor::from_vec(slots, m, x.device())?;
            let mut out = expert.forward_with(&flat.index_select(&rows, 0)?, invariant)?;
            if training {
                out = out.to_dtype(DType::F16)?.to_dtype(x.dtype())?;
            }
            let w = flat_weights.index_select(&slots, 0)?.to_dtype(out.dtype())?.unsqueeze(1)?;
            y = y.index_add(&rows, &out.broadcast_mul(&w)?, 0)?;
        }
        let mut y = y.reshape((b, t, h))?;
        for shared in &self.shared_experts {
            let out = if invariant { shared.forward_with(&flat, true)?.reshape((b, t, h))? } else { shared.forward(x)? };
            y = (y + out)?;
        }
        let aux_loss = if training && self.aux_loss_alpha > 0.0 {
            Some(self.aux_loss(&scores, &chosen, b, t)?)
        } else {
            None
        };
        Ok(MoeOutput { y, aux_loss })
    }

    /// Upstream's load-balancing loss: expert selection frequency (a constant) times the
    /// mean router probability, per sequence (`seq_aux`) or over the whole batch.
    fn aux_loss(&self, scores: &Tensor, chosen: &[Vec<usize>], b: usize, t: usize) -> Result<Tensor> {
        let n_experts = self.experts.len();
        let k = self.top_k;
        let scores = scores.to_dtype(DType::F32)?;
        if self.seq_aux {
            let mut ce = vec![0f32; b * n_experts];
            for (row, picks) in chosen.iter().enumerate() {
                for &e in picks {
                    ce[(row / t) * n_experts + e] += 1.0;
                }
            }
            let norm = (t * k) as f32 / n_experts as f32;
            ce.iter_mut().for_each(|c| *c /= norm);
            let ce = Tensor::from_vec(ce, (b, n_experts), scores.device())?;
            let mean_scores = scores.reshape((b, t, n_experts))?.mean(1)?;
            (ce * mean_scores)?.sum(1)?.mean_all()? * self.aux_loss_alpha
        } else {
            let mut ce = vec![0f32; n_experts];
            for &e in chosen.iter().flatten() {
                ce[e] += 1.0;
            }
            let total = (chosen.len() * k) as f32;
            let fi: Vec<f32> = ce.iter().map(|c| c / total * n_experts as f32).collect();
            let fi = Tensor::from_vec(fi, n_experts, scores.device())?;
            let pi = scores.mean(0)?;
            (pi * fi)?.sum_all()? * self.aux_loss_alpha
        }
    }
}

#[derive(Debug, Clone)]
pub enum Mlp {
    Dense(FeedForward),
    Moe(MoeFeedForward),
}
