//! MiniMind as llama.cpp architectures: dense → `llama`, MoE → `ernie4_5-moe` (docs/gguf.md §2).
//!
//! The GGUF names and rules come from the tensor table (`crate::naming`). `llama`'s rope rotates adjacent
//! pairs while MiniMind's `rotate_half` pairs i with i + d/2, so Q and K rows are permuted
//! per head on the way out and back on the way in.

use anyhow::{bail, ensure, Context, Result};

use crate::config::MiniMindConfig;
use crate::gguf::file::{MetaValue, Metadata};
use crate::gguf::keys::{self, llm};
use crate::naming::{self, Dim, GgufRule, Scope, Spec, TENSORS};

pub const ARCH_DENSE: &str = "llama";
pub const ARCH_MOE: &str = "ernie4_5-moe";

/// How a GGUF tensor is made from canonical tensors.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorSource {
    Copy(String),
    /// Rows of a [n_head·head_dim, in] projection, interleaved per head for `llama` rope.
    PermuteRows { name: String, n_head: usize },
    /// Experts [FF, H] stacked into [E, FF, H].
    Stack(Vec<String>),
    /// Shared experts joined along the FF axis: rows of gate/up, columns of down.
    ConcatRows(Vec<String>),
    ConcatCols(Vec<String>),
}

/// One tensor of the GGUF file: name, dims innermost first, and where its values come from.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    pub name: String,
    pub ne: Vec<u64>,
    pub source: TensorSource,
}

pub fn arch_of(cfg: &MiniMindConfig) -> &'static str {
    if cfg.use_moe {
        ARCH_MOE
    } else {
        ARCH_DENSE
    }
}

/// Refuses what llama.cpp cannot compute the way MiniMind does.
pub fn check_representable(cfg: &MiniMindConfig) -> Result<()> {
    ensure!(
        !cfg.inference_rope_scaling && cfg.rope_scaling.is_none(),
        "the model uses MiniMind's YaRN rope scaling (inference_rope_scaling), whose per-dimension ramp \
         llama.cpp cannot represent; export without it (llama.cpp's own --rope-scaling yarn is a different formula)"
    );
    ensure!(cfg.hidden_act == "silu", "hidden_act {:?}: llama.cpp's llama graph uses SiLU", cfg.hidden_act);
    if cfg.use_moe {
        ensure!(cfg.scoring_func == "softmax", "MoE scoring_func {:?}: ernie4_5-moe uses softmax", cfg.scoring_func);
        ensure!(
            cfg.norm_topk_prob || cfg.num_experts_per_tok == 1,
            "MoE without norm_topk_prob: llama.cpp's ernie4_5-moe always renormalises the top-k weights"
        );
    }
    Ok(())
}

/// llama.cpp's tensor for one table row in layer `l` (all experts of an expert row at once).
fn gguf_tensor(s: &Spec, cfg: &MiniMindConfig, l: usize) -> Option<GgufTensor> {
    let (name, rule) = s.gguf?;
    let copies = s.copies(cfg);
    if !s.in_checkpoint(cfg) || copies == 0 {
        return None;
    }
    // ggml dims run innermost first: the canonical [out, in] reversed.
    let mut ne: Vec<u64> = s.dims(cfg).iter().rev().map(|&d| d as u64).collect();
    let mut sources: Vec<String> = (0..copies).map(|e| naming::fill(s.canonical, l, e)).collect();
    let source = match rule {
        GgufRule::Copy => TensorSource::Copy(sources.swap_remove(0)),
        GgufRule::PermuteRows(heads) => {
            let n_head = if heads == Dim::Query { cfg.num_attention_heads } else { cfg.num_key_value_heads };
            TensorSource::PermuteRows { name: sources.swap_remove(0), n_head }
        }
        GgufRule::StackExperts => {
            ne.push(copies as u64);
            TensorSource::Stack(sources)
        }
        GgufRule::ConcatRows => {
            ne[1] *= copies as u64;
            TensorSource::ConcatRows(sources)
        }
        GgufRule::ConcatCols => {
            ne[0] *= copies as u64;
            TensorSource::ConcatCols(sources)
        }
    };
    Some(GgufTensor { name: naming::fill(name, l, 0), ne, source })
}

/// The first canonical tensor a GGUF tensor is made from (llama.cpp's converter orders by it).
fn first_source(t: &GgufTensor) -> &str {
    match &t.source {
        TensorSource::Copy(n) | TensorSource::PermuteRows { name: n, .. } => n,
        TensorSource::Stack(ns) | TensorSource::ConcatRows(ns) | TensorSource::ConcatCols(ns) => &ns[0],
    }
}

/// The GGUF tensors of a checkpoint with this config, in the order llama.cpp's HF converter
/// writes them: embedding, each layer's tensors sorted by HF name, then the output head and
/// final norm (sorted by HF name too).
pub fn plan(cfg: &MiniMindConfig) -> Vec<GgufTensor> {
    let model_rows: Vec<&Spec> = TENSORS.iter().filter(|s| s.scope == Scope::Model).collect();
    let first_layer_row = TENSORS.iter().position(|s| s.scope != Scope::Model).unwrap_or(TENSORS.len());
    let (leading, trailing): (Vec<&Spec>, Vec<&Spec>) =
        model_rows.into_iter().partition(|s| TENSORS[..first_layer_row].iter().any(|r| r.kind == s.kind));
    let mut out: Vec<GgufTensor> = leading.iter().filter_map(|s| gguf_tensor(s, cfg, 0)).collect();
    for l in 0..cfg.num_hidden_layers {
        let mut layer: Vec<GgufTensor> = TENSORS.iter().filter(|s| s.scope != Scope::Model).filter_map(|s| gguf_tensor(s, cfg, l)).collect();
        layer.sort_by(|a, b| first_source(a).cmp(first_source(b)));
        out.extend(layer);
    }
    let mut tail: Vec<GgufTensor> = trailing.iter().filter_map(|s| gguf_tensor(s, cfg, 0)).collect();
    tail.sort_by(|a, b| first_source(a).cmp(first_source(b)));
    out.extend(tail);
    out
}

/// `llama`'s Q/K row order: within each head, row 2i+s takes old row s·hd/2 + i.
pub fn permute_rows<T: Copy>(data: &[T], rows: usize, n_head: usize) -> Vec<T> {
    reorder_rows(data, rows, n_head, |hd, i, s| (2 * i + s, s * hd / 2 + i))
}

/// The inverse of [`permute_rows`].
pub fn unpermute_rows<T: Copy>(data: &[T], rows: usize, n_head: usize) -> Vec<T> {
    reorder_rows(data, rows, n_head, |hd, i, s| (s * hd / 2 + i, 2 * i + s))
}

fn reorder_rows<T: Copy>(data: &[T], rows: usize, n_head: usize, map: impl Fn(usize, usize, usize) -> (usize, usize)) -> Vec<T> {
    let cols = data.len() / rows;
    let hd = rows / n_head;
    let mut out = data.to_vec();
    for h in 0..n_head {
        for i in 0..hd / 2 {
            for s in 0..2 {
                let (new, old) = map(hd, i, s);
                let (new, old) = (h * hd + new, h * hd + old);
                out[new * cols..(new + 1) * cols].copy_from_slice(&data[old * cols..(old + 1) * cols]);
            }
        }
    }
    out
}

/// The `general.size_label` gguf-py derives from the parameter count ("3.1M", "104M", "4x12M").
pub fn size_label(total: u64, shared: u64, per_expert: u64, n_expert: usize) -> String {
    let notation = |n: u64| {
        let (scaled, suffix) = match n as f64 {
            x if x > 1e12 => (x * 1e-12, "T"),
            x if x > 1e9 => (x * 1e-9, "B"),
            x if x > 1e6 => (x * 1e-6, "M"),
            x => (x * 1e-3, "K"),
        };
        let digits = format!("{}", scaled.round() as u64).trim_start_matches('0').len();
        let fix = 2usize.saturating_sub(digits);
        format!("{scaled:.fix$}{suffix}")
    };
    if n_expert > 0 {
        format!("{n_expert}x{}", notation(shared + per_expert))
    } else {
        notation(total)
    }
}

/// The architecture keys, in the order llama.cpp's converter writes them; `file_type` is
/// placed where the converter puts it.
pub fn write_hparams(md: &mut Metadata, cfg: &MiniMindConfig, name: &str, size: &str, file_type: u32) {
    let arch = arch_of(cfg);
    let key = |k: &str| keys::arch_key(arch, k);
    let u32v = |v: usize| MetaValue::U32(v as u32);
    md.set(keys::general::ARCHITECTURE, MetaValue::String(arch.into()));
    md.set(keys::general::TYPE, MetaValue::String("model".into()));
    md.set(keys::general::NAME, MetaValue::String(name.into()));
    md.set(keys::general::SIZE_LABEL, MetaValue::String(size.into()));
    md.set(&key(llm::BLOCK_COUNT), u32v(cfg.num_hidden_layers));
    md.set(&key(llm::CONTEXT_LENGTH), u32v(cfg.max_position_embeddings));
    md.set(&key(llm::EMBEDDING_LENGTH), u32v(cfg.hidden_size));
    md.set(&key(llm::FEED_FORWARD_LENGTH), u32v(cfg.intermediate_size));
    md.set(&key(llm::HEAD_COUNT), u32v(cfg.num_attention_heads));
    md.set(&key(llm::HEAD_COUNT_KV), u32v(cfg.num_key_value_heads));
    md.set(&key(llm::ROPE_FREQ_BASE), MetaValue::F32(cfg.rope_theta as f32));
    md.set(&key(llm::RMS_EPSILON), MetaValue::F32(cfg.rms_norm_eps as f32));
    md.set(&key(llm::KEY_LENGTH), u32v(cfg.head_dim()));
    md.set(&key(llm::VALUE_LENGTH), u32v(cfg.head_dim()));
    md.set(keys::general::FILE_TYPE, MetaValue::U32(file_type));
    md.set(&key(llm::VOCAB_SIZE), u32v(cfg.vocab_size));
    md.set(&key(llm::ROPE_DIMENSION_COUNT), u32v(cfg.head_dim()));
    if cfg.use_moe {
        md.set(&key(llm::EXPERT_COUNT), u32v(cfg.n_routed_experts));
        md.set(&key(llm::EXPERT_USED_COUNT), u32v(cfg.num_experts_per_tok));
        md.set(&key(llm::EXPERT_FEED_FORWARD_LENGTH), u32v(cfg.intermediate_size));
        md.set(&key(llm::EXPERT_SHARED_FEED_FORWARD_LENGTH), u32v(cfg.intermediate_size * cfg.n_shared_experts));
        md.set(&key(llm::INTERLEAVE_MOE_LAYER_STEP), u32v(1));
        md.set(&key(llm::LEADING_DENSE_BLOCK_COUNT), u32v(0));
    }
}

/// Shortest decimal that round-trips the f32, so 1e-5 stored as f32 reads back as 1e-5.
fn f32_as_decimal(v: f32) -> f64 {
    format!("{v}").parse().unwrap_or(v as f64)
}

/// The config a GGUF describes (`vocab` rows and tie come from the tensors).
pub fn read_hparams(md: &Metadata, source: &str, vocab_rows: usize, tied: bool) -> Result<MiniMindConfig> {
    let arch = md
        .get(keys::general::ARCHITECTURE)
        .and_then(MetaValue::as_str)
        .with_context(|| format!("{source}: general.architecture is missing"))?;
    ensure!(
        arch == ARCH_DENSE || arch == ARCH_MOE,
        "{source}: architecture '{arch}' is not a MiniMind layout (mm reads '{ARCH_DENSE}' and '{ARCH_MOE}')"
    );
    let get = |k: &str| md.get(&keys::arch_key(arch, k));
    let int = |k: &str| -> Result<usize> {
        get(k).and_then(MetaValue::as_u64).map(|v| v as usize).with_context(|| format!("{source}: {arch}.{k} is missing or not an integer"))
    };
    let float = |k: &str, default: f64| -> Result<f64> {
        match get(k) {
            None => Ok(default),
            Some(MetaValue::F32(v)) => Ok(f32_as_decimal(*v)),
            Some(v) => v.as_f64().with_context(|| format!("{source}: {arch}.{k} is not a number")),
        }
    };
    if let Some(kind) = get(llm::ROPE_SCALING_TYPE).and_then(MetaValue::as_str) {
        ensure!(kind == "none" || kind == "linear" && float(llm::ROPE_SCALING_FACTOR, 1.0)? == 1.0,
            "{source}: rope scaling '{kind}' has no MiniMind equivalent");
    }
    let hidden = int(llm::EMBEDDING_LENGTH)?;
    let layers = int(llm::BLOCK_COUNT)?;
    let heads = int(llm::HEAD_COUNT)?;
    let mut cfg = MiniMindConfig::with_hidden(hidden, layers);
    cfg.num_attention_heads = heads;
    cfg.num_key_value_heads = match get(llm::HEAD_COUNT_KV) {
        Some(v) => v.as_u64().context("head_count_kv is not an integer")? as usize,
        None => heads,
    };
    cfg.vocab_size = vocab_rows;
    cfg.intermediate_size = int(llm::FEED_FORWARD_LENGTH)?;
    cfg.max_position_embeddings = int(llm::CONTEXT_LENGTH)?;
    cfg.rope_theta = float(llm::ROPE_FREQ_BASE, 10000.0)?;
    cfg.rms_norm_eps = float(llm::RMS_EPSILON, 1e-5)?;
    cfg.tie_word_embeddings = tied;
    cfg.inference_rope_scaling = false;
    cfg.rope_scaling = None;
    if arch == ARCH_MOE {
        cfg.use_moe = true;
        cfg.n_routed_experts = int(llm::EXPERT_COUNT)?;
        cfg.num_experts_per_tok = int(llm::EXPERT_USED_COUNT)?;
        cfg.intermediate_size = int(llm::EXPERT_FEED_FORWARD_LENGTH)?;
        let shared = get(llm::EXPERT_SHARED_FEED_FORWARD_LENGTH).and_then(MetaValue::as_u64).unwrap_or(0) as usize;
        ensure!(
            shared.is_multiple_of(cfg.intermediate_size),
            "{source}: shared expert width {shared} is not a multiple of the expert width {}",
            cfg.intermediate_size
        );
        cfg.n_shared_experts = shared.checked_div(cfg.intermediate_size).unwrap_or(0);
        ensure!(int(llm::LEADING_DENSE_BLOCK_COUNT).unwrap_or(0) == 0, "{source}: leading dense blocks are not MiniMind");
        ensure!(int(llm::INTERLEAVE_MOE_LAYER_STEP).unwrap_or(1) == 1, "{source}: interleaved dense blocks are not MiniMind");
    }
    cfg.validate().with_context(|| format!("{source}: the hyperparameters do not make a valid model"))?;
    if let Some(rot) = get(llm::ROPE_DIMENSION_COUNT).and_then(MetaValue::as_u64) {
        ensure!(rot as usize == cfg.head_dim(), "{source}: partial rope (dimension_count {rot}) is not MiniMind");
    }
    Ok(cfg)
}

/// The canonical name and shape bookkeeping for reading: the GGUF tensors of this config
/// with their inverse mapping. Unknown tensors in a file are an error.
pub fn check_tensor_set(plan: &[GgufTensor], names: &[&str], source: &str) -> Result<()> {
    for n in names {
        if !plan.iter().any(|t| t.name == *n) {
            bail!("{source}: tensor '{n}' has no place in a MiniMind model");
        }
    }
    for t in plan {
        if !names.contains(&t.name.as_str()) {
            bail!("{source}: tensor '{}' is missing", t.name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_interleaves_halves_and_inverts() {
        // 2 heads of head_dim 4, one column: rows 0..8.
        let rows: Vec<u32> = (0..8).collect();
        let p = permute_rows(&rows, 8, 2);
        assert_eq!(p, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(unpermute_rows(&p, 8, 2), rows);
        let wide: Vec<u32> = (0..24).collect();
        assert_eq!(unpermute_rows(&permute_rows(&wide, 8, 2), 8, 2), wide);
    }

    #[test]
    fn size_labels_match_gguf_py() {
        assert_eq!(size_label(3_149_056, 0, 0, 0), "3.1M");
        assert_eq!(size_label(104_000_000, 0, 0, 0), "104M");
        assert_eq!(size_label(25_800_000, 0, 0, 0), "26M");
        assert_eq!(size_label(0, 10_000_000, 2_000_000, 4), "4x12M");
    }

    #[test]
    fn hostile_hyperparameters_are_errors_before_any_plan() {
        let cfg = MiniMindConfig { num_attention_heads: 4, ..MiniMindConfig::with_hidden(256, 2) };
        let mut good = Metadata::new();
        write_hparams(&mut good, &cfg, "t", "1M", 0);
        let vocab = cfg.vocab_size;
        assert_eq!(read_hparams(&good, "t.gguf", vocab, true).unwrap().num_hidden_layers, 2);
        let cases = [
            ("llama.attention.head_count", 0u32, "num_attention_heads must be positive"),
            ("llama.block_count", 1_000_000_000, "num_hidden_layers 1000000000 exceeds"),
            ("llama.context_length", u32::MAX, "max_position_embeddings 4294967295 exceeds"),
            ("llama.feed_forward_length", 0, "intermediate_size must be positive"),
        ];
        for (key, value, want) in cases {
            let mut md = good.clone();
            md.set(key, MetaValue::U32(value));
            let err = format!("{:#}", read_hparams(&md, "t.gguf", vocab, true).unwrap_err());
            assert!(err.contains("t.gguf") && err.contains(want), "{key}={value}: {err}");
        }
        let moe = MiniMindConfig { use_moe: true, ..cfg };
        let mut md = Metadata::new();
        write_hparams(&mut md, &moe, "t", "1M", 0);
        md.set(&format!("{ARCH_MOE}.expert_feed_forward_length"), MetaValue::U32(0));
        md.set(&format!("{ARCH_MOE}.expert_shared_feed_forward_length"), MetaValue::U32(0));
        assert!(read_hparams(&md, "t.gguf", vocab, true).is_err());
        md.set(&format!("{ARCH_MOE}.expert_count"), MetaValue::U32(1_000_000_000));
        assert!(read_hparams(&md, "t.gguf", vocab, true).is_err());
    }

    #[test]
    fn plan_covers_every_canonical_tensor() {
        let cfg = MiniMindConfig { num_attention_heads: 4, ..MiniMindConfig::with_hidden(256, 2) };
        let p = plan(&cfg);
        assert_eq!(p.len(), 2 + 9 * 2);
        let moe = MiniMindConfig { use_moe: true, ..cfg };
        assert_eq!(plan(&moe).len(), 2 + 2 * (6 + 4 + 3));
    }
}
