//! Upstream's PPO `CriticModel`: the MiniMind trunk (its `lm_head` unused) and a scalar value
//! head `nn.Linear(hidden, 1)` read at every position.

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};

use super::check_dims;
use mm_model::model::{MiniMind, Mode};

/// The critic: `trunk` built over the critic's own weights (a `TrainableModel`'s model when
/// it is trained), the value head's weight [1, hidden] and bias [1].
#[derive(Clone)]
pub struct Critic {
    pub trunk: MiniMind,
    pub value_weight: Tensor,
    pub value_bias: Tensor,
    /// Upstream applies the trunk's final RMSNorm a second time to its already-normed output
    /// (`self.model.norm(outputs[0])`); true reproduces that. The fixed critic reads the
    /// trunk's output once (false). The two differ by up to ~1e-3 in value.
    pub double_norm: bool,
}

/// The critic's outputs for a batch.
pub struct CriticOutput {
    /// [B, T, hidden]: what the value head reads (after the second norm when `double_norm`).
    pub hidden: Tensor,
    /// [B, T]: the value at every position.
    pub values: Tensor,
}

impl Critic {
    /// Upstream's critic, double norm included. `value_weight` must be [1, hidden] and
    /// `value_bias` [1] (tensors of `Var`s when training: gradients reach them).
    pub fn upstream(trunk: MiniMind, value_weight: Tensor, value_bias: Tensor) -> Result<Self> {
        let h = trunk.config.hidden_size;
        check_dims("the value head weight", &value_weight, &[1, h])?;
        check_dims("the value head bias", &value_bias, &[1])?;
        Ok(Self { trunk, value_weight, value_bias, double_norm: true })
    }

    /// Values of `ids` [B, T] under the attention mask `padding` [B, T] (1 = real token).
    pub fn forward(&self, ids: &Tensor, padding: Option<&Tensor>, mode: Mode) -> Result<CriticOutput> {
        let (b, t) = ids.dims2().context("critic ids must be [rows, positions]")?;
        if let Some(p) = padding {
            check_dims("the attention mask", p, &[b, t])?;
        }
        let (mut hidden, _aux) = self.trunk.forward_hidden(&ids.to_dtype(DType::U32)?, None, padding, mode)?;
        if self.double_norm {
            hidden = self.trunk.norm.forward(&hidden)?;
        }
        let h = hidden.dim(2)?;
        let rows = hidden.reshape((b * t, h))?;
        let w = self.value_weight.to_dtype(rows.dtype())?;
        let values = rows.matmul(&w.t()?)?.broadcast_add(&self.value_bias.to_dtype(rows.dtype())?)?.reshape((b, t))?;
        Ok(CriticOutput { hidden, values: values.to_dtype(DType::F32)? })
    }
}
