//! Rotary position tables, computed in f32 step by step as upstream `precompute_freqs_cis`
//! does, including its YaRN-style frequency rescaling.

use candle_core::{Device, Result, Tensor};

use mm_converters::config::{rope_inverse_frequencies, MiniMindConfig};

/// cos/sin tables of shape [positions, head_dim / 2] (the halves upstream duplicates).
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl RopeTables {
    /// Tables for every position of the config. Cached per (shape, base, scaling, device):
    /// training rebuilds its compute-dtype model every step, and recomputing ~1M angles and
    /// uploading them would stall the GPU each time.
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
        let tables = Self::with_length(cfg, cfg.max_position_embeddings, device)?;
        cache.lock().expect("rope cache lock").insert(key, tables.clone());
        Ok(tables)
    }

    /// Tables for `len` positions. The YaRN switch depends on max_position_embeddings
    /// (upstream's `end`), not on `len`.
    pub fn with_length(cfg: &MiniMindConfig, len: usize, device: &Device) -> Result<Self> {
        let half = cfg.head_dim() / 2;
        let freqs = rope_inverse_frequencies(cfg.head_dim(), cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling.as_ref());
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for t in 0..len {
            for &f in &freqs {
                // The angle is rounded to f32 as torch.outer does; cos/sin of it are exact.
                let angle = (t as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (len, half), device)?,
            sin: Tensor::from_vec(sin, (len, half), device)?,
        })
    }

    /// Rows `start..start+len`, for the positions of one forward pass.
    pub fn slice(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        let available = self.cos.dim(0)?;
        if start + len > available {
            candle_core::bail!(
                "position {} is beyond max_position_embeddings ({available})",
                start + len
            );
        }
        Ok((self.cos.narrow(0, start, len)?, self.sin.narrow(0, start, len)?))
    }
}
