//! Fresh weights with upstream's initialisation: PyTorch's default kaiming-uniform
//! U(±1/√fan_in) for every linear layer (the tied embedding takes lm_head's), ones for norms.

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

use mm_converters::naming::expected_tensors;
use mm_converters::{Checkpoint, MiniMindConfig, Provenance, TokenizerFiles};

/// A randomly initialised checkpoint (f32), reproducible from `seed`.
pub fn random_checkpoint(cfg: &MiniMindConfig, seed: u64, tokenizer: TokenizerFiles) -> Result<Checkpoint> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors = Vec::new();
    for (name, shape) in expected_tensors(cfg) {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if shape.len() == 1 {
            vec![1.0; n]
        } else {
            let fan_in = shape[1] as f32;
            let bound = 1.0 / fan_in.sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        tensors.push((name, Tensor::from_vec(data, shape, &Device::Cpu)?));
    }
    let mut provenance = Provenance::new("random weights", std::path::Path::new("-"));
    provenance.notes.push(format!("seed {seed}"));
    Checkpoint::new(cfg.clone(), tensors, tokenizer, provenance)
}
