//! Taking a candle `MiniMind` over into the engine's own weights.

use std::sync::Mutex;

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};

use mm_converters::config::rope_inverse_frequencies;

use super::matrix::{Matrix, Proj};
use super::{CpuEngine, Ffn, Layer, Mlp3, Moe};
use crate::model::minimind::MiniMind;
use crate::model::mlp::{FeedForward, Mlp};
use crate::model::norm::RmsNorm;

fn floats(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

fn norm(n: &RmsNorm) -> Result<Vec<f32>> {
    floats(&n.weight)
}

fn mlp(f: &FeedForward) -> Result<Mlp3> {
    Ok(Mlp3 { gate: Proj::from_linear(&f.gate_proj)?, up: Proj::from_linear(&f.up_proj)?, down: Proj::from_linear(&f.down_proj)? })
}

impl CpuEngine {
    /// The engine for `model`'s current weights (LoRA branches included).
    pub fn from_model(model: &MiniMind) -> Result<CpuEngine> {
        let cfg = &model.config;
        let mut layers = Vec::with_capacity(model.layers.len());
        for block in &model.layers {
            let a = &block.self_attn;
            let ffn = match &block.mlp {
                Mlp::Dense(f) => Ffn::Dense(mlp(f)?),
                Mlp::Moe(m) => {
                    let router = match Matrix::from_tensor(&m.gate.to_dtype(DType::F32)?)? {
                        Matrix::Float(f) => f,
                        Matrix::Quant(_) => unreachable!("from_tensor makes float matrices"),
                    };
                    Ffn::Moe(Moe {
                        router,
                        experts: m.experts.iter().map(mlp).collect::<Result<_>>()?,
                        shared: m.shared_experts.iter().map(mlp).collect::<Result<_>>()?,
                        top_k: m.top_k,
                        norm_topk_prob: m.norm_topk_prob,
                    })
                }
            };
            layers.push(Layer {
                attn_norm: norm(&block.input_layernorm)?,
                q: Proj::from_linear(&a.q_proj)?,
                k: Proj::from_linear(&a.k_proj)?,
                v: Proj::from_linear(&a.v_proj)?,
                o: Proj::from_linear(&a.o_proj)?,
                ffn_norm: norm(&block.post_attention_layernorm)?,
                ffn,
            });
        }
        Ok(CpuEngine {
            hidden: cfg.hidden_size,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim(),
            vocab: cfg.vocab_size,
            eps: cfg.rms_norm_eps as f32,
            max_positions: cfg.max_position_embeddings,
            freqs: rope_inverse_frequencies(cfg.head_dim(), cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling.as_ref()),
            embed: floats(&model.embed_tokens).context("the token embedding")?,
            layers,
            norm: norm(&model.norm)?,
            lm_head: Proj::from_linear(&model.lm_head).context("the output head")?,
            scratch: Mutex::new(Default::default()),
        })
    }
}
