//! Which ggml type each tensor gets, per export scheme, the way llama.cpp decides it.
//!
//! Two llama.cpp programs are modelled (ggml-org/llama.cpp, commit `0c1e57098`, the tree the
//! fixtures in `shared/fixtures/llamacpp/` were made with):
//!
//! * `f32` / `f16` / `bf16` are what `convert_hf_to_gguf.py --outtype …` writes
//!   (`conversion/base.py`, `ModelBase.prepare_tensors`): 1-D tensors, `*_norm.weight`, the MoE
//!   router `ffn_gate_inp` and names not ending in `.weight` are F32; every other tensor,
//!   `token_embd` and `output` included, takes the out type. Nothing falls back.
//! * the quantized schemes are what `llama-quantize <f16.gguf> <ftype>` writes with default
//!   parameters (no imatrix, not `--pure`, no `--output-tensor-type` / `--token-embedding-type`
//!   / `--tensor-type` overrides), `src/llama-quant.cpp`:
//!   1. `tensor_allows_quantization`: 1-D tensors (`ggml_n_dims < 2`), names not ending in
//!      `weight`, `*_norm.weight`, `ffn_gate_inp.weight` and a list of exotic names keep their
//!      input type. The input is the converter's F16 GGUF, so that is the converter rule above
//!      (F32 for everything mm writes in this class).
//!   2. the scheme's default type (`llama_ftype_get_default_type`): Q4_K for q4_k_s/m, Q5_K for
//!      q5_k_s/m, Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.
//!   3. the per-category mixture (`llama_tensor_get_type_impl`), see [`mixture`].
//!   4. the shape fallback (`tensor_type_fallback`), see [`shape_fallback`].
//!
//! The rules were checked against the real outputs in `shared/fixtures/llamacpp/manifest.json`
//! (q4_k_m, q5_k_m, q6_k, q8_0, f16) and the MiniMind tables of `docs/gguf.md` §4; the
//! tests below repeat both.

use crate::quant::GgmlType;

#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantScheme {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

impl QuantScheme {
    pub const ALL: [QuantScheme; 13] = [
        QuantScheme::F32,
        QuantScheme::F16,
        QuantScheme::BF16,
        QuantScheme::Q8_0,
        QuantScheme::Q4_0,
        QuantScheme::Q4_1,
        QuantScheme::Q5_0,
        QuantScheme::Q5_1,
        QuantScheme::Q4_K_S,
        QuantScheme::Q4_K_M,
        QuantScheme::Q5_K_S,
        QuantScheme::Q5_K_M,
        QuantScheme::Q6_K,
    ];

    /// Case-insensitive; `-` may stand for `_` ("Q4_K_M", "q4-k-m", "f16", "BF16").
    pub fn parse(s: &str) -> Option<QuantScheme> {
        let wanted = s.trim().replace('-', "_");
        QuantScheme::ALL.into_iter().find(|q| q.name().eq_ignore_ascii_case(&wanted))
    }

    /// The lowercase CLI name ("q4_k_m").
    pub fn name(self) -> &'static str {
        match self {
            QuantScheme::F32 => "f32",
            QuantScheme::F16 => "f16",
            QuantScheme::BF16 => "bf16",
            QuantScheme::Q8_0 => "q8_0",
            QuantScheme::Q4_0 => "q4_0",
            QuantScheme::Q4_1 => "q4_1",
            QuantScheme::Q5_0 => "q5_0",
            QuantScheme::Q5_1 => "q5_1",
            QuantScheme::Q4_K_S => "q4_k_s",
            QuantScheme::Q4_K_M => "q4_k_m",
            QuantScheme::Q5_K_S => "q5_k_s",
            QuantScheme::Q5_K_M => "q5_k_m",
            QuantScheme::Q6_K => "q6_k",
        }
    }

    /// `general.file_type`: the `llama_ftype` value (`include/llama.h`).
    pub fn file_type(self) -> u32 {
        match self {
            QuantScheme::F32 => 0,  // LLAMA_FTYPE_ALL_F32
            QuantScheme::F16 => 1,  // LLAMA_FTYPE_MOSTLY_F16
            QuantScheme::Q4_0 => 2, // LLAMA_FTYPE_MOSTLY_Q4_0
            QuantScheme::Q4_1 => 3, // LLAMA_FTYPE_MOSTLY_Q4_1
            QuantScheme::Q8_0 => 7, // LLAMA_FTYPE_MOSTLY_Q8_0
            QuantScheme::Q5_0 => 8, // LLAMA_FTYPE_MOSTLY_Q5_0
            QuantScheme::Q5_1 => 9, // LLAMA_FTYPE_MOSTLY_Q5_1
            QuantScheme::Q4_K_S => 14,
            QuantScheme::Q4_K_M => 15,
            QuantScheme::Q5_K_S => 16,
            QuantScheme::Q5_K_M => 17,
            QuantScheme::Q6_K => 18,
            QuantScheme::BF16 => 32, // LLAMA_FTYPE_MOSTLY_BF16
        }
    }

    /// True for the schemes llama-quantize makes; f32/f16/bf16 come from the HF converter.
    /// (Both write `general.quantization_version` = 2; llama-quantize moves it, and
    /// `general.file_type`, to the end of the KV list.)
    pub fn is_quantized(self) -> bool {
        !matches!(self, QuantScheme::F32 | QuantScheme::F16 | QuantScheme::BF16)
    }

    /// `llama_ftype_get_default_type` (and the converter's out type for f32/f16/bf16).
    fn default_type(self) -> GgmlType {
        match self {
            QuantScheme::F32 => GgmlType::F32,
            QuantScheme::F16 => GgmlType::F16,
            QuantScheme::BF16 => GgmlType::BF16,
            QuantScheme::Q8_0 => GgmlType::Q8_0,
            QuantScheme::Q4_0 => GgmlType::Q4_0,
            QuantScheme::Q4_1 => GgmlType::Q4_1,
            QuantScheme::Q5_0 => GgmlType::Q5_0,
            QuantScheme::Q5_1 => GgmlType::Q5_1,
            QuantScheme::Q4_K_S | QuantScheme::Q4_K_M => GgmlType::Q4_K,
            QuantScheme::Q5_K_S | QuantScheme::Q5_K_M => GgmlType::Q5_K,
            QuantScheme::Q6_K => GgmlType::Q6_K,
        }
    }
}

/// What the type rules need to know about the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelFacts {
    /// `hparams.n_layer` (the block count). Also `n_attention_wv` (one `attn_v` per layer) and
    /// the `n_ffn_down` bound.
    pub n_layer: usize,
    /// `hparams.n_expert` (`expert_count`); 0 for dense models.
    pub n_expert: usize,
    /// No `output.weight` in the file (`has_tied_embeddings`).
    pub tied_embeddings: bool,
}

/// The ggml type llama.cpp gives tensor `name` with dims `ne` (innermost first, as GGUF stores them).
/// `ne` includes the 3rd dim for stacked experts.
pub fn tensor_type(scheme: QuantScheme, name: &str, ne: &[u64], facts: &ModelFacts) -> GgmlType {
    choose(scheme, name, ne, facts).0
}

/// `Some(reason)` when the chosen type had to fall back (row length not a multiple of 256), for the export summary.
pub fn fallback_reason(scheme: QuantScheme, name: &str, ne: &[u64], facts: &ModelFacts) -> Option<String> {
    choose(scheme, name, ne, facts).1
}

fn choose(scheme: QuantScheme, name: &str, ne: &[u64], facts: &ModelFacts) -> (GgmlType, Option<String>) {
    if !scheme.is_quantized() {
        return (converter_type(scheme.default_type(), name, ne), None);
    }
    if !allows_quantization(name, ne) {
        // llama-quantize keeps the input type; its input is the converter's F16 GGUF.
        return (converter_type(GgmlType::F16, name, ne), None);
    }
    let ncols = ne.first().copied().unwrap_or(1);
    let (target, output_note) = mixture(scheme, category(name), name, ncols, facts);
    let (chosen, fallback_note) = shape_fallback(name, ncols, target);
    (chosen, fallback_note.or(output_note))
}

/// `ggml_n_dims`: trailing dims of size 1 do not count; at least 1.
fn n_dims(ne: &[u64]) -> usize {
    ne.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1)
}

/// The converter's choice (`ModelBase.prepare_tensors`) with no model-specific
/// `tensor_force_quant` override, for out type `out` (F32, F16 or BF16).
fn converter_type(out: GgmlType, name: &str, ne: &[u64]) -> GgmlType {
    // `n_dims` there is numpy's, i.e. the full rank.
    if ne.len() <= 1 || name.ends_with("_norm.weight") || !name.ends_with(".weight") {
        return GgmlType::F32;
    }
    // Tensor kinds "always in float32" (the list mirrors llama-quantize's exclusions).
    const ALWAYS_F32: [&str; 8] = [
        "ffn_gate_inp.weight", // MoE router (FFN_GATE_INP)
        "position_embd.weight",
        "token_types.weight",
        "ssm_conv1d.weight",
        "shortconv.conv.weight",
        "time_mix_first.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
    ];
    if ALWAYS_F32.iter().any(|s| name.ends_with(s)) {
        return GgmlType::F32;
    }
    out
}

/// `tensor_allows_quantization` with default params (`quantize_output_tensor` = true,
/// `only_copy` = false).
fn allows_quantization(name: &str, ne: &[u64]) -> bool {
    if n_dims(ne) < 2 || !name.ends_with("weight") || name.contains("_norm.weight") {
        return false;
    }
    // Substrings that are never quantized. Only `ffn_gate_inp.weight` (the MoE router) can
    // occur in what mm writes; the rest are other architectures' small tensors.
    const KEEP: [&str; 16] = [
        "ffn_gate_inp.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "time_mix_first.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        ".patch_embd",
        "rel_pos",
    ];
    if KEEP.iter().any(|s| name.contains(s)) {
        return false;
    }
    // Positional and token-type embeddings (BERT-style), matched by full name.
    !matches!(name, "position_embd.weight" | "token_types.weight")
}

/// `tensor_get_category`, reduced to the categories mm's names can fall in. The order of the
/// tests matters: `ffn_up` before `ffn_gate` before `ffn_down`, and `*_exps` / `*_shexp` land in
/// the same category as their dense counterpart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    match name {
        "output.weight" => return Category::Output,
        "token_embd.weight" | "per_layer_token_embd.weight" => return Category::TokenEmbd,
        _ => {}
    }
    // attn_qkv / attn_kv_b (fused or MLA projections) share the attn_v rules in llama.cpp, except
    // that Q4_K_M/Q5_K_M give a fused qkv Q5_K/Q6_K; mm never writes either.
    let table = [
        ("attn_v.weight", Category::AttnV),
        ("attn_k.weight", Category::AttnK),
        ("attn_q.weight", Category::AttnQ),
        ("attn_output.weight", Category::AttnOutput),
        ("ffn_up", Category::FfnUp),
        ("ffn_gate", Category::FfnGate),
        ("ffn_down", Category::FfnDown),
    ];
    table.into_iter().find(|(pat, _)| name.contains(pat)).map_or(Category::Other, |(_, c)| c)
}

/// `use_more_bits(i, n)`: the first and last eighth of the layers, and every third layer in
/// between. C integer arithmetic (truncating `/` and `%`), which Rust's i64 ops reproduce.
fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// N of a `blk.N.` prefix (`sscanf(name, "blk.%d.")`).
fn layer_of(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("blk.")?;
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 || !rest[digits..].starts_with('.') {
        return None;
    }
    rest[..digits].parse().ok()
}

/// `llama_tensor_get_type_impl` for mm's schemes. Returns the target type before the shape
/// fallback, plus a note when the output rule picked Q8_0 because of the row length.
///
/// Counters. llama-quantize walks the tensors in `weight_name_comparer` order (non-`blk` tensors,
/// then `blk.N.*` by numeric N) and bumps `i_attention_wv` at each `attn_v` and `i_ffn_down` at each
/// ffn_down-category tensor. With one `attn_v` and (dense) one `ffn_down` per layer, those
/// counters equal N of `blk.N.`, so N is used here. For MoE (`n_expert > 1`) llama.cpp itself
/// parses N from the name for the ffn_down / ffn_gate / ffn_up rules, because one layer has
/// several ffn_down tensors (`_exps`, `_shexp`); `i_attention_wv` stays a counter there too, and
/// still equals N. `n_attention_wv` counts the `attn_v` tensors (= `n_layer`); the ffn bound is
/// `hparams.n_layer`. A name without `blk.N.` gets none of the layer-dependent bumps.
///
/// Not modelled, because they cannot apply to mm's schemes or models: the IQ*/Q2_K/Q3_K/TQ/MXFP4
/// branches, Falcon's rules, the 70B rule (llama arch with 80 layers and GQA: attn_v Q4_K →
/// Q5_K), the imatrix-only Q4_0/Q5_0 ffn_down rule, and fused `attn_qkv`.
fn mixture(
    scheme: QuantScheme,
    cat: Category,
    name: &str,
    ncols: u64,
    facts: &ModelFacts,
) -> (GgmlType, Option<String>) {
    use QuantScheme as S;
    let default = scheme.default_type();
    // `hparams.n_expert == 8` tests use the raw count (Mixtral-style 8-expert models).
    let eight_experts = facts.n_expert == 8;
    let n_layer = facts.n_layer as i64;
    let layer = layer_of(name);
    let more_bits = layer.is_some_and(|i| use_more_bits(i, n_layer));

    match cat {
        // The output projection, and the token embedding when it doubles as the output
        // (tied): Q6_K, except Q8_0 when the row length is not a multiple of the default type's
        // block (256 for K-quants, 32 for the legacy types), and a Q8_0 scheme stays Q8_0.
        Category::Output | Category::TokenEmbd if cat == Category::Output || facts.tied_embeddings => {
            let block = default.block_size() as u64;
            if !ncols.is_multiple_of(block) {
                let note = format!(
                    "ne[0] = {ncols} is not a multiple of {block} ({default} block): the output rule gives Q8_0 instead of Q6_K"
                );
                (GgmlType::Q8_0, Some(note))
            } else if default != GgmlType::Q8_0 {
                (GgmlType::Q6_K, None)
            } else {
                (default, None)
            }
        }
        // An untied token embedding keeps the default type.
        Category::TokenEmbd => (default, None),
        Category::AttnV => {
            let mut t = default;
            if matches!(scheme, S::Q4_K_M | S::Q5_K_M) && more_bits {
                t = GgmlType::Q6_K;
            } else if scheme == S::Q4_K_S && layer.is_some_and(|i| i < 4) {
                t = GgmlType::Q5_K;
            }
            if eight_experts {
                t = GgmlType::Q8_0;
            }
            (t, None)
        }
        Category::AttnK if eight_experts => (GgmlType::Q8_0, None),
        Category::FfnDown => {
            let t = match scheme {
                S::Q4_K_M | S::Q5_K_M if more_bits => GgmlType::Q6_K,
                S::Q4_K_S if layer.is_some_and(|i| i < n_layer / 8) => GgmlType::Q5_K,
                _ => default,
            };
            (t, None)
        }
        Category::AttnOutput if eight_experts && matches!(scheme, S::Q4_K_S | S::Q4_K_M) => (GgmlType::Q5_K, None),
        _ => (default, None),
    }
}

/// `tensor_type_fallback`: when the row length `ne[0]` is not a multiple of the target's block,
/// Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, and F16 if even that 32-block type does not divide.
/// llama.cpp has no fallback for the 32-block types themselves and stops ("no tensor type
/// fallback is defined"); mm writes F16 there, like the converter's `--outtype q8_0` does.
/// Every MiniMind row length (H, FF, head_dim multiples) is a multiple of 32.
fn shape_fallback(name: &str, ncols: u64, target: GgmlType) -> (GgmlType, Option<String>) {
    let block = target.block_size() as u64;
    if ncols.is_multiple_of(block) {
        return (target, None);
    }
    let why = format!("{name}: ne[0] = {ncols} is not a multiple of {block} (required for {target})");
    let next = match target {
        GgmlType::Q4_K => Some(GgmlType::Q5_0),
        GgmlType::Q5_K => Some(GgmlType::Q5_1),
        GgmlType::Q6_K => Some(GgmlType::Q8_0),
        _ => None,
    };
    match next {
        Some(t) if ncols.is_multiple_of(t.block_size() as u64) => (t, Some(format!("{why}; falls back to {t}"))),
        Some(t) => (GgmlType::F16, Some(format!("{why}, nor of {} ({t}); falls back to F16", t.block_size()))),
        None => (
            GgmlType::F16,
            Some(format!("{why}; llama-quantize has no fallback for {target} and refuses; mm writes F16")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType::*;

    const DENSE_FIXTURE: ModelFacts = ModelFacts { n_layer: 2, n_expert: 0, tied_embeddings: true };

    /// Names and dims of a dense MiniMind / llama GGUF, in converter order.
    fn dense_tensors(h: u64, ff: u64, kv: u64, vocab: u64, n_layer: usize, tied: bool) -> Vec<(String, Vec<u64>)> {
        let mut v = vec![("token_embd.weight".to_string(), vec![h, vocab])];
        for i in 0..n_layer {
            for (n, ne) in [
                ("attn_norm", vec![h]),
                ("attn_q", vec![h, h]),
                ("attn_k", vec![h, kv]),
                ("attn_v", vec![h, kv]),
                ("attn_output", vec![h, h]),
                ("ffn_norm", vec![h]),
                ("ffn_gate", vec![h, ff]),
                ("ffn_up", vec![h, ff]),
                ("ffn_down", vec![ff, h]),
            ] {
                v.push((format!("blk.{i}.{n}.weight"), ne));
            }
        }
        v.push(("output_norm.weight".to_string(), vec![h]));
        if !tied {
            v.push(("output.weight".to_string(), vec![h, vocab]));
        }
        v
    }

    /// The part of a tensor name after `blk.N.` (or the whole name).
    fn kind(name: &str) -> &str {
        match layer_of(name) {
            Some(i) => &name[5 + i.to_string().len()..],
            None => name,
        }
    }

    #[test]
    fn use_more_bits_small_n() {
        let set = |n: i64| (0..n).filter(|&i| use_more_bits(i, n)).collect::<Vec<_>>();
        assert_eq!(set(2), vec![1]);
        assert_eq!(set(8), vec![0, 3, 6, 7]);
        assert_eq!(set(16), vec![0, 1, 4, 7, 10, 13, 14, 15]);
    }

    #[test]
    fn scheme_names_and_file_types() {
        for q in QuantScheme::ALL {
            assert_eq!(QuantScheme::parse(q.name()), Some(q));
            assert_eq!(QuantScheme::parse(&q.name().to_uppercase()), Some(q));
        }
        assert_eq!(QuantScheme::parse("Q4_K_M"), Some(QuantScheme::Q4_K_M));
        assert_eq!(QuantScheme::parse("q4-k-m"), Some(QuantScheme::Q4_K_M));
        assert_eq!(QuantScheme::parse("q4_k"), None);
        let ft: Vec<u32> = QuantScheme::ALL.iter().map(|q| q.file_type()).collect();
        assert_eq!(ft, vec![0, 1, 32, 7, 2, 3, 8, 9, 14, 15, 16, 17, 18]);
        let quantized: Vec<bool> = QuantScheme::ALL.iter().map(|q| q.is_quantized()).collect();
        assert_eq!(quantized[..3], [false; 3]);
        assert!(quantized[3..].iter().all(|&b| b));
    }

    /// README of shared/fixtures/llamacpp: the 2-layer dense fixture (H 256, FF 704, KV dim 128).
    fn fixture_expected(scheme: QuantScheme, name: &str) -> GgmlType {
        let layer = layer_of(name);
        match (scheme, kind(name)) {
            (_, "attn_norm.weight" | "ffn_norm.weight" | "output_norm.weight") => F32,
            (QuantScheme::F16, _) => F16,
            (QuantScheme::Q8_0, _) => Q8_0,
            (QuantScheme::Q6_K, "ffn_down.weight") => Q8_0,
            (QuantScheme::Q6_K, _) => Q6_K,
            (_, "token_embd.weight") => Q6_K,
            (QuantScheme::Q4_K_M, "attn_v.weight") => [Q4_K, Q6_K][layer.unwrap() as usize],
            (QuantScheme::Q4_K_M, "ffn_down.weight") => [Q5_0, Q8_0][layer.unwrap() as usize],
            (QuantScheme::Q4_K_M, _) => Q4_K,
            (QuantScheme::Q5_K_M, "attn_v.weight") => [Q5_K, Q6_K][layer.unwrap() as usize],
            (QuantScheme::Q5_K_M, "ffn_down.weight") => [Q5_1, Q8_0][layer.unwrap() as usize],
            (QuantScheme::Q5_K_M, _) => Q5_K,
            _ => unreachable!(),
        }
    }

    #[test]
    fn dense_fixture_tables() {
        let tensors = dense_tensors(256, 704, 128, 6400, 2, true);
        assert_eq!(tensors.len(), 20);
        for scheme in [QuantScheme::F16, QuantScheme::Q4_K_M, QuantScheme::Q5_K_M, QuantScheme::Q6_K, QuantScheme::Q8_0] {
            for (name, ne) in &tensors {
                assert_eq!(
                    tensor_type(scheme, name, ne, &DENSE_FIXTURE),
                    fixture_expected(scheme, name),
                    "{} {name}",
                    scheme.name()
                );
            }
        }
        // Fallbacks: ffn_down (ne0 = 704) in the K schemes; nothing else.
        for scheme in [QuantScheme::Q4_K_M, QuantScheme::Q5_K_M, QuantScheme::Q6_K] {
            for (name, ne) in &tensors {
                let r = fallback_reason(scheme, name, ne, &DENSE_FIXTURE);
                assert_eq!(r.is_some(), kind(name) == "ffn_down.weight", "{} {name}: {r:?}", scheme.name());
            }
        }
        for (name, ne) in &tensors {
            assert_eq!(fallback_reason(QuantScheme::Q8_0, name, ne, &DENSE_FIXTURE), None);
            assert_eq!(fallback_reason(QuantScheme::F16, name, ne, &DENSE_FIXTURE), None);
        }
    }

    /// The same check against llama.cpp's real outputs, read from manifest.json.
    #[test]
    fn dense_fixture_manifest() {
        use std::path::{Path, PathBuf};
        let root = std::env::var_os("MM_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
        let path = root.join("fixtures/llamacpp/manifest.json");
        if !path.is_file() {
            assert!(std::env::var_os("MM_REQUIRE_SHARED").is_none(), "MM_REQUIRE_SHARED is set but {} is missing", path.display());
            eprintln!("skipping dense_fixture_manifest: {} not found (set MM_SHARED)", path.display());
            return;
        }
        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let files = manifest["files"].as_object().unwrap();
        let mut checked = 0;
        for (file, info) in files {
            let scheme_name = file.strip_prefix("dense-").and_then(|s| s.strip_suffix(".gguf")).unwrap();
            let scheme = QuantScheme::parse(scheme_name).unwrap();
            let file_type = info["kv"].as_array().unwrap().iter().find(|kv| kv["key"] == "general.file_type").unwrap();
            assert_eq!(file_type["value"].as_u64(), Some(scheme.file_type() as u64), "{file}");
            let tensors = info["tensors"].as_array().unwrap();
            let tied = !tensors.iter().any(|t| t["name"] == "output.weight");
            let facts = ModelFacts { n_layer: 2, n_expert: 0, tied_embeddings: tied };
            for t in tensors {
                let name = t["name"].as_str().unwrap();
                let ne: Vec<u64> = t["ne"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
                let want = GgmlType::from_id(t["type_id"].as_u64().unwrap() as u32).unwrap();
                assert_eq!(tensor_type(scheme, name, &ne, &facts), want, "{file} {name}");
                checked += 1;
            }
        }
        assert_eq!(checked, 100);
    }

    /// docs/gguf.md §4: MiniMind2-Small (512/1408/8) and MiniMind2 (768/2048/16) at Q4_K_M.
    #[test]
    fn minimind2_dense_q4_k_m() {
        for (h, ff, n_layer, bumped) in [(512u64, 1408u64, 8usize, vec![0, 3, 6, 7]), (768, 2048, 16, vec![0, 1, 4, 7, 10, 13, 14, 15])] {
            let facts = ModelFacts { n_layer, n_expert: 0, tied_embeddings: true };
            let ff_fallback = ff % 256 != 0;
            for (name, ne) in dense_tensors(h, ff, h / 4, 6400, n_layer, true) {
                let more = layer_of(&name).is_some_and(|i| bumped.contains(&(i as usize)));
                let want = match kind(&name) {
                    "attn_norm.weight" | "ffn_norm.weight" | "output_norm.weight" => F32,
                    "token_embd.weight" => Q6_K,
                    "attn_v.weight" if more => Q6_K,
                    "ffn_down.weight" => match (more, ff_fallback) {
                        (true, true) => Q8_0,
                        (false, true) => Q5_0,
                        (true, false) => Q6_K,
                        (false, false) => Q4_K,
                    },
                    _ => Q4_K,
                };
                let got = tensor_type(QuantScheme::Q4_K_M, &name, &ne, &facts);
                assert_eq!(got, want, "H {h} {name}");
                let reason = fallback_reason(QuantScheme::Q4_K_M, &name, &ne, &facts);
                assert_eq!(reason.is_some(), ff_fallback && kind(&name) == "ffn_down.weight", "H {h} {name}");
            }
        }
    }

    fn moe_tensors(h: u64, ff: u64, kv: u64, vocab: u64, n_layer: usize, n_expert: u64) -> Vec<(String, Vec<u64>)> {
        let mut v = vec![("token_embd.weight".to_string(), vec![h, vocab])];
        for i in 0..n_layer {
            for (n, ne) in [
                ("attn_norm", vec![h]),
                ("attn_q", vec![h, h]),
                ("attn_k", vec![h, kv]),
                ("attn_v", vec![h, kv]),
                ("attn_output", vec![h, h]),
                ("ffn_norm", vec![h]),
                ("ffn_gate_inp", vec![h, n_expert]),
                ("ffn_gate_exps", vec![h, ff, n_expert]),
                ("ffn_up_exps", vec![h, ff, n_expert]),
                ("ffn_down_exps", vec![ff, h, n_expert]),
                ("ffn_gate_shexp", vec![h, ff]),
                ("ffn_up_shexp", vec![h, ff]),
                ("ffn_down_shexp", vec![ff, h]),
            ] {
                v.push((format!("blk.{i}.{n}.weight"), ne));
            }
        }
        v.push(("output_norm.weight".to_string(), vec![h]));
        v
    }

    /// docs/gguf.md §4: MiniMind2-MoE (H 640, FF 1728, 8 layers, 4 experts) at Q4_K_M has no K-quant.
    #[test]
    fn minimind2_moe_q4_k_m() {
        let facts = ModelFacts { n_layer: 8, n_expert: 4, tied_embeddings: true };
        for (name, ne) in moe_tensors(640, 1728, 128, 6400, 8, 4) {
            let more = layer_of(&name).is_some_and(|i| [0, 3, 6, 7].contains(&i));
            let want = match kind(&name) {
                "attn_norm.weight" | "ffn_norm.weight" | "output_norm.weight" | "ffn_gate_inp.weight" => F32,
                "token_embd.weight" => Q8_0,
                "attn_v.weight" | "ffn_down_exps.weight" | "ffn_down_shexp.weight" if more => Q8_0,
                _ => Q5_0,
            };
            assert_eq!(tensor_type(QuantScheme::Q4_K_M, &name, &ne, &facts), want, "{name}");
            let reason = fallback_reason(QuantScheme::Q4_K_M, &name, &ne, &facts);
            assert_eq!(reason.is_some(), want != F32, "{name}: {reason:?}");
        }
        // Router, norms: F32 in every scheme; 3-D experts take the scheme's default type.
        for scheme in QuantScheme::ALL {
            assert_eq!(tensor_type(scheme, "blk.3.ffn_gate_inp.weight", &[640, 4], &facts), F32);
            assert_eq!(tensor_type(scheme, "blk.3.attn_norm.weight", &[640], &facts), F32);
            assert_eq!(tensor_type(scheme, "output_norm.weight", &[640], &facts), F32);
        }
        let moe768 = ModelFacts { n_layer: 16, n_expert: 4, tied_embeddings: true };
        let exps = |s, n: &str, ne: &[u64]| tensor_type(s, n, ne, &moe768);
        assert_eq!(exps(QuantScheme::Q4_K_M, "blk.1.ffn_down_exps.weight", &[2048, 768, 4]), Q6_K);
        assert_eq!(exps(QuantScheme::Q4_K_M, "blk.2.ffn_down_exps.weight", &[2048, 768, 4]), Q4_K);
        assert_eq!(exps(QuantScheme::Q4_K_M, "blk.13.ffn_down_shexp.weight", &[2048, 768]), Q6_K);
        assert_eq!(exps(QuantScheme::Q4_K_M, "blk.1.ffn_up_exps.weight", &[768, 2048, 4]), Q4_K);
        assert_eq!(exps(QuantScheme::Q5_K_S, "blk.1.ffn_gate_exps.weight", &[768, 2048, 4]), Q5_K);
        assert_eq!(exps(QuantScheme::Q8_0, "blk.1.ffn_gate_exps.weight", &[768, 2048, 4]), Q8_0);
        assert_eq!(exps(QuantScheme::F16, "blk.1.ffn_gate_exps.weight", &[768, 2048, 4]), F16);
        assert_eq!(exps(QuantScheme::BF16, "blk.1.ffn_gate_exps.weight", &[768, 2048, 4]), BF16);
    }

    #[test]
    fn eight_expert_specials() {
        let f = ModelFacts { n_layer: 16, n_expert: 8, tied_embeddings: true };
        let t = |s, n: &str| tensor_type(s, n, &[768, 768], &f);
        for s in [QuantScheme::Q4_K_M, QuantScheme::Q4_0, QuantScheme::Q6_K, QuantScheme::Q5_K_S] {
            assert_eq!(t(s, "blk.2.attn_v.weight"), Q8_0);
            assert_eq!(t(s, "blk.2.attn_k.weight"), Q8_0);
        }
        assert_eq!(t(QuantScheme::Q4_K_M, "blk.2.attn_output.weight"), Q5_K);
        assert_eq!(t(QuantScheme::Q4_K_S, "blk.2.attn_output.weight"), Q5_K);
        assert_eq!(t(QuantScheme::Q5_K_M, "blk.2.attn_output.weight"), Q5_K);
        assert_eq!(t(QuantScheme::Q4_0, "blk.2.attn_output.weight"), Q4_0);
        assert_eq!(t(QuantScheme::Q4_K_M, "blk.2.attn_q.weight"), Q4_K);
        // 4 experts: none of it.
        let four = ModelFacts { n_expert: 4, ..f };
        assert_eq!(tensor_type(QuantScheme::Q4_K_M, "blk.2.attn_k.weight", &[768, 192], &four), Q4_K);
        assert_eq!(tensor_type(QuantScheme::Q4_K_M, "blk.2.attn_output.weight", &[768, 768], &four), Q4_K);
    }

    #[test]
    fn k_s_schemes() {
        let f = ModelFacts { n_layer: 16, n_expert: 0, tied_embeddings: true };
        let t = |s, n: &str, ne: &[u64]| tensor_type(s, n, ne, &f);
        // Q4_K_S: attn_v Q5_K in the first 4 attn_v, ffn_down Q5_K in the first n/8 layers.
        for i in 0..16 {
            let v = t(QuantScheme::Q4_K_S, &format!("blk.{i}.attn_v.weight"), &[768, 192]);
            assert_eq!(v, if i < 4 { Q5_K } else { Q4_K }, "attn_v {i}");
            let d = t(QuantScheme::Q4_K_S, &format!("blk.{i}.ffn_down.weight"), &[2048, 768]);
            assert_eq!(d, if i < 2 { Q5_K } else { Q4_K }, "ffn_down {i}");
            // Q5_K_S: plain Q5_K everywhere but the output.
            assert_eq!(t(QuantScheme::Q5_K_S, &format!("blk.{i}.attn_v.weight"), &[768, 192]), Q5_K);
            assert_eq!(t(QuantScheme::Q5_K_S, &format!("blk.{i}.ffn_down.weight"), &[2048, 768]), Q5_K);
        }
        assert_eq!(t(QuantScheme::Q4_K_S, "token_embd.weight", &[768, 6400]), Q6_K);
        assert_eq!(t(QuantScheme::Q5_K_S, "token_embd.weight", &[768, 6400]), Q6_K);
        // 8 layers, FF 1408: Q4_K_S ffn_down layer 0 is Q5_K → fallback Q5_1.
        let f8 = ModelFacts { n_layer: 8, ..f };
        assert_eq!(tensor_type(QuantScheme::Q4_K_S, "blk.0.ffn_down.weight", &[1408, 512], &f8), Q5_1);
        assert_eq!(tensor_type(QuantScheme::Q4_K_S, "blk.1.ffn_down.weight", &[1408, 512], &f8), Q5_0);
    }

    #[test]
    fn legacy_schemes() {
        let f = ModelFacts { n_layer: 8, n_expert: 0, tied_embeddings: true };
        for (s, d) in [(QuantScheme::Q4_0, Q4_0), (QuantScheme::Q4_1, Q4_1), (QuantScheme::Q5_0, Q5_0), (QuantScheme::Q5_1, Q5_1)] {
            for (name, ne) in dense_tensors(512, 1408, 128, 6400, 8, true) {
                let want = match kind(&name) {
                    "attn_norm.weight" | "ffn_norm.weight" | "output_norm.weight" => F32,
                    "token_embd.weight" => Q6_K, // tied: the output rule
                    _ => d,
                };
                assert_eq!(tensor_type(s, &name, &ne, &f), want, "{} {name}", s.name());
                assert_eq!(fallback_reason(s, &name, &ne, &f), None);
            }
            // H 640: Q6_K for the tied embedding does not fit 256 → Q8_0.
            assert_eq!(tensor_type(s, "token_embd.weight", &[640, 6400], &f), Q8_0);
            assert!(fallback_reason(s, "token_embd.weight", &[640, 6400], &f).is_some());
            // Not a multiple of 32: llama-quantize refuses; mm writes F16 and says why.
            assert_eq!(tensor_type(s, "blk.0.ffn_down.weight", &[700, 512], &f), F16);
            assert!(fallback_reason(s, "blk.0.ffn_down.weight", &[700, 512], &f).unwrap().contains("refuses"));
        }
    }

    #[test]
    fn tied_and_untied_embeddings() {
        let tied = ModelFacts { n_layer: 8, n_expert: 0, tied_embeddings: true };
        let untied = ModelFacts { tied_embeddings: false, ..tied };
        let q = QuantScheme::Q4_K_M;
        assert_eq!(tensor_type(q, "token_embd.weight", &[512, 6400], &tied), Q6_K);
        assert_eq!(tensor_type(q, "token_embd.weight", &[512, 6400], &untied), Q4_K);
        assert_eq!(tensor_type(q, "output.weight", &[512, 6400], &untied), Q6_K);
        // H 640: output rule Q8_0; the untied embedding takes the Q4_K fallback Q5_0.
        assert_eq!(tensor_type(q, "token_embd.weight", &[640, 6400], &tied), Q8_0);
        assert_eq!(tensor_type(q, "output.weight", &[640, 6400], &untied), Q8_0);
        assert_eq!(tensor_type(q, "token_embd.weight", &[640, 6400], &untied), Q5_0);
        assert!(fallback_reason(q, "output.weight", &[640, 6400], &untied).is_some());
        assert_eq!(fallback_reason(q, "output.weight", &[512, 6400], &untied), None);
        // Q8_0 and Q6_K schemes.
        assert_eq!(tensor_type(QuantScheme::Q8_0, "output.weight", &[640, 6400], &untied), Q8_0);
        assert_eq!(tensor_type(QuantScheme::Q6_K, "output.weight", &[512, 6400], &untied), Q6_K);
        assert_eq!(tensor_type(QuantScheme::Q6_K, "token_embd.weight", &[640, 6400], &tied), Q8_0);
        assert_eq!(tensor_type(QuantScheme::Q6_K, "token_embd.weight", &[640, 6400], &untied), Q8_0);
        // Converter schemes: the embedding and output take the out type.
        for (s, t) in [(QuantScheme::F32, F32), (QuantScheme::F16, F16), (QuantScheme::BF16, BF16)] {
            assert_eq!(tensor_type(s, "token_embd.weight", &[640, 6400], &tied), t);
            assert_eq!(tensor_type(s, "output.weight", &[640, 6400], &untied), t);
            assert_eq!(tensor_type(s, "blk.0.ffn_down.weight", &[1728, 640], &tied), t);
            assert_eq!(fallback_reason(s, "token_embd.weight", &[640, 6400], &tied), None);
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(layer_of("blk.12.attn_v.weight"), Some(12));
        assert_eq!(layer_of("blk.x.attn_v.weight"), None);
        assert_eq!(layer_of("blk.3"), None);
        assert_eq!(layer_of("token_embd.weight"), None);
        assert_eq!(n_dims(&[256, 1]), 1);
        assert_eq!(n_dims(&[256, 4, 1]), 2);
        assert_eq!(n_dims(&[]), 1);
        assert_eq!(category("blk.0.ffn_up_shexp.weight"), Category::FfnUp);
        assert_eq!(category("blk.0.ffn_gate_exps.weight"), Category::FfnGate);
        assert_eq!(category("blk.0.ffn_down_exps.weight"), Category::FfnDown);
        assert!(!allows_quantization("blk.0.ffn_gate_inp.weight", &[640, 4]));
        assert!(!allows_quantization("blk.0.attn_norm.weight", &[640, 640]));
        assert!(allows_quantization("blk.0.attn_q.weight", &[640, 640]));
    }
}
