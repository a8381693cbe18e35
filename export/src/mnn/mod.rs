//! MNN: the model directory MNN's LLM runtime loads (`MNN.llm.create(dir/config.json)`),
//! written natively — no torch, ONNX or MNNConvert (shared/docs/mnn.md).
//!
//! | file | module | status |
//! |---|---|---|
//! | `tokenizer.mtok` | [`tokenizer_mtok`] | byte-identical to llmexport's for minimind2/minimind3 |
//! | `llm.mnn.weight` | [`weights`] | records, offsets and quantization as llmexport 3.6.1 |
//! | `config.json`, `llm_config.json` | [`config`] | llmexport's keys, values and formatting |
//! | `embeddings_bf16.bin` (untied only) | [`weights::embeddings_bf16`] | |
//! | `llm.mnn` (FlatBuffer `MNN.Net`) | — | not written yet |
//!
//! # What the graph writer gets, and must do
//!
//! [`weights::write_decoder`] / [`weights::write_checkpoint_weights`] (or, without data,
//! [`weights::plan_decoder`], which gives the same offsets) return a
//! [`weights::DecoderWeights`]: per layer `input_norm, q, [q_norm], k, [k_norm], v, o,
//! post_norm, gate, up, down`, then `final_norm` and `lm_head`, in file order. The graph
//! points its ops at them; offsets are absolute, so op order does not have to follow the file,
//! but llmexport's does.
//!
//! * Every Linear ([`weights::LinearRecord`]) is five ops: `Reshape{dims:[-1,ic,1,1], dimType:NCHW}`
//!   → `ConvertTensor{NCHW→NC4HW4}` → `Convolution` → `ConvertTensor{NC4HW4→NCHW}` →
//!   `Reshape{[1,-1,oc]}`. The Convolution2D has `common` = 1×1 kernel, stride/dilate 1, pad 0,
//!   `padMode: CAFFE`, `group: 1`, `inputCount: layout.ic`, `outputCount: layout.oc`;
//!   `quanParameter` = [`weights::LinearRecord::quan_parameter`] (type 1, `aMaxOrBits` = bits,
//!   **`aMin: 1`**, `readType` = oc·blocks, `scaleStorage` FP16/FP32; JSON form via
//!   [`weights::QuanParameter::to_json`]); `external` = [`weights::LinearRecord::external`]
//!   (`[offset, weight_len, alpha_len, 0, 0]`). No weight/bias arrays inline.
//! * Every RMSNorm ([`weights::NormRecord`]: the layer norms, the final norm, MiniMind-3's
//!   per-head `q_norm`/`k_norm` over `head_dim`) is a `LayerNorm{axis:[-1], epsilon:
//!   rms_norm_eps, group:1, useRMSNorm:true, external:[offset, 4·len, 4·len]}`.
//! * lm_head is the last Linear, its output reshaped to `[1,-1,vocab]` and named `logits`
//!   (after a `StridedSlice` by `logits_index` and the final norm, mnn.md §4).
//! * Tied models: `llm_config.json` gets `tie_embeddings` from
//!   [`weights::DecoderWeights::tie_embeddings`] and the runtime reads embedding rows out of
//!   lm_head's record (it needs lm_head's alpha right after its values — the record layout
//!   guarantees it). Untied models: write `embeddings_bf16.bin` and no `tie_embeddings`.
//! * The remaining graph (inputs `input_ids [-1,1,H]` f32 / `attention_mask` f32 /
//!   `position_ids [1,-1]` i32 / `logits_index [1]` i32, rotary tables, elementwise RoPE,
//!   `Attention{kv_cache:true, layer_index}`, residual adds, SiLU·up) carries no weights
//!   except the rotary inverse frequencies, which go inline in a `Const`.
//!
//! MoE checkpoints are refused ([`weights::DecoderShape::from_config`]).

pub mod config;
pub mod tokenizer_mtok;
pub mod weights;

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, Result};

use mm_converters::naming::EMBED;
use mm_converters::Checkpoint;

pub use weights::{DecoderQuant, DecoderShape, DecoderWeights, QuantOptions};

/// What [`write_assets`] wrote.
#[derive(Debug, Clone)]
pub struct MnnAssets {
    pub weights: DecoderWeights,
    pub tokenizer_bytes: u64,
    /// Whether `embeddings_bf16.bin` was written (untied models).
    pub embeddings_file: bool,
}

/// Writes everything of the MNN directory except the graph: `llm.mnn.weight`,
/// `tokenizer.mtok`, `config.json`, `llm_config.json` and, for an untied model,
/// `embeddings_bf16.bin`. The returned records are what the `llm.mnn` writer points at.
pub fn write_assets(
    ckpt: &Checkpoint,
    dir: &Path,
    quant: &DecoderQuant,
    mtok: &tokenizer_mtok::MtokOptions,
    progress: &dyn Fn(usize, usize, &str),
) -> Result<MnnAssets> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    };

    let tokenizer = tokenizer_mtok::write_mtok(&ckpt.tokenizer, mtok)?;
    write(config::TOKENIZER_FILE, &tokenizer)?;

    let path = dir.join(config::WEIGHT_FILE);
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let (weights, _) = weights::write_checkpoint_weights(ckpt, quant, BufWriter::new(file), progress)?;

    let embeddings_file = !weights.tied;
    if embeddings_file {
        let embed = weights::tensor_f32(ckpt, EMBED)?;
        write(config::EMBEDDINGS_BF16_FILE, &weights::embeddings_bf16(&embed))?;
    }

    let facts = config::LlmFacts {
        model_type: "minimind".into(),
        hidden_size: ckpt.config.hidden_size,
        layer_nums: ckpt.config.num_hidden_layers,
    };
    let tie = weights.tie_embeddings();
    write(
        config::LLM_CONFIG_FILE,
        &config::json_bytes(&config::llm_config_json(&facts, &ckpt.tokenizer, tie.as_ref()))?,
    )?;
    write(config::CONFIG_FILE, &config::json_bytes(&config::config_json())?)?;
    Ok(MnnAssets { weights, tokenizer_bytes: tokenizer.len() as u64, embeddings_file })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use mm_converters::naming::{expected_tensors, LM_HEAD};
    use mm_converters::{MiniMindConfig, Provenance, TokenizerFiles};
    use serde_json::Value;

    fn random_checkpoint(tied: bool) -> Checkpoint {
        let cfg =
            MiniMindConfig { num_attention_heads: 4, num_key_value_heads: 2, ..MiniMindConfig::with_hidden(128, 2) };
        let mut tensors: Vec<(String, Tensor)> = expected_tensors(&cfg)
            .into_iter()
            .map(|(name, shape)| {
                let t = if shape.len() == 1 {
                    Tensor::ones(shape.as_slice(), candle_core::DType::F32, &Device::Cpu).unwrap()
                } else {
                    Tensor::randn(0f32, 0.05, shape.as_slice(), &Device::Cpu).unwrap()
                };
                (name, t)
            })
            .collect();
        if !tied {
            tensors.push((LM_HEAD.into(), Tensor::randn(0f32, 0.05, (cfg.vocab_size, 128), &Device::Cpu).unwrap()));
        }
        Checkpoint::new(cfg, tensors, TokenizerFiles::builtin_minimind2(), Provenance::new("test", Path::new(".")))
            .unwrap()
    }

    fn read_json(path: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn assets_of_a_tied_checkpoint() {
        let ckpt = random_checkpoint(true);
        let dir = tempfile::tempdir().unwrap();
        let assets =
            write_assets(&ckpt, dir.path(), &DecoderQuant::default(), &Default::default(), &|_, _, _| {}).unwrap();
        let weight_len = std::fs::metadata(dir.path().join(config::WEIGHT_FILE)).unwrap().len();
        assert_eq!(weight_len, assets.weights.file_bytes);
        assert!(!assets.embeddings_file && !dir.path().join(config::EMBEDDINGS_BF16_FILE).exists());
        let llm = read_json(&dir.path().join(config::LLM_CONFIG_FILE));
        assert_eq!(llm["hidden_size"], 128);
        assert_eq!(llm["layer_nums"], 2);
        assert_eq!(llm["attention_mask"], "float");
        assert_eq!(llm["jinja"]["eos"], "<|im_end|>");
        assert_eq!(llm["jinja"]["chat_template"].as_str(), ckpt.tokenizer.chat_template.as_deref());
        let tie = &llm["tie_embeddings"];
        // lm_head is the last record: its alpha ends the file.
        assert_eq!(tie["alpha_offset"].as_u64().unwrap() + tie["alpha_size"].as_u64().unwrap(), weight_len);
        assert_eq!(tie["alpha_offset"].as_u64().unwrap() - tie["weight_offset"].as_u64().unwrap(), 6400 * 128 / 2);
        let cfg = read_json(&dir.path().join(config::CONFIG_FILE));
        assert_eq!(cfg["tokenizer_file"], "tokenizer.mtok");
        let mtok = std::fs::read(dir.path().join(config::TOKENIZER_FILE)).unwrap();
        assert!(mtok.starts_with(b"430 4\n3 1 0\n0 1 2 2\n"));
    }

    #[test]
    fn assets_of_an_untied_checkpoint() {
        let ckpt = random_checkpoint(false);
        assert!(!ckpt.config.tie_word_embeddings);
        let dir = tempfile::tempdir().unwrap();
        let assets =
            write_assets(&ckpt, dir.path(), &DecoderQuant::default(), &Default::default(), &|_, _, _| {}).unwrap();
        assert!(assets.embeddings_file);
        assert_eq!(assets.weights.lm_head.tensor, LM_HEAD);
        let emb = std::fs::read(dir.path().join(config::EMBEDDINGS_BF16_FILE)).unwrap();
        assert_eq!(emb.len(), 6400 * 128 * 2);
        let e = weights::tensor_f32(&ckpt, EMBED).unwrap();
        let first = f32::from_bits((u16::from_le_bytes([emb[0], emb[1]]) as u32) << 16);
        assert!((first - e[0]).abs() <= e[0].abs() / 128.0);
        let llm = read_json(&dir.path().join(config::LLM_CONFIG_FILE));
        assert!(llm.get("tie_embeddings").is_none());
    }
}
