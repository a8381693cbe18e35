//! MNN: the model directory MNN's LLM runtime loads (`MNN.llm.create(dir/config.json)`),
//! written natively — no torch, ONNX or MNNConvert (docs/mnn.md).
//!
//! | file | module | status |
//! |---|---|---|
//! | `tokenizer.mtok` | [`tokenizer_mtok`] | byte-identical to llmexport's for minimind2/minimind3 |
//! | `llm.mnn.weight` | [`weights`] | records, offsets and quantization as llmexport 3.6.1 |
//! | `config.json`, `llm_config.json` | [`config`] | llmexport's keys, values and formatting |
//! | `embeddings_bf16.bin` (untied only) | [`weights::embeddings_bf16`] | |
//! | `llm.mnn` (FlatBuffer `MNN.Net`) | [`decoder_graph`] → [`graph`] → [`net_flatbuffer`] | plain graph (docs/mnn.md §4); loads and runs in pymnn 3.6.1 (tests/mnn_export.rs) |
//! | `llm.mnn.json` (`--emit-json`, not needed at run time) | [`net_json`] | MNN's JSON form; `MNNConvert -f JSON` turns it into the same graph |
//!
//! [`export_dir`] writes the whole directory atomically. [`inspect`] reads one back for
//! `mm inspect` ([`flatbuffer_reader`] is the bounds-checked FlatBuffer access under it).
//!
//! # What the graph writer gets, and does
//!
//! [`weights::write_decoder`] / [`weights::write_checkpoint_weights`] (or, without data,
//! [`weights::plan_decoder`], which gives the same offsets) return a
//! [`weights::DecoderWeights`]: per layer `input_norm, q, [q_norm], k, [k_norm], v, o,
//! post_norm, gate, up, down`, then `final_norm` and `lm_head`, in file order. The graph
//! points its ops at them; offsets are absolute, so op order does not have to follow the file,
//! but llmexport's does.
//!
//! * Every Linear ([`weights::LinearRecord`]) is `Reshape{dims:[-1,ic,1,1], dimType:NCHW}`
//!   → `ConvertTensor{NCHW→NC4HW4}` → `Convolution` → `ConvertTensor{NC4HW4→NCHW}` →
//!   `Reshape{[1,-1,oc]}`; q/k/v and gate/up share the first two ops of their common input,
//!   as llmexport's graphs do. The Convolution2D has `common` = 1×1 kernel, stride/dilate 1, pad 0,
//!   `padMode: CAFFE`, `group: 1`, `inputCount: layout.ic`, `outputCount: layout.oc`;
//!   `quanParameter` = [`weights::LinearRecord::quan_parameter`] (type 1, `aMaxOrBits` = bits,
//!   **`aMin: 1`**, `readType` = oc·blocks, `scaleStorage` FP16/FP32; JSON form via
//!   [`weights::QuanParameter::to_json`]); `external` = [`weights::LinearRecord::external`]
//!   (`[offset, weight_len, alpha_len, 0, 0]`). No weight/bias arrays inline.
//! * Every RMSNorm ([`weights::NormRecord`]: the layer norms, the final norm, MiniMind-3's
//!   per-head `q_norm`/`k_norm` over `head_dim`) is a `LayerNorm{axis:[-1], epsilon:
//!   rms_norm_eps, group:1, useRMSNorm:true, external:[offset, 4·len, 4·len]}`.
//! * lm_head is the last Linear, its output reshaped to `[1,-1,vocab]` and named `logits`
//!   (after a `StridedSlice` by `logits_index` and the final norm, docs/mnn.md §4).
//! * Tied models: `llm_config.json` gets `tie_embeddings` from
//!   [`weights::DecoderWeights::tie_embeddings`] and the runtime reads embedding rows out of
//!   lm_head's record (it needs lm_head's alpha right after its values — the record layout
//!   guarantees it). Untied models: write `embeddings_bf16.bin` and no `tie_embeddings`.
//! * The remaining graph (inputs `input_ids [-1,1,H]` f32 / `attention_mask` f32 /
//!   `position_ids [1,-1]` i32 / `logits_index [1]` i32, rotary tables, elementwise RoPE,
//!   `Attention{kv_cache:true, layer_index}`, residual adds, SiLU·up) carries no weights
//!   except the rotary inverse frequencies, which go inline in a `Const`.
//!
//! [`decoder_graph`] builds exactly this (its Convolution, LayerNorm and Attention ops equal
//! those of llmexport's own `llm.mnn` for the same model: `export/tests/mnn_graph_fixture.rs`).
//!
//! MoE checkpoints are refused ([`weights::DecoderShape::from_config`]): a MoE layer needs
//! expert routing, outside the op set this graph uses and has checked in MNN's runtime.

pub mod config;
pub mod decoder_graph;
pub mod flatbuffer_reader;
pub mod graph;
pub mod inspect;
pub mod net_flatbuffer;
pub mod net_json;
pub mod quantize;
pub mod tokenizer_mtok;
pub mod weights;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{ensure, Context, Result};

use mm_converters::atomic::write_output_dir;
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
    let tokenizer = tokenizer_mtok::write_mtok(&ckpt.tokenizer, mtok)?;
    write_assets_with_tokenizer(ckpt, dir, quant, &tokenizer, progress)
}

/// [`write_assets`] with the `tokenizer.mtok` bytes already made (export_dir makes them
/// first, to refuse an unusable tokenizer before writing anything).
fn write_assets_with_tokenizer(
    ckpt: &Checkpoint,
    dir: &Path,
    quant: &DecoderQuant,
    tokenizer: &[u8],
    progress: &dyn Fn(usize, usize, &str),
) -> Result<MnnAssets> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    };

    write(config::TOKENIZER_FILE, tokenizer)?;

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

/// What [`export_dir`] writes besides the checkpoint.
#[derive(Debug, Clone, Default)]
pub struct MnnExportOptions {
    pub quant: DecoderQuant,
    pub mtok: tokenizer_mtok::MtokOptions,
    /// Also write `llm.mnn.json`, the graph in MNN's JSON form.
    pub emit_json: bool,
}

/// What [`export_dir`] wrote.
#[derive(Debug, Clone)]
pub struct MnnExportSummary {
    /// File names and sizes, sorted by name.
    pub files: Vec<(String, u64)>,
    /// Graph op counts by type.
    pub op_counts: BTreeMap<String, usize>,
    pub ops: usize,
    pub weights: DecoderWeights,
    /// Quantized bits per Linear weight, alpha included.
    pub bits_per_weight: f64,
    /// Facts worth telling (rope scaling baked in, untied embeddings file, …).
    pub notes: Vec<String>,
}

/// Writes the MNN model directory for `ckpt` into `dir` (created whole, or replaced whole
/// when it holds an earlier export): `config.json`, `llm_config.json`, `llm.mnn`,
/// `llm.mnn.weight`, `tokenizer.mtok` (and `embeddings_bf16.bin` for an untied model,
/// `llm.mnn.json` with `emit_json`). Everything that can be refused — MoE, a config the
/// graph cannot express, bad quantization options, a tokenizer without tokenizer.json — is
/// refused before anything is written; a failure midway leaves no partial directory.
pub fn export_dir(
    ckpt: &Checkpoint,
    dir: &Path,
    opts: &MnnExportOptions,
    progress: &dyn Fn(usize, usize, &str),
) -> Result<MnnExportSummary> {
    let spec = decoder_graph::DecoderGraphSpec::from_config(&ckpt.config)?;
    opts.quant.linear.validate()?;
    opts.quant.lm_head.validate()?;
    // The graph depends only on shapes and options, so it is built (and checked) from the
    // planned records before any weight is quantized.
    let planned = weights::plan_decoder(&spec.shape, &opts.quant)?;
    let graph = decoder_graph::decoder_graph(&spec, &planned)?;
    let net = net_flatbuffer::write_net(&graph)?;
    let json = if opts.emit_json { Some(config::json_bytes(&net_json::to_json(&graph)?)?) } else { None };
    let tokenizer = tokenizer_mtok::write_mtok(&ckpt.tokenizer, &opts.mtok)
        .context("the tokenizer cannot be written as tokenizer.mtok")?;

    let mut written = None;
    // An export with other options (--emit-json, untied embeddings) writes other files.
    let known = |rel: &Path| {
        [config::EMBEDDINGS_BF16_FILE, net_json::JSON_FILE].iter().any(|n| rel == Path::new(n))
    };
    write_output_dir(dir, &known, |tmp| {
        let assets = write_assets_with_tokenizer(ckpt, tmp, &opts.quant, &tokenizer, progress)?;
        ensure!(assets.weights == planned, "internal: the weight records differ from the ones the graph was built on");
        let write = |name: &str, bytes: &[u8]| -> Result<()> {
            let path = tmp.join(name);
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
        };
        write(config::MODEL_FILE, &net)?;
        if let Some(json) = &json {
            write(net_json::JSON_FILE, json)?;
        }
        written = Some(assets);
        Ok(())
    })?;
    let assets = written.context("internal: the directory was written without assets")?;

    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        files.push((entry.file_name().to_string_lossy().into_owned(), entry.metadata()?.len()));
    }
    files.sort();
    let mut notes = Vec::new();
    if let Some(s) = &ckpt.config.rope_scaling {
        notes.push(format!(
            "rope_scaling ({}, factor {}) is in the graph's rotary frequencies, as mm applies it",
            s.kind, s.factor
        ));
    }
    if assets.embeddings_file {
        notes.push("untied embeddings: the runtime reads them from embeddings_bf16.bin".into());
    }
    Ok(MnnExportSummary {
        files,
        op_counts: graph.op_counts(),
        ops: graph.ops.len(),
        bits_per_weight: assets.weights.bits_per_weight(),
        weights: assets.weights,
        notes,
    })
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
    fn export_dir_writes_the_whole_directory() {
        let ckpt = random_checkpoint(true);
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("out");
        let opts = MnnExportOptions { emit_json: true, ..Default::default() };
        let summary = export_dir(&ckpt, &dir, &opts, &|_, _, _| {}).unwrap();
        let names: Vec<&str> = summary.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["config.json", "llm.mnn", "llm.mnn.json", "llm.mnn.weight", "llm_config.json", "tokenizer.mtok"]
        );
        let spec = decoder_graph::DecoderGraphSpec::from_config(&ckpt.config).unwrap();
        let graph = decoder_graph::decoder_graph(&spec, &summary.weights).unwrap();
        let bytes = std::fs::read(dir.join(config::MODEL_FILE)).unwrap();
        assert_eq!(net_flatbuffer::read_net(&bytes).unwrap(), graph);
        assert_eq!(read_json(&dir.join(net_json::JSON_FILE)), net_json::to_json(&graph).unwrap());
        assert_eq!(summary.ops, graph.ops.len());
        assert!((summary.bits_per_weight - 4.5).abs() < 1e-9);
        // Only the target is left in the parent: no temporary directory.
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 1);
        let report = inspect::inspect_dir(&dir).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.linear_records, 2 * 7 + 1);
        assert_eq!(report.norm_records, 2 * 2 + 1);
    }

    #[test]
    fn export_dir_refuses_before_writing() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("out");
        let opts = MnnExportOptions::default();

        let cfg = MiniMindConfig {
            num_attention_heads: 4,
            num_key_value_heads: 2,
            use_moe: true,
            ..MiniMindConfig::with_hidden(128, 1)
        };
        let tensors = expected_tensors(&cfg)
            .into_iter()
            .map(|(n, s)| (n, Tensor::zeros(s.as_slice(), candle_core::DType::F32, &Device::Cpu).unwrap()))
            .collect();
        let moe =
            Checkpoint::new(cfg, tensors, TokenizerFiles::builtin_minimind2(), Provenance::new("test", Path::new("m")))
                .unwrap();
        let e = export_dir(&moe, &dir, &opts, &|_, _, _| {}).unwrap_err();
        assert!(format!("{e:#}").contains("MoE"), "{e:#}");

        let mut no_tokenizer = random_checkpoint(true);
        no_tokenizer.tokenizer = TokenizerFiles::default();
        let e = export_dir(&no_tokenizer, &dir, &opts, &|_, _, _| {}).unwrap_err();
        assert!(format!("{e:#}").contains("tokenizer.json"), "{e:#}");

        let bad_quant = MnnExportOptions {
            quant: DecoderQuant::uniform(QuantOptions { bits: 3, ..Default::default() }),
            ..Default::default()
        };
        let e = export_dir(&random_checkpoint(true), &dir, &bad_quant, &|_, _, _| {}).unwrap_err();
        assert!(e.to_string().contains("4 or 8 bits"), "{e}");

        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("keep.txt"), "x").unwrap();
        let e = export_dir(&random_checkpoint(true), &dir, &opts, &|_, _, _| {}).unwrap_err();
        assert!(format!("{e:#}").contains("keep.txt"), "{e:#}");
        // Nothing was written anywhere.
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 1);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
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
