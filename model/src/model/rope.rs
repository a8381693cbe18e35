//! Rotary position tables, computed in f32 step by step as upstream `precompute_freqs_cis`
//! does, including its YaRN-style frequency rescaling.

use candle_core::{Device, Result, Tensor};

use mm_converters::config::{rope_inverse_frequencies, MiniMindConfig};

/// Positions whose rows are computed once and kept: up to 2^22 angles (32 MiB of cos and sin
/// together), so a declared `max_position_embeddings` of 2^24 costs no more than MiniMind's
/// 32768. Rows past them are computed when a forward pass reaches them.
const CACHED_ANGLES: usize = 1 << 22;

/// cos/sin tables of shape [positions, head_dim / 2] (the halves upstream duplicates) for the
/// first positions of the context; [`slice`](Self::slice) computes any later rows it is asked for.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    /// The per-pair inverse frequencies the rows are made of.
    freqs: Vec<f32>,
    /// The model's context (`max_position_embeddings`): no position at or past it is valid.
    positions: usize,
}

impl RopeTables {
    /// Tables for the first positions of the config (all of MiniMind's 32768 at head_dim 64).
    /// Cached per (shape, base, scaling, device): training rebuilds its compute-dtype model
    /// every step, and recomputing ~1M angles and uploading them would stall the GPU each time.
    pub fn new(cfg: &MiniMindConfig, device: &Device) -> Result<Self> {
        type Cache = std::sync::Mutex<std::collections::HashMap<String, RopeTables>>;
        static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
        let key = format!(
            "{}/{}/{}/{:?}/{:?}",
            cfg.head_dim(),
            cfg.max_position_embeddings,
            cfg.rope_theta.to_bits(),
            cfg.rope_scaling,
            device.location()
        );
        let cache = CACHE.get_or_init(Default::default);
        if let Some(t) = cache.lock().expect("rope cache lock").get(&key) {
            return Ok(t.clone());
        }
        let cached = cfg.max_position_embeddings.min(CACHED_ANGLES / (cfg.head_dim() / 2).max(1));
        let tables = Self::with_length(cfg, cached, device)?;
        cache.lock().expect("rope cache lock").insert(key, tables.clone());
        Ok(tables)
    }

    /// Tables for `len` positions. The YaRN switch depends on max_position_embeddings
    /// (upstream's `end`), not on `len`.
    pub fn with_length(cfg: &MiniMindConfig, len: usize, device: &Device) -> Result<Self> {
        let freqs = rope_inverse_frequencies(cfg.head_dim(), cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling.as_ref());
        let (cos, sin) = rows(&freqs, 0, len, device)?;
        Ok(Self { cos, sin, freqs, positions: cfg.max_position_embeddings.max(len) })
    }

    /// Rows `start..start+len`, for the positions of one forward pass.
    pub fn slice(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        let end = start.saturating_add(len);
        if end > self.positions {
            candle_core::bail!("position {end} is beyond max_position_embeddings ({})", self.positions);
        }
        if end <= self.cos.dim(0)? {
            return Ok((self.cos.narrow(0, start, len)?, self.sin.narrow(0, start, len)?));
        }
        let (cos, sin) = rows(&self.freqs, start, len, self.cos.device())?;
        Ok((cos.to_dtype(self.cos.dtype())?, sin.to_dtype(self.sin.dtype())?))
    }
}

/// cos and sin of positions `start..start+len` times each frequency, [len, freqs].
fn rows(freqs: &[f32], start: usize, len: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = freqs.len();
    let mut cos = Vec::with_capacity(len * half);
    let mut sin = Vec::with_capacity(len * half);
    for t in start..start + len {
        for &f in freqs {
            // The angle is rounded to f32 as torch.outer does; cos/sin of it are exact.
            let angle = (t as f32 * f) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    Ok((Tensor::from_vec(cos, (len, half), device)?, Tensor::from_vec(sin, (len, half), device)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_declared_context_costs_only_the_rows_used() {
        let cfg = MiniMindConfig {
            num_attention_heads: 4,
            max_position_embeddings: mm_converters::limits::MAX_POSITION_EMBEDDINGS,
            ..MiniMindConfig::with_hidden(64, 1)
        };
        let tables = RopeTables::new(&cfg, &Device::Cpu).unwrap();
        assert!(tables.cos.dim(0).unwrap() * 8 <= CACHED_ANGLES);
        // A row past the cached ones equals the same row of a full table.
        let far = tables.cos.dim(0).unwrap() + 5;
        let (cos, sin) = tables.slice(far, 3).unwrap();
        let full = RopeTables::with_length(&cfg, far + 3, &Device::Cpu).unwrap();
        let (want_cos, want_sin) = full.slice(far, 3).unwrap();
        assert_eq!(cos.to_vec2::<f32>().unwrap(), want_cos.to_vec2::<f32>().unwrap());
        assert_eq!(sin.to_vec2::<f32>().unwrap(), want_sin.to_vec2::<f32>().unwrap());
        assert!(tables.slice(cfg.max_position_embeddings - 1, 2).is_err());
    }
}
